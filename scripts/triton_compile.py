"""Compile the Triton kernels ahead of time for sm_80 and sm_90, without a GPU, and report registers,
spills and shared memory per specialisation (`make triton-compile`).

    python scripts/triton_compile.py [--arch 80 90] [--jobs N] [--all-n] [--ops scan rnn attention] [-k TEXT]

Which specialisations (--ops scan rnn attention; all by default): the ones pyneuro.kernels.selective_scan
launches, with its own launch-shape rules (fwd_launch_shape/bwd_launch_shape) for a wide segment
(seg_dim = 1024, the largest BLOCK_D):
  * every feature on (D, z, delta_bias, softplus, variable B and C, initial state): the most live
    tiles, so the worst case for registers; fp32 and bf16; N = 4 .. 128 (256 with --all-n) at
    default_chunk_size(N)
  * N = 16 over every chunk size, N = 64 at chunk 64; fp16; constant B/C without z; the
    backward's "flip" reverse scan
and the ones pyneuro.kernels.rnn launches (rnn_specialisations: every cell variant's persistent
kernels at H = 32 .. 128 and its per-step kernels, with the module's own launch_config), and the
ones pyneuro.kernels.attention's autotuner may pick (attn_specialisations: for each architecture
its own configs() of the forward, dK/dV and dQ kernels, bf16/fp16/fp32, D = 24, 64, 128, causal or
not, with and without dropout).
Each is compiled from the kernel source with triton.compile(ASTSource(...), target=GPUTarget(...)),
which runs Triton's whole pipeline down to ptxas; registers and spills come from that ptxas run's
-v log (knobs.nvidia.dump_ptxas_log; on Triton versions without it, from ptxas -v run again on
the PTX with Triton's flags), shared memory from the kernel's metadata. Integer arguments are compiled unspecialised and pointers as 16-byte aligned, as the JIT
does for fresh torch tensors, so the figures match a real launch up to integer specialisation.

Fails (exit 1) on a compile error, or on any spill for N <= 64 at a chunk size up to
default_chunk_size(N) with the default reverse scan (what the op runs); spills at larger N or chunk,
or in the "flip" fallback, are reported only (see gated()). rnn: fails on any spill, or shared
memory above the architecture's per-block maximum, in a kernel the op runs (step mode, persistent
up to PERSISTENT_MAX_H); larger persistent shapes are reported only (rnn_gated()). attention: fails
on shared memory above the architecture's per-block maximum in any configuration the autotuner may
pick, and on any spill in its 16-bit ones without dropout (with dropout or in fp32, spills are
reported only: attn_gated()).
Must not run under TRITON_INTERPRET (it compiles for real).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import dataclasses
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPILL_GATE_N = 64
# Largest shared memory one block may use (opt-in), bytes: A100 (sm_80) 163 KB, H100 (sm_90) 227 KB.
MAX_SHARED = {80: 166912, 90: 232448}
SEG_DIM = 1024


@dataclasses.dataclass(frozen=True)
class Spec:
    kernel: str  # "fwd" | "bwd"
    dtype: str  # "fp32" | "bf16" | "fp16": u, delta, z, out (and variable B/C)
    N: int
    chunk: int
    D: bool = True
    z: bool = True
    bias: bool = True
    softplus: bool = True
    B_var: bool = True
    C_var: bool = True
    x0: bool = True  # forward only
    flip: bool = False  # backward only: REVERSE_SCAN = "flip"

    def flags(self):
        names = [("D", self.D), ("z", self.z), ("bias", self.bias), ("sp", self.softplus),
                 ("Bv" if self.B_var else "Bc", True), ("Cv" if self.C_var else "Cc", True)]
        if self.kernel == "fwd":
            names.append(("x0", self.x0))
        if self.flip:
            names.append(("flip", True))
        return " ".join(n for n, on in names if on)


def specialisations(ssk, all_n):
    chunk = ssk.default_chunk_size
    ns = [4, 8, 16, 32, 64, 128, 256] if all_n else [4, 8, 16, 32, 64, 128]
    specs = []
    for kernel in ("fwd", "bwd"):
        for dtype in ("fp32", "bf16"):
            specs += [Spec(kernel, dtype, n, chunk(n)) for n in ns]
        specs += [Spec(kernel, "fp32", 16, c) for c in (4, 8, 16, 32, 128, 256) if c != chunk(16)]
        specs.append(Spec(kernel, "fp32", 64, ssk.DEFAULT_CHUNK_SIZE))  # above its default chunk
        specs += [Spec(kernel, "fp16", n, chunk(n)) for n in (16, 64)]
        specs += [Spec(kernel, "fp32", n, chunk(n), z=False, B_var=False, C_var=False) for n in (16, 64)]
    specs += [Spec("bwd", "fp32", n, chunk(n), flip=True) for n in (4, 16, 32, 64)]
    return specs


def gated(ssk, spec):
    """Spills fail the run for the shapes the op runs: N <= 64 at its default chunk size or below,
    with the default reverse scan. The "flip" fallback (only switched on if the native reverse scan
    proves wrong on a GPU) sits at the same 255-register edge on 8 warps and may spill a few bytes
    there (N = 64, sm_90: 4 B); that is reported, not failed: a fallback for correctness."""
    return not spec.flip and spec.N <= SPILL_GATE_N and spec.chunk <= ssk.default_chunk_size(spec.N)


RNN_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclasses.dataclass(frozen=True)
class RnnSpec:
    """One specialisation of pyneuro.kernels.rnn: a cell variant's fwd or bwd kernel."""
    cell: str  # "lstm" | "gru" | "rnn" | "leaky"
    kernel: str  # "fwd" | "bwd"
    dtype: str  # x, the weights, y/dy, h0 (the reserve and the gate buffers are fp32)
    H: int
    P: int = 0  # LSTM projection size (0: none)
    step: bool = False  # per-step mode (no tl.dot; tiles of STEP_BLOCK_B x STEP_BLOCK_H)
    relu: bool = False

    def flags(self):
        return " ".join(f for f, on in (("proj", self.P), ("step", self.step), ("relu", self.relu)) if on)

    def name(self):
        return f"{self.cell}_{self.kernel} {self.dtype} H={self.H}" + (f" P={self.P}" if self.P else "") + \
            (f" {self.flags()}" if self.flags() else "")


