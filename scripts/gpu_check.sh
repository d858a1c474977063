#!/usr/bin/env bash
# The GPU machine's check (`make gpu-check`; H100/H200, no network), at most 9 minutes:
#   device      a CUDA device is visible to torch (else: "no CUDA device", exit 1 at once)
#   build       pyneuro._C from source for this device's architecture only
#   build_info  pyneuro._C.build_info() says cuda and lists the device's architecture; the ops
#               have CUDA kernels registered
#   tests       every test marked cuda or triton, and not slow, under tests/ and
#               benchmarks/test_timing.py; fails on any skip (a skip there means a GPU path did not
#               run), failure, error or no test at all. The GPU training tests need MNIST offline: a
#               carried build/gpu-check-mnist.tgz (`make gpu-check-data` here) is unpacked first
#   bench, bench_attention, bench_rnn
#               python -m benchmarks --device cuda --ops selective_scan | attention | lstm,gru,rnn
#               (issues 6, 7 and 8's GPU rows), one JSON each; fails if a contender errors, no kernel
#               of ours (cuda or triton) was timed, or a time is not from CUDA events
#   tests_slow  the slow ones of those tests (marked slow: torch.compile, long sequences, ...), after
#               the benchmarks: the first run should bring back figures even if these need a rerun
#   memcheck, racecheck, synccheck
#               compute-sanitizer on small shapes of every CUDA kernel (scripts/gpu_check_sanitize.py)
# Every stage runs under its own `timeout`, within a total budget. After every stage $OUT holds
# summary.json (stage -> status, seconds, counts) and logs.tgz (each stage's log, the junit xml,
# build_info.json, nvidia-smi.txt: written to $LOGS, packed), and bench_*.json once benchmarked (three):
# five files, where the device tool returns at most 8.
#   OUT=/tmp/gpu-out bash scripts/gpu_check.sh
#   PYTHON=... (default .venv/bin/python if present, else python3)  GPU_CHECK_BUDGET_S=540
#   GPU_CHECK_TEST_PATHS="tests benchmarks/test_timing.py"  GPU_CHECK_LOGS=build/gpu-check-logs
#   GPU_CHECK_STAGES="tests bench" (a rerun of some stages on a warm machine; device always runs,
#   and without build the installed build is checked)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT="${OUT:-build/gpu-check}"
PY="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}"
BUDGET="${GPU_CHECK_BUDGET_S:-540}"
LOGS="${GPU_CHECK_LOGS:-build/gpu-check-logs}"
read -r -a TEST_PATHS <<< "${GPU_CHECK_TEST_PATHS:-tests benchmarks/test_timing.py}"
STAGES=(device build build_info tests bench bench_attention bench_rnn tests_slow memcheck racecheck synccheck)
read -r -a SELECTED <<< "${GPU_CHECK_STAGES:-${STAGES[*]}}"
for s in "${SELECTED[@]}"; do
  [[ " ${STAGES[*]} " == *" $s "* ]] || { echo "gpu_check: unknown stage '$s' in GPU_CHECK_STAGES (${STAGES[*]})" >&2; exit 2; }
done
[[ " ${SELECTED[*]} " == *" device "* ]] || SELECTED=(device "${SELECTED[@]}")  # it finds the architecture
selected() { [[ " ${SELECTED[*]} " == *" $1 "* ]]; }
# Test modules that may be skipped at import on the GPU machine, as "path prefix|part of the skip
# reason|why that hides no GPU test". Any other skip fails the tests stage.
ALLOWED_IMPORT_SKIPS=(
  "tests/fuzz/|needs hypothesis|hypothesis is not installed there; the fuzz suite's GPU cases carry no cuda/triton marker (tests/fuzz/conftest.py), so -m would deselect them anyway"
)
mkdir -p "$OUT"
# A previous run's junit xml or benchmark json must not pass for this run's.
rm -rf "$LOGS"
rm -f "$OUT/summary.json" "$OUT/logs.tgz" "$OUT"/bench_*.json "$OUT"/bench_*.json.tmp
mkdir -p "$LOGS"
SUMMARY="$OUT/summary.json"
REPORT=(python3 scripts/gpu_check_report.py)
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1  # no network there: fail at once, never hang
# A stage cut off by its timeout keeps what it printed (a block-buffered stdout would be lost).
export PYTHONUNBUFFERED=1
failed=0
T0=$SECONDS

"${REPORT[@]}" init "$SUMMARY" "${SELECTED[@]}" || { echo "gpu_check: cannot write $SUMMARY" >&2; exit 2; }

