#!/usr/bin/env bash
# Compile-time checks of the CUDA code, no GPU needed (CI and `make cuda-compile` run this):
#  1. every csrc/cuda/*.cu with nvcc and the CMake build's flags, for sm_80, sm_86 and sm_90, with
#     ptxas's resource report (-Xptxas -v);
#  2. every csrc/cuda/*_glue.cpp (torch-facing) with g++ -O1 -Wall -Werror against the headers of a
#     CUDA build of torch, extracted once into build/torch-cuda-headers/ (scripts/cuda_torch_headers.py),
#     to an object file: GCC's flow warnings (infinite recursion, uninitialised reads) need the
#     optimiser, which -fsyntax-only never runs, and this code has no other test before a GPU;
#  3. the report (scripts/cuda_ptxas_report.py): no register spill in a hot kernel, and static +
#     dynamic shared memory at the largest supported size (sizes from the launchers, printed by
#     scripts/cuda_smem_probe.cu: the selective scan at N = kSelectiveScanMaxDState, the persistent
#     RNN kernels at H = kRnnPersistentMaxH) within each architecture's per-block opt-in limit
#     (sm_86 stands for sm_86/sm_89: same 99 KiB);
#  4. the tensor-core path is real: the PTX of csrc/cuda/rnn_persistent.cu for sm_80 contains
#     mma.sync for both fp16 and bf16 (a guard mistake would silently fall back to the emulator's
#     scalar loop, which compiles everywhere).
# One line per compiled file, a table per kernel and architecture, exit status 1 on any failure.
#   NVCC=/path/to/nvcc  PYTHON=python3  CUDA_COMPILE_JOBS=N (default: the number of cores)
#   TORCH_CUDA_HEADERS=DIR (the header cache)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
PYTHON="${PYTHON:-python3}"
JOBS="${CUDA_COMPILE_JOBS:-$(nproc)}"
ARCHS=(80 86 90)
WORK=build/cuda-compile          # this run's objects and logs, recreated each run
HEADERS="${TORCH_CUDA_HEADERS:-build/torch-cuda-headers}"  # cached between runs
# Kernels that are not hot (ptxas may spill in them), as "name=reason". Every other __global__ is hot.
NOT_HOT=()

if [[ ! -x "$NVCC" ]]; then
  echo "check_cuda_compile: nvcc not found (set NVCC=/path/to/nvcc)" >&2
  exit 2