def rnn_specialisations(rk):
    """Every cell variant's fwd and bwd: persistent at H = 32, 64, 128 in fp32, 64 and 128 in bf16,
    128 in fp16 (the projected LSTM with P = H/2), and step mode once per variant and dtype (H = 256). Persistent
    shapes above PERSISTENT_MAX_H are compiled too: their spills or shared memory are why the limit
    is where it is."""
    variants = [("lstm", {}), ("lstm", {"proj": True}), ("gru", {}), ("rnn", {}), ("rnn", {"relu": True}),
                ("leaky", {})]
    specs = []
    for cell, opt in variants:
        for kernel in ("fwd", "bwd"):
            sizes = [("fp32", 32), ("fp32", 64), ("fp32", 128), ("bf16", 64), ("bf16", 128), ("fp16", 128)]
            if opt.get("relu"):  # only the activation differs from tanh: one size is enough
                sizes = [("fp32", 64), ("bf16", 128)]
            for dtype, h in sizes:
                specs.append(RnnSpec(cell, kernel, dtype, h, P=h // 2 if opt.get("proj") else 0,
                                     relu=opt.get("relu", False)))
            for dtype in ("fp32", "bf16"):
                specs.append(RnnSpec(cell, kernel, dtype, 256, P=128 if opt.get("proj") else 0, step=True,
                                     relu=opt.get("relu", False)))
    return specs


