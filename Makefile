# Fresh machine: `make demo` runs the main job, `make test` runs the test suite.
# Each creates .venv and installs the project with pinned versions (constraints.txt) first.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip
DEMO   := out/demo

.PHONY: install demo test lint format protos clean

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e ".[dev,train,serve,triton-local,mesh-local]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/cxrmesh demo --out $(DEMO)
	@echo "demo: report $(DEMO)/report/index.html, corpus $(DEMO)/corpus, mesh logs $(DEMO)/mesh/logs"

test: $(STAMP)
	$(BIN)/ruff check src tests export services protos scripts benchmarks
	$(BIN)/ruff format --check src tests export services protos scripts benchmarks
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests export services protos scripts benchmarks
	$(BIN)/ruff format --check src tests export services protos scripts benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests export services protos scripts benchmarks
	$(BIN)/ruff check --fix src tests export services protos scripts benchmarks

protos: $(STAMP)
	$(BIN)/python protos/generate.py

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
