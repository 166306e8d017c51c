# mpicloud: `make demo` and `make test` are all a newcomer needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench render sysdeps clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.base: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

sysdeps:
	bash scripts/install-sysdeps.sh

demo: sysdeps $(VENV)/.base
	bash scripts/demo.sh

lint: $(VENV)/.dev
	$(BIN)/ruff check mpicloud provision infra tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/lint-imports

# --maxfail: a cascade (every session cluster test timing out) ends with its tracebacks printed, well inside
# CI's time limit, instead of being cut off with nothing said
test: sysdeps $(VENV)/.dev lint
	$(BIN)/python -m pytest -q -ra --maxfail=10 tests

bench: sysdeps $(VENV)/.dev
	$(BIN)/python -m benchmarks.run_all

render: $(VENV)/.dev
	$(BIN)/python -m mpicloud.render.generated

clean:
	rm -rf $(VENV) .demo-home demo-output .pytest_cache .mypy_cache .ruff_cache
