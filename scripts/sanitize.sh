#!/usr/bin/env bash
# make sanitize: build pyneuro._C with AddressSanitizer + UndefinedBehaviorSanitizer into
# build/sanitize/ (the normal build in build/cp* is left alone) and run the op tests against it.
# Any sanitizer report aborts the process, so the run fails on the first finding.
#
#   bash scripts/sanitize.sh [extra pytest args]
# Environment: PYTHON (default .venv/bin/python), SANITIZE_BUILD (default build/sanitize).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
BUILD=${SANITIZE_BUILD:-build/sanitize}
SAN_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
# cmake and ninja come with the venv (make setup); fall back to the ones on PATH.
export PATH="$(dirname "$PYTHON"):$PATH"
start=$(date +%s)

grep -q PYNEURO_EXTENSION pyneuro/_backends.py || {
  echo "sanitize: pyneuro/_backends.py does not read PYNEURO_EXTENSION yet, so the sanitized" \
       "library cannot be loaded in place of the installed one" >&2
  exit 2
}

# Only the CPU ISA variants this machine executes: the others could not be tested here, and an
# instrumented build is slow (the avx512 variant is a sixth of it).
isas="avx2;avx512"
if [ -r /proc/cpuinfo ]; then
  flags=" $(grep -m 1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  has() { for f in "$@"; do [[ "$flags" == *" $f "* ]] || return 1; done; }
  isas=""
  has avx avx2 fma bmi1 bmi2 f16c && isas="avx2"
  [ -n "$isas" ] && has avx512f avx512bw avx512cd avx512dq avx512vl && isas="avx2;avx512"
fi
echo "sanitize: CPU variants baseline${isas:+;$isas}"

# -g1: line tables and function names, all a report's stack trace needs; full -g (variables, types)
# made the build 195 s instead of 151 s on 2 cores.
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPYNEURO_CPU_EXTRA_ISAS="$isas" \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG" \
  -DCMAKE_CXX_FLAGS="$SAN_FLAGS" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DCMAKE_MODULE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -Dpybind11_DIR="$("$PYTHON" -m pybind11 --cmakedir)" \
  -DPython_EXECUTABLE="$("$PYTHON" -c 'import sys; print(sys.executable)')" >"$BUILD.configure.log" 2>&1 \
  || { cat "$BUILD.configure.log"; exit 1; }
cmake --build "$BUILD" --target _C -j "$(nproc)"
built=$(date +%s)

lib=$(ls "$PWD/$BUILD"/_C*.so | head -n 1)
log="$PWD/$BUILD/tests.log"
# Python itself is not instrumented, so the ASan runtime must be loaded first, before any library
# that allocates; libubsan is linked into the module and comes in with it. libstdc++ is preloaded
# too: python does not link it, and without it ASan's __cxa_throw interceptor finds no real
# __cxa_throw and aborts at the first C++ exception (torch throws them for Python errors).
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libstdc++.so)${LD_PRELOAD:+:$LD_PRELOAD}"
# detect_leaks=0: CPython and torch keep allocations alive until exit by design, which LeakSanitizer
# would report as leaks. halt/abort_on_error: the first finding kills the process.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:print_stacktrace=1"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1"
export PYNEURO_EXTENSION="$lib"

# Refuse to report a clean run unless the sanitized library is the one that loaded.
"$PYTHON" - "$lib" <<'EOF'
import os, sys
import pyneuro._backends as b
ext, reason = b.extension()
assert ext is not None, reason
loaded = os.path.realpath(ext.__file__)
assert loaded == os.path.realpath(sys.argv[1]), f"loaded {loaded}, not the sanitized {sys.argv[1]}"
print(f"sanitize: pyneuro._C from {loaded}")
EOF

tests=(tests/ops)
[ -d tests/cpu ] && tests+=(tests/cpu)
tests+=(tests/fuzz)
# Not the Triton (interpreted: numpy, no code of ours) or reference (PyTorch only) targets: nothing
# there runs pyneuro's C++. The fuzz suite's floor of calls is then not checked (it counts every
# backend in one process: make test checks it); its C++ cases run here, next to the rest.
# --capture=sys: pytest captures Python's output only, so a report (written to file descriptor 2
# by the runtime) reaches the log even when it aborts the process mid-test; -v names that test.
set +e
# One pytest-xdist worker per core (SANITIZE_WORKERS=0: one process); a worker that a report aborts
# is named with its test by xdist ("node down ... crashed").
"$PYTHON" -m pytest -v -x -n "${SANITIZE_WORKERS:-auto}" --capture=sys -p no:cacheprovider \
  -m "not slow and not cuda and not triton and not reference" "${tests[@]}" "$@" 2>&1 | tee "$log" | grep -v " PASSED"
status=${PIPESTATUS[0]}
set -e
end=$(date +%s)

if grep -q -E "runtime error:|ERROR: AddressSanitizer|AddressSanitizer: CHECK failed" "$log"; then
  echo "sanitize: FAILED: sanitizer report above (full log: $log)" >&2
  exit 1
fi
[ "$status" -eq 0 ] || { echo "sanitize: FAILED: the tests failed (exit status $status; log: $log)" >&2; exit "$status"; }
echo "sanitize: clean (build $((built - start)) s, tests $((end - built)) s)"