record() {  # stage, status, seconds, [--counts FILE] [key=value...]; then the logs, packed
  "${REPORT[@]}" stage "$SUMMARY" "$@"
  [[ "$2" == ok ]] || failed=1
  tar czf "$OUT/logs.tgz.tmp" -C "$LOGS" . && mv "$OUT/logs.tgz.tmp" "$OUT/logs.tgz"
}

# timed STAGE SECONDS CMD...: runs CMD under `timeout`, within what is left of the budget; output in
# $LOGS/STAGE.log (its tail is printed on failure). Sets $status ("ok", "timeout after N s",
# "failed (exit N)", "not run: time budget spent") and $took.
timed() {
  local stage=$1 limit=$2 left rc start
  shift 2
  left=$(( BUDGET - (SECONDS - T0) ))
  (( limit > left )) && limit=$left
  took=0
  if (( limit < 20 )); then
    status="not run: time budget spent"
    echo "== [$stage] $status"
    return
  fi
  echo "== [$stage] (timeout ${limit} s) $(echo "$*" | tr '\n' ' ' | cut -c1-200)"
  start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$LOGS/$stage.log" 2>&1
  rc=$?
  took=$(( SECONDS - start ))
  case $rc in
    0) status=ok ;;
    124|137) status="timeout after ${limit} s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  echo "   $status in ${took} s (log: $LOGS/$stage.log)"
  if [[ $status != ok ]]; then tail -n 30 "$LOGS/$stage.log" | sed 's/^/   | /'; fi
}

finish() {
  local rc
  echo "== summary ($(( SECONDS - T0 )) s)"
  "${REPORT[@]}" show "$SUMMARY"
  rc=$?
  exit $(( failed || rc ))
}

# ---- device -----------------------------------------------------------------------------------
timed device 60 "$PY" -c '
import sys, torch
if not torch.cuda.is_available():
    sys.exit("no CUDA device: torch %s (CUDA %s) sees none" % (torch.__version__, torch.version.cuda))
p = torch.cuda.get_device_properties(0)
print(torch.__version__, torch.version.cuda, p.name, "sm_%d%d" % (p.major, p.minor), sys.version.split()[0])
print("arch=%d%d" % (p.major, p.minor))'
if [[ $status != ok ]]; then
  echo "gpu_check: no CUDA device (see $LOGS/device.log): nothing else can run" >&2
  record device "failed: no CUDA device" "$took"
  finish
fi
ARCH=$(sed -n 's/^arch=//p' "$LOGS/device.log")
head -1 "$LOGS/device.log" | sed 's/^/   /'
nvidia-smi > "$LOGS/nvidia-smi.txt" 2>&1 || true
record device ok "$took" "arch=sm_$ARCH"

# ---- build ------------------------------------------------------------------------------------
if selected build; then
  # Every core (ninja's default; make's is one job). CMakeLists.txt hands torch's config the same
  # architecture (TORCH_CUDA_ARCH_LIST), so it neither probes the GPU nor builds for a list of its own.
  export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
  # CMake's check_language(CUDA) looks on PATH (and CUDACXX), not in /usr/local/cuda/bin: without
  # this a machine whose nvcc is only there would build without CUDA, found out only at build_info.
  if [[ -z "${CUDACXX:-}" ]]; then
    CUDACXX="$(command -v nvcc || true)"
    [[ -z "$CUDACXX" && -x /usr/local/cuda/bin/nvcc ]] && CUDACXX=/usr/local/cuda/bin/nvcc
    [[ -n "$CUDACXX" ]] && export CUDACXX && echo "   nvcc: $CUDACXX"
  fi
  timed build 300 "$PY" -m pip install -v --no-build-isolation --no-deps -e . \
    "--config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES=$ARCH"
  grep "pyneuro:" "$LOGS/build.log" 2>/dev/null | sed 's/^/   /'
  record build "$status" "$took" "arch=sm_$ARCH"
fi

# ---- build_info -------------------------------------------------------------------------------
selected build_info && timed build_info 60 "$PY" - "$ARCH" "$LOGS/build_info.json" <<'EOF'
import json, re, sys
import torch
import pyneuro._C as ext
arch, path = sys.argv[1], sys.argv[2]
info = ext.build_info()
json.dump(info, open(path, "w"), indent=1, default=str)
print(info)
# "90", "90-real", "90a" all run on sm_90.
archs = re.findall(r"\d+", str(info.get("cuda_architectures", "")))
problems = []
if info.get("cuda") is not True:
    problems.append(f"build_info()['cuda'] is {info.get('cuda')!r}, not True: the CUDA kernels were not built")
if arch not in archs:
    problems.append(f"this device's architecture {arch} is not in cuda_architectures {archs}")
for op in ("selective_scan_fwd", "selective_scan_bwd"):
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"pyneuro::{op}", "CUDA"):
        problems.append(f"pyneuro::{op} has no CUDA kernel registered")
