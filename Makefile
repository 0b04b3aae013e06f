# The two set-up commands of the README. Each creates .venv and installs the project on first use.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed-dev

.PHONY: demo test lint bench crd

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

demo: $(STAMP)  ## the main job: local mode on the embedded PostgreSQL, with a simulated training run
	$(VENV)/bin/trainscope local -f examples/demo.yaml --demo

test: $(STAMP)  ## lint, then the whole suite (real PostgreSQL, real tensorboard, kopf on KMock)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(VENV)/bin/python bench/bench_ingest.py
	$(VENV)/bin/python bench/bench_eventfiles.py

crd: $(STAMP)  ## regenerate crds/ and the chart's copy from the code's schema
	$(VENV)/bin/python -m trainscope.operator.crd --write
