"""The emulated CUDA selective scan (tools/cuda_emu) driven through ctypes, plus its fp64 oracle.

Shared by the tests in this folder (pytest puts it on sys.path). Buffers are torch CPU tensors
whose data pointers go straight to the kernels; outputs and the backward workspace start as NaN,
so an element a kernel fails to write shows up as non-finite.
"""
from __future__ import annotations

import ctypes
import importlib.util
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from pyneuro.ops.scan.naive import selective_scan_adjoint, selective_scan_naive

REPO = Path(__file__).resolve().parents[2]


def _load_build_module():
    """tools/cuda_emu/build.py under a unique name (tools/ is not a package)."""
    name = "cuda_emu_build"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tools" / "cuda_emu" / "build.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


emu_build = _load_build_module()

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
SCHEDULES = {"forward": 0, "reverse": 1, "random": 2}
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
DEFAULT_CHUNK = 64  # kSelectiveScanDefaultChunk


def gxx_missing() -> str | None:
    return None if shutil.which(emu_build.CXX) else f"{emu_build.CXX} not found (the emulator compiles the kernels with it)"


def build_or_fail(target: str):
    """The target's path. A build failure is a test failure, not a skip: the .cu or the emulator
    changed in a way the other no longer handles."""
    if (why := gxx_missing()) is not None:
        pytest.skip(why)
    try:
        return emu_build.build(target)
    except emu_build.BuildError as e:
        pytest.fail(f"building the emulated {target} failed:\n{e}", pytrace=False)


@dataclass(frozen=True)
class Case:
    batch: int
    dim: int
    L: int
    N: int
    B: object = 1          # "const" (dim, N) fp32, or G: variable (batch, G, N, L)
    C: object = 1
    D: bool = True
    z: bool = True
    bias: bool = True
    softplus: bool = True
    x0: bool = True
    dlast: bool = True
    dtype: torch.dtype = torch.float32
    chunk: int = DEFAULT_CHUNK
    schedule: str = "forward"
    seed: int = 0

    def __str__(self):
        flags = "".join(k for k, on in (("D", self.D), ("z", self.z), ("b", self.bias), ("s", self.softplus),
                                         ("x", self.x0), ("g", self.dlast)) if on)
        dt = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}[self.dtype]
        return (f"b{self.batch}d{self.dim}L{self.L}N{self.N}-B{self.B}C{self.C}-{flags or 'plain'}-{dt}"
                f"-cs{self.chunk}-{self.schedule}")

    def with_(self, **kw) -> "Case":
        return replace(self, **kw)


def make_inputs(c: Case):
    """(inputs, dout, dlast): inputs in the kernel's dtypes (16-bit where the contract says u's
    dtype), cotangents as the kernel sees them (dout rounded to the dtype)."""
    g = torch.Generator().manual_seed(c.seed)
    rnd = lambda *s, scale=1.0: torch.randn(*s, generator=g) * scale  # noqa: E731

    def bc(kind):
        return rnd(c.dim, c.N) if kind == "const" else rnd(c.batch, kind, c.N, c.L).to(c.dtype)

    if c.softplus:
        delta = rnd(c.batch, c.dim, c.L, scale=0.5) - 1.0
        bias = rnd(c.dim, scale=0.3)
    else:  # keep δ > 0: a negative step makes the recurrence grow
        delta = torch.rand(c.batch, c.dim, c.L, generator=g) * 0.5 + 0.01
        bias = torch.rand(c.dim, generator=g) * 0.1
    inputs = dict(
        u=rnd(c.batch, c.dim, c.L).to(c.dtype),
        delta=delta.to(c.dtype),
        A=-torch.rand(c.dim, c.N, generator=g) * 2 - 0.2,
        B=bc(c.B), C=bc(c.C),
        D=rnd(c.dim) if c.D else None,
        z=rnd(c.batch, c.dim, c.L).to(c.dtype) if c.z else None,
        delta_bias=bias if c.bias else None,
        initial_state=rnd(c.batch, c.dim, c.N) if c.x0 else None,
    )
    dout = rnd(c.batch, c.dim, c.L).to(c.dtype)
    dlast = rnd(c.batch, c.dim, c.N) if c.dlast else None
    return inputs, dout, dlast