fi
shopt -s nullglob
cu_files=(csrc/cuda/*.cu)
glue_files=(csrc/cuda/*_glue.cpp)
if (( ${#cu_files[@]} == 0 )); then
  echo "check_cuda_compile: no csrc/cuda/*.cu files" >&2
  exit 2
fi
rm -rf "$WORK" && mkdir -p "$WORK"
failed=0
t0=$EPOCHREALTIME
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

cuda_home="$(dirname "$(dirname "$(readlink -f "$NVCC")")")"
cuda_include="$cuda_home/include"
[[ -f "$cuda_include/cuda_runtime_api.h" ]] || cuda_include=/usr/local/cuda/include
echo "== nvcc: $("$NVCC" --version | tail -1)  ($NVCC)"
echo "== g++:  $(g++ --version | head -1)"

# The CMake build's CUDA flags (Release, CMAKE_CUDA_STANDARD 17, target options), plus ptxas -v.
nvcc_flags=(-std=c++17 -O3 -DNDEBUG --use_fast_math -lineinfo -Xcompiler=-fPIC
            -DPYNEURO_WITH_CUDA=1 -Icsrc -Icsrc/cuda -Xptxas -v)

# ---- torch's CUDA headers (for the glue) -------------------------------------------------------
glue_flags=()
if (( ${#glue_files[@]} > 0 )); then
  echo "== torch CUDA headers: $HEADERS (cached; fetched with pip on first use)"
  if ! "$PYTHON" scripts/cuda_torch_headers.py "$HEADERS" > "$WORK/headers.log" 2>&1; then
    sed 's/^/      /' "$WORK/headers.log"
    for f in "${glue_files[@]}"; do echo "FAIL  $f: torch's CUDA headers could not be fetched"; done
    glue_files=()
    failed=1
  else
    grep '^  ' "$WORK/headers.log"
  fi
fi
if (( ${#glue_files[@]} > 0 )); then
  read -r torch_version abi cxx_std include_dirs < <("$PYTHON" - "$HEADERS/headers.json" <<'EOF'
import json, sys
h = json.load(open(sys.argv[1]))
print(h["torch"], h["cxx11_abi"], max(17, h["min_cxx_std"]), ":".join(h["include_dirs"]))
EOF
  )
  # CMakeLists.txt builds as C++20 for torch >= 2.14 (whose headers need it), as C++17 before.
  echo "glue: against torch $torch_version's CUDA headers, as C++$cxx_std"
  py_include="$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['include'])")"
  glue_flags=(-c -O1 -Wall -Werror -fPIC -std="c++$cxx_std" -D_GLIBCXX_USE_CXX11_ABI="$abi" -DPYNEURO_WITH_CUDA=1)
  IFS=: read -r -a dirs <<< "$include_dirs"
  for d in "${dirs[@]}" "$cuda_include" "$py_include"; do glue_flags+=(-isystem "$d"); done
  glue_flags+=(-Icsrc -Icsrc/cuda)
  echo "== glue against torch $torch_version: g++ ${glue_flags[*]} FILE"
fi

# ---- compile: every (file, arch) and every glue file, $JOBS at a time ---------------------------
echo "== nvcc ${nvcc_flags[*]} -gencode arch=compute_XX,code=sm_XX -c FILE  for XX in ${ARCHS[*]} ($JOBS jobs)"
start_job() {  # id, command...: runs in the background; log in $WORK/id.log, "rc start end" in id.status
  local id=$1; shift
  while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n; done
  ( s=$EPOCHREALTIME; "$@" > "$WORK/$id.log" 2>&1; rc=$?; echo "$rc $s $EPOCHREALTIME" > "$WORK/$id.status" ) &
}
for f in "${cu_files[@]}"; do
  base=$(basename "$f" .cu)
  for a in "${ARCHS[@]}"; do
    start_job "$base.sm_$a" "$NVCC" "${nvcc_flags[@]}" -gencode "arch=compute_$a,code=sm_$a" \
      -c "$f" -o "$WORK/$base.sm_$a.o"
  done
done
for f in "${glue_files[@]}"; do
  start_job "$(basename "$f" .cpp)" g++ "${glue_flags[@]}" "$f" -o "$WORK/$(basename "$f" .cpp).o"
done
wait

report_job() {  # id, file, what
  local rc s e nwarn
  read -r rc s e < "$WORK/$1.status"
  # ptxas's -v lines are information, not warnings.
  nwarn=$(grep -v "ptxas info\|bytes stack frame" "$WORK/$1.log" | grep -ci "warning" || true)
  if [[ "$rc" == 0 ]]; then
    printf 'ok    %-40s %-10s %6s s  %s warnings\n' "$2" "$3" "$(elapsed "$s" "$e")" "$nwarn"
    if (( nwarn > 0 )); then grep -v "ptxas info\|bytes stack frame" "$WORK/$1.log" | sed 's/^/      /'; fi
  else
    printf 'FAIL  %-40s %-10s %6s s  (exit %s)\n' "$2" "$3" "$(elapsed "$s" "$e")" "$rc"
    grep -v "ptxas info\|bytes stack frame\|Used [0-9]* registers\|Compile time" "$WORK/$1.log" | head -60 | sed 's/^/      /'
    failed=1
  fi
}
for f in "${cu_files[@]}"; do
  for a in "${ARCHS[@]}"; do report_job "$(basename "$f" .cu).sm_$a" "$f" "sm_$a"; done
done
for f in "${glue_files[@]}"; do report_job "$(basename "$f" .cpp)" "$f" "g++ C++$cxx_std"; done

# ---- shared memory sizes at the largest N, then the ptxas report --------------------------------
objects=()
for f in "${cu_files[@]}"; do
  id="$(basename "$f" .cu).sm_90"
  [[ "$(cut -d' ' -f1 "$WORK/$id.status")" == 0 ]] && objects+=("$WORK/$id.o")
done
if (( ${#objects[@]} == ${#cu_files[@]} )); then
  echo "== dynamic shared memory at the largest N: scripts/cuda_smem_probe.cu linked with the sm_90 objects"
  if "$NVCC" -std=c++17 -Icsrc -Icsrc/cuda scripts/cuda_smem_probe.cu "${objects[@]}" -o "$WORK/smem_probe" \
       > "$WORK/smem_probe.log" 2>&1 && "$WORK/smem_probe" > "$WORK/smem.txt" 2>> "$WORK/smem_probe.log"; then
    sed 's/^/      /' "$WORK/smem.txt"
  else
    echo "FAIL  scripts/cuda_smem_probe.cu"
    sed 's/^/      /' "$WORK/smem_probe.log"
    failed=1
  fi
else
  echo "FAIL  shared memory not checked: some .cu file did not compile for sm_90"
  failed=1
fi

logs=()
for a in "${ARCHS[@]}"; do
  for f in "${cu_files[@]}"; do
    id="$(basename "$f" .cu).sm_$a"
    [[ "$(cut -d' ' -f1 "$WORK/$id.status")" == 0 ]] && logs+=(--log "sm_$a=$WORK/$id.log")
  done
done
if [[ -f "$WORK/smem.txt" ]] && (( ${#logs[@]} > 0 )); then
  echo "== ptxas report (hot kernels must not spill; shared memory at the largest N within the opt-in limit)"
  exempt=()
  for e in "${NOT_HOT[@]}"; do exempt+=(--exempt "$e"); done
  "$PYTHON" scripts/cuda_ptxas_report.py --sources "${cu_files[@]}" csrc/cuda/*.cuh --smem "$WORK/smem.txt" \
    "${logs[@]}" "${exempt[@]}" || failed=1
fi

# ---- tensor cores: the persistent RNN forward's fp16/bf16 MMA must reach the PTX ----------------
if [[ -f csrc/cuda/rnn_persistent.cu ]]; then
  if "$NVCC" -std=c++17 -O3 -DNDEBUG --use_fast_math -DPYNEURO_WITH_CUDA=1 -Icsrc -Icsrc/cuda -arch=sm_80 -ptx \
       csrc/cuda/rnn_persistent.cu -o "$WORK/rnn_persistent.sm_80.ptx" > "$WORK/rnn_ptx.log" 2>&1; then
    n_bf16=$(grep -c "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" "$WORK/rnn_persistent.sm_80.ptx" || true)
    n_f16=$(grep -c "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" "$WORK/rnn_persistent.sm_80.ptx" || true)
    if (( n_bf16 > 0 && n_f16 > 0 )); then
      echo "ok    rnn_persistent.cu tensor cores: $n_bf16 bf16 and $n_f16 fp16 mma.sync in the sm_80 PTX"
    else
      echo "FAIL  rnn_persistent.cu: no mma.sync in the sm_80 PTX (bf16: $n_bf16, fp16: $n_f16)"
      failed=1
    fi
  else
    echo "FAIL  rnn_persistent.cu: PTX for sm_80 did not compile"; sed 's/^/      /' "$WORK/rnn_ptx.log"; failed=1
  fi
fi

echo "== check_cuda_compile: $([[ $failed == 0 ]] && echo ok || echo FAILED) in $(elapsed "$t0" "$EPOCHREALTIME") s"
exit $failed
