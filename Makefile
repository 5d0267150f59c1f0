# Fresh machine: `make demo` runs the main job, `make test` runs the test suite.
# Each creates .venv and installs the project with pinned versions (constraints.txt) first.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip
DEMO   := out/demo
# Debian packages the pipeline needs at run time: tesseract (burned-in text check at ingestion),
# postgresql (the tests' and `cxrmesh up --database postgres`'s throwaway cluster: cxrmesh.local.postgres)
DEBS   := tesseract-ocr postgresql prometheus prometheus-alertmanager dcmtk orthanc
SUDO   := $(if $(filter 0,$(shell id -u)),,sudo)
# buf (proto lint and breaking-change check), pinned by tools/buf/package-lock.json
BUF    := tools/buf/node_modules/.bin/buf

.PHONY: install debs demo test test-faults bench bench-quick lint format protos monitoring clean fuzz

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e ".[dev,train,serve,triton-local,mesh-local]"
	touch $(STAMP)

install: $(STAMP) debs

$(BUF): tools/buf/package.json tools/buf/package-lock.json
	@command -v npm >/dev/null || { echo "need npm (Node.js) to install buf"; exit 1; }
	npm ci --prefix tools/buf --no-audit --no-fund --silent
	touch $(BUF)

# installs only what is missing (a dpkg query per package when nothing is)
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

demo: $(STAMP) debs
	rm -rf $(DEMO)
	$(BIN)/cxrmesh demo --out $(DEMO)
	@echo "demo: report $(DEMO)/report/index.html, corpus $(DEMO)/corpus, mesh logs $(DEMO)/mesh/logs"

test: $(STAMP) debs $(BUF)
	$(BIN)/ruff check src tests export services protos scripts benchmarks
	$(BIN)/ruff format --check src tests export services protos scripts benchmarks
	$(BIN)/pytest -q

# the fault suite (docs/reliability.md): a loaded mesh whose every process is SIGKILLed once, seeded
# (CXRMESH_FAULT_SEED replays a run); writes out/faults and the table in docs/reliability.md
test-faults: $(STAMP) debs
	$(BIN)/pytest -q -m faults tests/faults

# every benchmark with its baseline in the same run (docs/benchmarks.md); about 30 minutes on 2 cores.
# One section: `$(BIN)/python -m benchmarks.suite --only search`; the page again: `... --render-only`
bench: $(STAMP) debs
	$(BIN)/python -m benchmarks.suite

# the same at small sizes (CI, about 5 minutes): fails on a crash, never on a number; writes out/bench/
bench-quick: $(STAMP) debs
	$(BIN)/python -m benchmarks.suite --quick

lint: $(STAMP)
	$(BIN)/ruff check src tests export services protos scripts benchmarks
	$(BIN)/ruff format --check src tests export services protos scripts benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests export services protos scripts benchmarks
	$(BIN)/ruff check --fix src tests export services protos scripts benchmarks

# 100,000 inputs through DICOM read -> validate -> decode (atheris if installed); crashes in out/fuzz/crashes
fuzz: $(STAMP)
	$(BIN)/python tests/fuzz/fuzz_dicom.py --runs 100000 --out out/fuzz

protos: $(STAMP)
	$(BIN)/python protos/generate.py

# regenerate the PrometheusRule and the Grafana dashboards (JSON + ConfigMap) from their sources
# (k8s/monitoring/*-rules.yaml, scripts/dashboards.py); drift tests fail until the output is committed
monitoring: $(STAMP)
	$(BIN)/python scripts/monitoring_rules.py
	$(BIN)/python scripts/dashboards.py

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache tools/buf/node_modules