# ----------------------------------------------------------------------------------------------
# The emulated kernels
# ----------------------------------------------------------------------------------------------
class EmulatedScan:
    def __init__(self, lib_path: Path):
        self.lib = ctypes.CDLL(str(lib_path))
        self.lib.cuda_emu_error_message.restype = ctypes.c_char_p
        self.lib.emu_scan_bwd_workspace_floats.restype = ctypes.c_longlong
        self.lib.cuda_emu_configure.argtypes = [ctypes.c_int, ctypes.c_ulonglong, ctypes.c_int, ctypes.c_ulonglong]

    def configure(self, schedule="forward", seed=0, workers=1):
        self.lib.cuda_emu_configure(SCHEDULES[schedule], seed, workers, 0)

    def stats(self):
        s = (ctypes.c_longlong * 5)()
        self.lib.cuda_emu_stats(s)
        return dict(zip(("launches", "blocks", "barriers", "warp_ops", "switches"), s))

    def _check(self, rc, what):
        if rc != 0:
            msg = self.lib.cuda_emu_error_message().decode()
            self.lib.cuda_emu_clear_error()
            raise RuntimeError(f"emulated {what} failed (cudaError {rc}): {msg}")

    @staticmethod
    def _ptr(t):
        return None if t is None else ctypes.c_void_p(t.data_ptr())

    @staticmethod
    def _groups(M):
        return 0 if M.dim() == 2 else M.shape[1]

    def _head(self, c: Case, i):
        return [c.batch, c.dim, c.L, c.N, self._groups(i["B"]), self._groups(i["C"]), c.chunk,
                int(c.softplus), DTYPE_CODE[c.dtype]]

    def forward(self, c: Case, i):
        nan = lambda *s, dtype=torch.float32: torch.full(s, float("nan"), dtype=dtype)  # noqa: E731
        out = nan(c.batch, c.dim, c.L, dtype=c.dtype)
        last = nan(c.batch, c.dim, c.N)
        chunk_states = nan(c.batch, c.dim, self.lib.emu_scan_n_chunks(c.L, c.chunk), c.N)
        p = self._ptr
        rc = self.lib.emu_scan_fwd(*self._head(c, i), p(i["u"]), p(i["delta"]), p(i["z"]), p(i["A"]),
                                   p(i["B"]), p(i["C"]), p(i["D"]), p(i["delta_bias"]), p(i["initial_state"]),
                                   p(out), p(last), p(chunk_states))
        self._check(rc, "forward")
        return out, last, chunk_states

    def backward(self, c: Case, i, chunk_states, dout, dlast):
        nan_like = lambda t: None if t is None else torch.full_like(t, float("nan"))  # noqa: E731
        g = {k: nan_like(i[k]) for k in GRAD_NAMES}
        ws = torch.full((self.lib.emu_scan_bwd_workspace_floats(
            c.batch, c.dim, c.L, c.N, self._groups(i["B"]), self._groups(i["C"])),), float("nan"))
        p = self._ptr
        rc = self.lib.emu_scan_bwd(*self._head(c, i), p(dout), p(dlast), p(i["u"]), p(i["delta"]), p(i["z"]),
                                   p(i["A"]), p(i["B"]), p(i["C"]), p(i["D"]), p(i["delta_bias"]),
                                   p(i["initial_state"]), p(chunk_states),
                                   p(g["u"]), p(g["delta"]), p(g["z"]), p(g["A"]), p(g["B"]), p(g["C"]),
                                   p(g["D"]), p(g["delta_bias"]), p(g["initial_state"]), p(ws))
        self._check(rc, "backward")
        return {k: v for k, v in g.items() if v is not None}


# ----------------------------------------------------------------------------------------------
# fp64 oracle
# ----------------------------------------------------------------------------------------------
def oracle(c: Case, i, dout, dlast):
    """(out, last, chunk_states, grads) in fp64 from the kernel's own (rounded) inputs. out and the
    last state are naive.py's; the states and the gradients of <out, dout> + <last, dlast> come
    from naive.py's explicit recurrence and adjoint (selective_scan_adjoint, itself checked
    against autograd through selective_scan_naive by tests/ops/selective_scan/test_oracle.py)."""
    d = {k: (v.double() if v is not None else None) for k, v in i.items()}
    out, last = selective_scan_naive(d["u"], d["delta"], d["A"], d["B"], d["C"], d["D"], d["z"],
                                     d["delta_bias"], c.softplus, return_last_state=True,
                                     initial_state=d["initial_state"])
    _, states, grads = selective_scan_adjoint(**d, delta_softplus=c.softplus, dout=dout.double(),
                                              dlast_state=dlast.double() if dlast is not None else None)
    assert torch.allclose(states[:, :, -1], last, rtol=1e-12, atol=1e-12), "oracle: recurrence disagrees with naive.py"
    cs = min(c.chunk, max(c.L, 1))
    return out, last, states[:, :, :c.L:cs], grads


def autograd_grads(c: Case, i, dout, dlast):
    """Gradients of <out, dout> + <last, dlast> by autograd through naive.py in fp64."""
    leaves = {k: (v.double().requires_grad_() if v is not None else None) for k, v in i.items()}
    out, last = selective_scan_naive(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"],
                                     leaves["D"], leaves["z"], leaves["delta_bias"], c.softplus,
                                     return_last_state=True, initial_state=leaves["initial_state"])
    loss = (out * dout.double()).sum() + ((last * dlast.double()).sum() if dlast is not None else 0)
    wrt = [k for k in GRAD_NAMES if leaves[k] is not None]
    return dict(zip(wrt, torch.autograd.grad(loss, [leaves[k] for k in wrt])))


def normwise_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| (the absolute error when expected is 0)."""
    expected = expected.detach().double()
    if expected.numel() == 0:
        return 0.0
    scale = expected.abs().max().item()
    err = (actual.detach().double() - expected).abs().max().item()
    return err / scale if scale > 0 else err