def rnn_gated(rk, spec):
    """Spills fail the run where the op runs the kernel: step mode, and persistent up to
    PERSISTENT_MAX_H[dtype]; larger persistent shapes are reported only."""
    import torch
    return spec.step or rk.persistent(spec.cell, spec.H, spec.P or spec.H, getattr(torch, RNN_DTYPES[spec.dtype]))


# Pointers in x's dtype; every other pointer of the rnn kernels is fp32 (reserve, gate buffers).
_RNN_X_POINTERS = {"h0_ptr", "c0_ptr", "whh_ptr", "whr_ptr", "bhh_ptr", "tau_ptr", "y_ptr", "dy_ptr"}


def _rnn_launch(rk, spec):
    """(kernel fn, signature, constexprs, num_warps, block) as pyneuro.kernels.rnn launches it."""
    import torch
    R = spec.P or spec.H
    bb, bh, br, warps = rk.launch_config(spec.cell, spec.H, R, getattr(torch, RNN_DTYPES[spec.dtype]), spec.step)
    family = {"lstm": "lstm", "gru": "gru", "rnn": "rnn", "leaky": "rnn"}[spec.cell]
    fn = getattr(rk, f"_{family}_{spec.kernel}_kernel")
    values = dict(PROJ=bool(spec.P), STEP=spec.step, HAS_BHH=True, LEAKY=spec.cell == "leaky", RELU=spec.relu,
                  BLOCK_B=bb, BLOCK_H=bh, BLOCK_R=br)
    signature, constexprs = {}, {}
    for p in fn.params:
        if p.is_constexpr:
            signature[p.name] = "constexpr"
            constexprs[p.name] = values[p.name]
        elif p.name.endswith("_ptr"):
            signature[p.name] = "*" + (spec.dtype if p.name in _RNN_X_POINTERS else "fp32")
        else:
            signature[p.name] = "i32"
    return fn, signature, constexprs, warps, (bb, bh, br)


@dataclasses.dataclass(frozen=True)
class AttnSpec:
    """One specialisation of pyneuro.kernels.attention: a kernel at one autotune configuration."""
    kernel: str  # "fwd" | "dkdv" | "dq" | "delta"
    dtype: str  # q, k, v, out, dout and the gradients (lse and delta are fp32)
    D: int
    causal: bool
    dropout: bool
    config: tuple  # (BLOCK_M, BLOCK_N, num_warps, num_stages)

    def name(self):
        bm, bn, w, st = self.config
        flags = ("causal" if self.causal else "full") + (" dropout" if self.dropout else "")
        return f"attn_{self.kernel} {self.dtype} D={self.D} {flags} {bm}x{bn} w{w} s{st}"


def attn_specialisations(ak, arch):
    """For sm_<arch>, every configuration ak.configs() gives the autotuner: bf16 at D = 24 (causal),
    64 and 128 (causal or not); at D = 128 also fp16 and bf16 with dropout (the most registers);
    fp32 at D = 24, 64 (with dropout too) and 128, causal. Plus the delta kernel per dtype."""
    import torch
    specs = []
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    for kernel in ("fwd", "dkdv", "dq"):
        for D, variants in ((24, [("bf16", True, False)]),
                            (64, [("bf16", False, False), ("bf16", True, False)]),
                            (128, [("bf16", False, False), ("bf16", True, False), ("fp16", True, False),
                                   ("bf16", True, True)])):
            for dtype, causal, dropout in variants:
                specs += [AttnSpec(kernel, dtype, D, causal, dropout, cfg)
                          for cfg in ak.configs(kernel, bf16 if dtype == "bf16" else fp16, D, arch)]
        for D, variants in ((24, [(True, False)]), (64, [(True, False), (True, True)]), (128, [(True, False)])):
            for causal, dropout in variants:
                specs += [AttnSpec(kernel, "fp32", D, causal, dropout, cfg) for cfg in ak.configs(kernel, fp32, D, arch)]
    specs += [AttnSpec("delta", dtype, D, False, False, (ak.DELTA_ROWS, 0, 4, 1))
              for dtype in ("fp32", "bf16", "fp16") for D in (24, 128)]
    return specs


