# Two commands for a new user: `make demo` and `make test` (both set up .venv first).
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test bench clean

$(BIN)/sctd3d: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24"
	$(BIN)/pip install -q -e ".[dev]"
	# PlayCanvas splat-transform (npm) for `sctd3d export --formats spz`
	bash scripts/install_splat_tools.sh
	touch $(BIN)/sctd3d

setup: $(BIN)/sctd3d

demo: setup
	$(BIN)/sctd3d demo --out runs/demo

test: setup
	bash scripts/install_test_deps.sh
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) runs
