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
	# the report's offline 3D viewer (Spark + three.js from npm, pinned in tools/report-viewer/package-lock.json)
	bash tools/report-viewer/setup.sh

demo: setup
	$(BIN)/sctd3d demo --out runs/demo

test: setup
	bash scripts/install_test_deps.sh
	bash scripts/install_splat_tools.sh  # npm pins of the export tests (idempotent)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=30 tests

clean:
	rm -rf $(VENV) runs

# Build gsplat 1.5.3's CUDA extension here, no GPU needed, with the CUDA toolchain the GPU nodes install
# (PyPI pins in scripts/cuda_toolchain.py, into build/gsplat/toolchain, not the venv); for sm_90
# (H100/H200) by default. Long: ~1-2 h on 2 busy cores (benchmarks/RESULTS.md). Report: build/gsplat/gsplat-build.json
GSPLAT_ARCH ?= 9.0
GSPLAT_JOBS ?= 2
.PHONY: gsplat-build
gsplat-build: setup
	$(BIN)/python scripts/build_gsplat.py --dir build/gsplat --arch $(GSPLAT_ARCH) --jobs $(GSPLAT_JOBS)