def worst_attention_configs(jobs):
    """Of each (kernel variant, arch), the configuration with the largest BLOCK_M·BLOCK_N, then the
    most stages, then the fewest warps: the most shared memory and registers per thread."""
    best = {}
    for spec, arch in jobs:
        key = (spec.kernel, spec.dtype, spec.D, spec.causal, spec.dropout, arch)
        bm, bn, warps, stages = spec.config
        rank = (bm * bn, stages, -warps)
        if key not in best or rank > best[key][0]:
            best[key] = (rank, (spec, arch))
    return [job for _, job in best.values()]


def attn_gated(spec):
    """Spills fail the run for the 16-bit kernels without dropout (every configuration the
    autotuner may pick); with dropout, or in fp32 (IEEE dots lowered to FMA loops, see
    kernels/attention.py), they are reported only."""
    return spec.dtype != "fp32" and not spec.dropout


# Pointers in fp32 whatever the dtype; the others are in q's dtype.
_ATTN_FP32_POINTERS = {"lse_ptr", "delta_ptr"}
_ATTN_KERNELS = {"fwd": "_attn_fwd_kernel", "dkdv": "_attn_bwd_dkdv_kernel", "dq": "_attn_bwd_dq_kernel",
                 "delta": "_bwd_delta_kernel"}


def _attn_launch(ak, spec):
    """(kernel fn, signature, constexprs, num_warps, num_stages) as pyneuro.kernels.attention launches
    it. Float scalars are fp32; seed, offset and threshold i64 (the JIT takes i32 for small values)."""
    bm, bn, warps, stages = spec.config
    fn = getattr(ak, _ATTN_KERNELS[spec.kernel])
    values = dict(CAUSAL=spec.causal, DROPOUT=spec.dropout, HEAD_DIM=spec.D, BLOCK_M=bm, BLOCK_N=bn,
                  BLOCK_D=ak.block_d(spec.D))
    signature, constexprs = {}, {}
    for p in fn.params:
        if p.is_constexpr:
            signature[p.name] = "constexpr"
            constexprs[p.name] = values[p.name]
        elif p.name.endswith("_ptr"):
            signature[p.name] = "*" + ("fp32" if p.name in _ATTN_FP32_POINTERS else spec.dtype)
        elif p.name in ("qk_scale", "keep_scale", "scale"):
            signature[p.name] = "fp32"
        elif p.name in ("seed", "offset", "threshold"):
            signature[p.name] = "i64"
        else:
            signature[p.name] = "i32"
    return fn, signature, constexprs, warps, stages


def _launch(ssk, spec):
    """(kernel fn, signature, constexprs, num_warps, BLOCK_D) as the launcher would choose them."""
    block_n = 1 << (spec.N - 1).bit_length()
    if spec.kernel == "fwd":
        fn, block_d, warps = ssk._ssm_fwd_kernel, *ssk.fwd_launch_shape(SEG_DIM, block_n, spec.chunk)
    else:
        fn, block_d, warps = ssk._ssm_bwd_kernel, *ssk.bwd_launch_shape(SEG_DIM, block_n, spec.chunk)
    io = {"u_ptr", "delta_ptr", "z_ptr", "out_ptr", "dout_ptr", "du_ptr", "ddelta_ptr", "dz_ptr"}
    if spec.B_var:
        io.add("B_ptr")
    if spec.C_var:
        io.add("C_ptr")
    values = dict(HAS_D=spec.D, HAS_Z=spec.z, HAS_BIAS=spec.bias, HAS_X0=spec.x0, SOFTPLUS=spec.softplus,
                  B_VAR=spec.B_var, C_VAR=spec.C_var, BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_L=spec.chunk,
                  REVERSE_FLIP=spec.flip)
    signature, constexprs = {}, {}
    for p in fn.params:
        if p.is_constexpr:
            signature[p.name] = "constexpr"
            constexprs[p.name] = values[p.name]
        elif p.name.endswith("_ptr"):
            signature[p.name] = "*" + (spec.dtype if p.name in io else "fp32")
        else:
            signature[p.name] = "i32"
    return fn, signature, constexprs, warps, block_d