sys.exit("\n".join(problems) or None)
EOF
selected build_info && record build_info "$status" "$took"

# ---- tests, tests_slow ----------------------------------------------------------------------------
# MNIST for the GPU training tests: no network there, so it comes as a carried archive.
data_dir="${PYNEURO_DATA_DIR:-build/test-cache}"
if [[ -f build/gpu-check-mnist.tgz && ! -f "$data_dir/mnist/source.json" ]] && { selected tests || selected tests_slow; }; then
  mkdir -p "$data_dir" && tar xzf build/gpu-check-mnist.tgz -C "$data_dir" && echo "   MNIST unpacked into $data_dir"
fi
test_stage() {  # stage, seconds, marker expression
  local stage=$1 limit=$2 markers=$3
  selected "$stage" || return 0
  timed "$stage" "$limit" "$PY" -m pytest "${TEST_PATHS[@]}" -m "$markers" --maxfail=20 -v -rs --durations=25 \
    -p no:cacheprovider --continue-on-collection-errors --junitxml="$LOGS/$stage.xml"
  tail -n 3 "$LOGS/$stage.log" 2>/dev/null | sed 's/^/   /'
  if [[ $status != "not run: time budget spent" ]]; then
    # pytest's exit status alone would pass a run whose GPU tests all skipped.
    local allow=() a
    for a in "${ALLOWED_IMPORT_SKIPS[@]}"; do allow+=(--allow-import-skip "$a"); done
    if ! "${REPORT[@]}" junit "$LOGS/$stage.xml" "$LOGS/$stage.counts.json" "${allow[@]}" > "$LOGS/$stage.junit.txt"; then
      [[ $status == ok ]] && status="failed (skips or no tests)"
    fi
    sed 's/^/   /' "$LOGS/$stage.junit.txt"
  fi
  record "$stage" "$status" "$took" --counts "$LOGS/$stage.counts.json"
}
test_stage tests 200 "(cuda or triton) and not slow"

# ---- benchmarks -------------------------------------------------------------------------------
bench_stage() {  # stage, seconds, ops, json name
  local stage=$1 limit=$2 ops=$3 json="$OUT/$4"
  selected "$stage" || return 0
  timed "$stage" "$limit" "$PY" -m benchmarks --device cuda --ops "$ops" --json "$json"
  grep -vE "^\s*$" "$LOGS/$stage.log" 2>/dev/null | tail -n 12 | sed 's/^/   /'
  if [[ $status != "not run: time budget spent" ]]; then
    if ! "${REPORT[@]}" bench "$json" "$LOGS/$stage.counts.json" > "$LOGS/$stage.check.txt"; then
      [[ $status == ok ]] && status="failed (see $stage.check.txt)"
    fi
    sed 's/^/   /' "$LOGS/$stage.check.txt"
  fi
  record "$stage" "$status" "$took" --counts "$LOGS/$stage.counts.json"
}
bench_stage bench 90 selective_scan bench_selective_scan.json
bench_stage bench_attention 120 attention bench_attention.json
bench_stage bench_rnn 120 lstm,gru,rnn bench_rnn.json
test_stage tests_slow 240 "(cuda or triton) and slow"

# ---- compute-sanitizer ------------------------------------------------------------------------
SANITIZER="$(command -v compute-sanitizer || true)"
for d in "$(dirname "$(readlink -f "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")" /usr/local/cuda/bin; do
  [[ -z "$SANITIZER" && -x "$d/compute-sanitizer" ]] && SANITIZER="$d/compute-sanitizer"
done
for tool in memcheck racecheck synccheck; do
  selected "$tool" || continue
  if [[ -z "$SANITIZER" ]]; then
    echo "== [$tool] compute-sanitizer not found (PATH, nvcc's folder, /usr/local/cuda/bin)"
    record "$tool" "failed: compute-sanitizer not found" 0
    continue
  fi
  shapes=tiny limit=90
  [[ $tool == memcheck ]] && shapes=full limit=120
  # Without the caching allocator every tensor is its own allocation, so memcheck sees overruns.
  # Only pyneuro's kernels are instrumented (torch's own are not ours to check, and slow).
  timed "$tool" "$limit" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool "$tool" \
    --error-exitcode 1 --kernel-name kns=pyneuro --print-limit 20 \
    "$PY" scripts/gpu_check_sanitize.py --shapes "$shapes"
  grep -E "^(ok|FAIL) " "$LOGS/$tool.log" 2>/dev/null | sed 's/^/   /'
  cases=$(grep -cE "^ok " "$LOGS/$tool.log" 2>/dev/null)
  record "$tool" "$status" "$took" "cases_ok=${cases:-0}"
done

finish
