#!/usr/bin/env bash
# One prepared run for the GPU machine (about 6 minutes with the build): build pyneuro._C for
# sm_90 only, run the cuda/triton tests, run the GPU benchmarks, write everything under $OUT.
#   OUT=/tmp/gpu-out bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
status=0
stage() { echo "== $1 ($(date +%T))" | tee -a "$OUT/stages.txt"; }

stage "machine"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
$PY -c "import torch, sys; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), sys.version)" \
  | tee "$OUT/torch.txt"

stage "build (sm_90)"
start=$SECONDS
# No network there: build with the tools installed, do not resolve dependencies.
$PY -m pip install --no-build-isolation --no-deps -e . \
  --config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES=90 > "$OUT/build.log" 2>&1 || { status=1; tail -40 "$OUT/build.log"; }
grep "pyneuro:" "$OUT/build.log" || true
echo "build took $((SECONDS - start)) s" | tee -a "$OUT/stages.txt"
$PY -m pyneuro info --json > "$OUT/info.json" 2>&1 || status=1

stage "tests (cuda, triton)"
timeout 180 $PY -m pytest -q -x -m "cuda or triton" tests/ops -p no:cacheprovider \
  --junitxml="$OUT/tests.xml" > "$OUT/tests.txt" 2>&1 || status=1
tail -5 "$OUT/tests.txt"

stage "benchmarks"
timeout 150 $PY -m benchmarks --device cuda --ops selective_scan --json "$OUT/bench_selective_scan.json" \
  > "$OUT/bench_selective_scan.txt" 2>&1 || status=1
cat "$OUT/bench_selective_scan.txt"
timeout 90 $PY -m benchmarks --device cuda --ops recurrent,attention --json "$OUT/bench_other.json" \
  > "$OUT/bench_other.txt" 2>&1 || status=1
tail -40 "$OUT/bench_other.txt"
stage "done (status $status)"
exit $status