def _ptxas_path(arch):
    import triton
    try:  # triton >= 3.5
        from triton.backends.nvidia.compiler import get_ptxas
        return get_ptxas(arch).path
    except ImportError:
        pass
    try:  # 3.3 - 3.4
        return triton.knobs.nvidia.ptxas.path
    except AttributeError:
        from triton.backends.nvidia.compiler import _path_to_binary  # 3.0 - 3.2
        return _path_to_binary("ptxas")[0]


def _aligned_pointer_attrs(signature):
    """Pointers marked 16-byte aligned, as the JIT specialises torch tensors; {} where unsupported."""
    try:
        from triton.backends.compiler import BaseBackend
        attr = BaseBackend.parse_attr("D")
    except (ImportError, AttributeError):
        return {}
    names = list(signature)
    return {(names.index(k),): attr for k, v in signature.items() if v.startswith("*")}


def _compile_with_ptxas_log(triton, src, target, warps, stages=None):
    """triton.compile, returning (compiled, the log of Triton's own ptxas run, or "")."""
    options = {"num_warps": warps}
    if stages is not None:
        options["num_stages"] = stages
    nvidia_knobs = getattr(getattr(triton, "knobs", None), "nvidia", None)
    if nvidia_knobs is None or not hasattr(nvidia_knobs, "dump_ptxas_log"):
        return triton.compile(src, target=target, options=options), ""
    nvidia_knobs.dump_ptxas_log = True  # Triton prints ptxas -v's log to stdout
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        compiled = triton.compile(src, target=target, options=options)
    return compiled, out.getvalue()


def _ptxas_log(ptx, arch):
    """ptxas -v on the PTX with the flags Triton 3.x passes (-lineinfo, --regAllocOptLevel=2)."""
    gpu_name = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        ptx_file = Path(tmp) / "k.ptx"
        ptx_file.write_text(ptx)
        return subprocess.run([_ptxas_path(arch), "-lineinfo", "-v", "--regAllocOptLevel=2",
                               f"--gpu-name={gpu_name}", str(ptx_file), "-o", str(Path(tmp) / "k.cubin")],
                              capture_output=True, text=True, check=True).stderr


