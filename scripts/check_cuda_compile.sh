#!/usr/bin/env bash
# Compile every csrc/cuda/*.cu with bare nvcc for sm_80 and sm_90 (no GPU, no torch needed).
# CI runs this; one line per file, exit status non-zero if any file fails to compile.
#   NVCC=/path/to/nvcc            pick the compiler (default: nvcc on PATH, else /usr/local/cuda/bin/nvcc)
#   PYNEURO_PTXAS_VERBOSE=1       also print ptxas register / spill reports
set -uo pipefail
cd "$(dirname "$0")/.."

NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
if [[ ! -x "$NVCC" ]]; then
  echo "check_cuda_compile: nvcc not found (set NVCC=/path/to/nvcc)" >&2
  exit 2
fi

shopt -s nullglob
files=(csrc/cuda/*.cu)
if (( ${#files[@]} == 0 )); then
  echo "check_cuda_compile: no csrc/cuda/*.cu files" >&2
  exit 2
fi

flags=(-std=c++17 -c -Icsrc -Icsrc/cuda
       -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90)
[[ "${PYNEURO_PTXAS_VERBOSE:-0}" != 0 ]] && flags+=(-Xptxas -v)

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
failed=0
for f in "${files[@]}"; do
  log="$tmp/$(basename "$f").log"
  start=$SECONDS
  if "$NVCC" "${flags[@]}" "$f" -o "$tmp/$(basename "$f").o" >"$log" 2>&1; then
    nwarn=$(grep -c "warning" "$log" || true)
    echo "ok    $f  (sm_80, sm_90; $((SECONDS - start)) s; $nwarn warnings)"
    if (( nwarn > 0 )) || [[ "${PYNEURO_PTXAS_VERBOSE:-0}" != 0 ]]; then sed 's/^/      /' "$log"; fi
  else
    echo "FAIL  $f"
    sed 's/^/      /' "$log"
    failed=1
  fi
done
exit $failed
