#!/usr/bin/env bash
# Static instruction counts of the selective-scan kernels: compile one .cu to an sm_90 cubin,
# disassemble it and count, per kernel, the instruction classes that decide its speed. No GPU:
# these are SASS/ptxas counts, not timings.
#
#   scripts/sass_counts.sh [file.cu]        (default csrc/cuda/selective_scan.cu)
#   ARCH=sm_80 scripts/sass_counts.sh       another architecture
#   NVCC=... CUOBJDUMP=...                  tools (cuobjdump: the toolkit's, else triton's copy)
#
# Prints a Markdown table, one row per kernel instantiation (static counts: an unrolled loop
# counts once per copy, a loop body once):
#   regs, spill (bytes stored/loaded), MUFU.EX2 / other MUFU, FFMA, FMUL+FADD,
#   LDL+STL (local memory), LDG and STG by bits per thread (16/32/64/128), LDS/STS, BAR, SHFL.
set -euo pipefail
cd "$(dirname "$0")/.."

src="${1:-csrc/cuda/selective_scan.cu}"
arch="${ARCH:-sm_90}"
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
if [[ -z "${CUOBJDUMP:-}" ]]; then
  CUOBJDUMP="$(command -v cuobjdump || true)"
  [[ -z "$CUOBJDUMP" && -x /usr/local/cuda/bin/cuobjdump ]] && CUOBJDUMP=/usr/local/cuda/bin/cuobjdump
  if [[ -z "$CUOBJDUMP" ]]; then
    CUOBJDUMP="$(ls .venv/lib/python3*/site-packages/triton/backends/nvidia/bin/cuobjdump 2>/dev/null | head -1 || true)"
  fi
fi
[[ -x "$CUOBJDUMP" ]] || { echo "sass_counts: cuobjdump not found (set CUOBJDUMP=)" >&2; exit 2; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$NVCC" -std=c++17 -cubin -arch="$arch" --use_fast_math -Icsrc -Icsrc/cuda -Xptxas -v \
  "$src" -o "$tmp/k.cubin" 2>"$tmp/ptxas.log"
"$CUOBJDUMP" -sass "$tmp/k.cubin" >"$tmp/k.sass"

echo "$src, $arch: nvcc -std=c++17 -cubin -arch=$arch --use_fast_math -Xptxas -v; cuobjdump -sass"
echo
echo "| kernel | regs | spill st/ld B | MUFU.EX2 | MUFU other | FFMA | FMUL+FADD | LDL+STL | LDG 16/32/64/128 bit | STG 16/32/64/128 bit | LDS/STS | BAR | SHFL |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
python3 - "$tmp/k.sass" "$tmp/ptxas.log" <<'EOF'
import re, subprocess, sys
sass, log = open(sys.argv[1]).read(), open(sys.argv[2]).read()

def demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout
        return dict(zip(names, out.splitlines()))
    except OSError:
        return {n: n for n in names}

def short(d):
    # "void pyneuro::cuda::(anonymous namespace)::selective_scan_fwd_kernel<float, true, false>(...)"
    # -> "fwd<float,true,false>"
    m = re.search(r"(\w+)(<[^()]*>)?\(", d)
    name = (m.group(1) + (m.group(2) or "")) if m else d
    name = name.replace("selective_scan_", "").replace("_kernel", "").replace(" ", "")
    return name.replace("__nv_bfloat16", "bf16").replace("__half", "half")

# ptxas report: "Compiling entry function 'X'" ... "Used R registers" / "N bytes spill stores"
res, cur = {}, None
for line in log.splitlines():
    m = re.search(r"Compiling entry function '(\w+)'", line) or re.search(r"Function properties for (\w+)", line)
    if m: cur = m.group(1); res.setdefault(cur, {})
    if cur is None: continue
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m: res[cur]["spill"] = f"{m.group(1)}/{m.group(2)}"
    m = re.search(r"Used (\d+) registers", line)
    if m: res[cur]["regs"] = m.group(1)

funcs = re.split(r"\n\s*Function : ", sass)[1:]
names = [f.split("\n", 1)[0].strip() for f in funcs]
dem = demangle(names)
rows = []
for name, body in zip(names, funcs):
    ins = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", body)
    def c(pred): return sum(1 for i in ins if pred(i))
    op = lambda i: i.split(".")[0]
    def width(kind, w):  # bits per thread: 16 (and 8), 32, 64, 128
        if w == 16: return c(lambda i: op(i) == kind and re.search(r"\.[US](8|16)\b", i))
        if w == 32: return c(lambda i: op(i) == kind and not re.search(r"\.(64|128|[US]8|[US]16)\b", i))
        return c(lambda i: op(i) == kind and re.search(rf"\.{w}\b", i))
    r = res.get(name, {})
    rows.append((short(dem[name]), r.get("regs", "?"), r.get("spill", "?"),
                 c(lambda i: i.startswith("MUFU.EX2")), c(lambda i: op(i) == "MUFU" and not i.startswith("MUFU.EX2")),
                 c(lambda i: op(i) == "FFMA"), c(lambda i: op(i) in ("FMUL", "FADD")),
                 c(lambda i: op(i) in ("LDL", "STL")),
                 "/".join(str(width("LDG", w)) for w in (16, 32, 64, 128)),
                 "/".join(str(width("STG", w)) for w in (16, 32, 64, 128)),
                 f"{c(lambda i: op(i) == 'LDS')}/{c(lambda i: op(i) == 'STS')}",
                 c(lambda i: op(i) == "BAR"), c(lambda i: op(i) == "SHFL")))
for row in sorted(rows):
    print("| " + " | ".join(str(x) for x in row) + " |")
EOF