def compile_one(spec, arch):
    """Compile one specialisation for sm_<arch>; returns a result dict (never raises)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sys.path.insert(0, str(REPO))
    stages = None
    if isinstance(spec, AttnSpec):
        import kernels.attention as ak

        fn, signature, constexprs, warps, stages = _attn_launch(ak, spec)
        block = spec.config[:2]
    elif isinstance(spec, RnnSpec):
        import kernels.rnn as rk

        fn, signature, constexprs, warps, block = _rnn_launch(rk, spec)
    else:
        import kernels.selective_scan as ssk

        fn, signature, constexprs, warps, block_d = _launch(ssk, spec)
        block = (block_d, constexprs["BLOCK_N"], spec.chunk)
    res = dict(spec=spec, arch=arch, warps=warps, block=block)
    start = time.perf_counter()
    try:
        try:
            src = ASTSource(fn, signature, constexprs, _aligned_pointer_attrs(signature))
        except TypeError:  # older ASTSource without attrs
            src = ASTSource(fn, signature, constexprs)
        compiled, log = _compile_with_ptxas_log(triton, src, GPUTarget("cuda", arch, 32), warps, stages)
        if "registers" not in log:  # no log from the compile (older Triton): run ptxas -v ourselves
            log = _ptxas_log(compiled.asm["ptx"], arch)
        res.update(
            regs=int(re.search(r"Used (\d+) registers", log).group(1)),
            spill_st=int(re.search(r"(\d+) bytes spill stores", log).group(1)),
            spill_ld=int(re.search(r"(\d+) bytes spill loads", log).group(1)),
            smem=int(getattr(compiled.metadata, "shared", 0)),
        )
    except Exception as e:  # reported in the table, fails the run
        res["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200] if str(e).strip() else ''}"
    res["seconds"] = time.perf_counter() - start
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--all-n", action="store_true", help="also N = 256 (slow to compile, spills)")
    ap.add_argument("-k", dest="select", default="", help="only rows whose 'kernel dtype N=.. chunk=.. flags' "
                    "(rnn: 'cell_kernel dtype H=.. [P=..] flags'; attention: 'attn_kernel dtype D=.. causal|full "
                    "[dropout] MxN wW sS [pruned]') contains this text, e.g. -k 'bwd fp32 N=16 '")
    ap.add_argument("--ops", nargs="+", choices=("scan", "rnn", "attention"), default=["scan", "rnn", "attention"])
    ap.add_argument("--attention-configs", choices=("all", "worst"), default="all",
                    help="attention: every autotune configuration (default), or per kernel variant only the "
                         "one with the largest tile and pipeline (the most shared memory and registers)")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("triton_compile: TRITON_INTERPRET is set; unset it, this compiles for real GPUs")
    # A private, empty cache: every specialisation really compiles, and ~/.triton stays untouched.
    cache = tempfile.mkdtemp(prefix="pyneuro-triton-compile-")
    os.environ["TRITON_CACHE_DIR"] = cache
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the JIT default; silences 3.9's notice

    import triton
    sys.path.insert(0, str(REPO))
    import kernels.attention as ak
    import kernels.rnn as rk
    import kernels.selective_scan as ssk

    specs = []
    if "scan" in args.ops:
        specs += [s for s in specialisations(ssk, args.all_n)
                  if args.select in f"{s.kernel} {s.dtype} N={s.N} chunk={s.chunk} {s.flags()}"]
    if "rnn" in args.ops:
        specs += [s for s in rnn_specialisations(rk) if args.select in s.name()]
    jobs = [(s, a) for s in specs for a in args.arch]
    if "attention" in args.ops:  # per architecture: its own configurations
        attn = [(s, a) for a in args.arch for s in attn_specialisations(ak, a) if args.select in s.name()]
        if args.attention_configs == "worst":
            attn = worst_attention_configs(attn)
        jobs += attn
    start = time.perf_counter()
    try:
        with cf.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(compile_one, *zip(*jobs)))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    wall = time.perf_counter() - start

    print(f"triton {triton.__version__}: {len(results)} compiles in {wall:.0f} s ({args.jobs} jobs)\n")
    head = f"{'kernel':6} {'dtype':5} {'N':>4} {'BLOCK (D,N,L)':>14} {'warps':>5}  {'flags':26} {'arch':>4} " \
           f"{'regs':>4} {'spill st/ld':>11} {'smem':>6}  {'s':>4}"
    scan_results = [r for r in results if not isinstance(r["spec"], (RnnSpec, AttnSpec))]
    rnn_results = [r for r in results if isinstance(r["spec"], RnnSpec)]
    attn_results = [r for r in results if isinstance(r["spec"], AttnSpec)]
    failed = []
    if scan_results:
        print(head)
        print("-" * len(head))
    for r in sorted(scan_results, key=lambda r: (r["spec"].kernel, r["spec"].dtype, r["spec"].N, r["spec"].chunk,
                                                 r["spec"].flags(), r["arch"])):
        s = r["spec"]
        block = "(%d,%d,%d)" % r["block"]
        line = f"{s.kernel:6} {s.dtype:5} {s.N:>4} {block:>14} {r['warps']:>5}  {s.flags():26} {r['arch']:>4} "
        if "error" in r:
            failed.append(r)
            print(line + f"ERROR {r['error']}")
            continue
        spill = f"{r['spill_st']}/{r['spill_ld']}"
        note = ""
        if r["spill_st"] or r["spill_ld"]:
            if gated(ssk, s):
                failed.append(r)
                note = "  <- SPILLS"
            else:
                note = "  (spills; reported only: %s)" % (
                    "flip fallback" if s.flip else f"chunk above default_chunk_size(N) or N > {SPILL_GATE_N}")
        print(line + f"{r['regs']:>4} {spill:>11} {r['smem']:>6}  {r['seconds']:>4.1f}{note}")
    if rnn_results:
        head = f"\n{'rnn kernel':34} {'BLOCK (B,H,R)':>14} {'warps':>5} {'arch':>4} {'regs':>4} {'spill st/ld':>11} " \
               f"{'smem':>6}  {'s':>5}"
        print(head)
        print("-" * len(head))
    for r in sorted(rnn_results, key=lambda r: (r["spec"].cell, r["spec"].kernel, r["spec"].flags(), r["spec"].dtype,
                                                r["spec"].H, r["arch"])):
        s = r["spec"]
        line = f"{s.name():34} {'(%d,%d,%d)' % r['block']:>14} {r['warps']:>5} {r['arch']:>4} "
        if "error" in r:
            failed.append(r)
            print(line + f"ERROR {r['error']}")
            continue
        note = ""
        too_big = r["smem"] > MAX_SHARED[r["arch"]]
        if r["spill_st"] or r["spill_ld"] or too_big:
            what = "SPILLS" if not too_big else "SHARED MEMORY > %d" % MAX_SHARED[r["arch"]]
            if rnn_gated(rk, s):
                failed.append(r)
                note = f"  <- {what}"
            else:
                note = f"  ({what.lower()}; reported only: persistent above PERSISTENT_MAX_H)"
        print(line + f"{r['regs']:>4} {r['spill_st']:>5}/{r['spill_ld']:<5} {r['smem']:>6}  {r['seconds']:>5.1f}{note}")
    if attn_results:
        head = f"\n{'attention kernel':46} {'arch':>4} {'regs':>4} {'spill st/ld':>11} {'smem':>6}  {'s':>5}"
        print(head)
        print("-" * len(head))
    for r in sorted(attn_results, key=lambda r: (r["spec"].kernel, r["spec"].dtype, r["spec"].D, r["spec"].name(),
                                                 r["arch"])):
        s = r["spec"]
        line = f"{s.name():46} {r['arch']:>4} "
        if "error" in r:
            failed.append(r)
            print(line + f"ERROR {r['error']}")
            continue
        note = ""
        too_big = r["smem"] > MAX_SHARED[r["arch"]]
        if too_big:
            failed.append(r)
            note = "  <- SHARED MEMORY > %d" % MAX_SHARED[r["arch"]]
        elif r["spill_st"] or r["spill_ld"]:
            if attn_gated(s):
                failed.append(r)
                note = "  <- SPILLS"
            else:
                note = "  (spills; reported only: %s)" % ("dropout" if s.dropout else "fp32")
        print(line + f"{r['regs']:>4} {r['spill_st']:>5}/{r['spill_ld']:<5} {r['smem']:>6}  {r['seconds']:>5.1f}{note}")
    if failed:
        print(f"\nFAILED: {len(failed)} specialisation(s) with compile errors or gated spills (scan: N <= "
              f"{SPILL_GATE_N} and chunk <= default_chunk_size(N); rnn: step mode and persistent up to "
              f"PERSISTENT_MAX_H; attention: every configuration the autotuner may pick)")
        return 1
    print(f"\nOK: no compile errors, no spills at N <= {SPILL_GATE_N} and chunk <= default_chunk_size(N) (scan), "
          f"none in the rnn kernels the op runs, none in the attention configurations the autotuner may pick")
    return 0


if __name__ == "__main__":
    sys.exit(main())
