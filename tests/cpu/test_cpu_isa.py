"""The CPU ISA variants (csrc/cpu/isa.h): listing, choosing, refusing, and the selective scan
computing the same thing in every variant this machine runs."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

C = pytest.importorskip("pyneuro._C", reason="the compiled extension is not built")

from pyneuro.ops import selective_scan  # noqa: E402
from pyneuro.ops.scan.naive import selective_scan_naive  # noqa: E402

ALL_ISAS = ("baseline", "avx2", "avx512")


@pytest.fixture
def restore_isa():
    before = C.cpu_isa()
    yield
    C.set_cpu_isa(before)


def _in_subprocess(code: str, **env) -> str:
    """Run code in a fresh interpreter (PYNEURO_CPU_ISA is read when the extension loads)."""
    full_env = {k: v for k, v in os.environ.items() if k != "PYNEURO_CPU_ISA"}
    full_env.update(env)
    done = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_listing_and_build_info():
    isas = C.cpu_isas()
    assert isas[0] == "baseline" and set(isas) <= set(ALL_ISAS)
    assert list(isas) == [i for i in ALL_ISAS if i in isas]  # best last
    info = C.build_info()
    assert info["cpu_isas"] == isas
    assert info["cpu_isa"] == C.cpu_isa() and info["cpu_isa_error"] is None
    assert info["limits"]["selective_scan"]["max_n"]["cpu"] == 256
    assert info["limits"]["selective_scan"]["chunk_size"]["cpu"] == 128
    assert ("cuda" in info["limits"]["selective_scan"]["max_n"]) == info["cuda"]


def test_default_is_the_best_variant():
    out = _in_subprocess("import pyneuro._C as C; print(C.cpu_isa(), C.cpu_isas()[-1])")
    chosen, best = out.split()
    assert chosen == best


def test_environment_variable_forces_a_variant():
    out = _in_subprocess("import pyneuro._C as C; print(C.cpu_isa())", PYNEURO_CPU_ISA="baseline")
    assert out == "baseline"


def test_refused_environment_variable_is_reported_and_every_cpu_op_raises():
    code = """
import torch, pyneuro._C as C
info = C.build_info()
assert info["cpu_isa"] is None, info
print(info["cpu_isa_error"])
try:
    C.cpu_isa()
except ValueError as e:
    print("cpu_isa:", e)
u = torch.randn(1, 2, 3)
try:
    torch.ops.pyneuro.selective_scan_fwd(u, u, -torch.rand(2, 4), torch.randn(2, 4), torch.randn(2, 4),
                                         None, None, None, None, False, 8)
except ValueError as e:
    print("op:", e)
C.set_cpu_isa("baseline")
print("after:", C.cpu_isa(), C.build_info()["cpu_isa_error"])
torch.ops.pyneuro.selective_scan_fwd(u, u, -torch.rand(2, 4), torch.randn(2, 4), torch.randn(2, 4),
                                     None, None, None, None, False, 8)
"""
    lines = _in_subprocess(code, PYNEURO_CPU_ISA="avx9000").splitlines()
    assert lines[0].startswith("PYNEURO_CPU_ISA=avx9000 is refused: unknown CPU ISA 'avx9000'"), lines
    assert lines[1].startswith("cpu_isa: PYNEURO_CPU_ISA=avx9000 is refused"), lines
    assert lines[2].startswith("op: PYNEURO_CPU_ISA=avx9000 is refused"), lines
    assert lines[3] == "after: baseline None", lines


def test_set_cpu_isa_refuses_unknown_and_unrunnable(restore_isa):
    with pytest.raises(ValueError, match="unknown CPU ISA 'neon'; this build has baseline"):
        C.set_cpu_isa("neon")
    missing = [i for i in ALL_ISAS if i not in C.cpu_isas()]
    for isa in missing:  # only on a CPU (or build) without it
        with pytest.raises(ValueError, match=isa):
            C.set_cpu_isa(isa)
    assert C.cpu_isa() in C.cpu_isas()  # a refusal leaves the variant in use unchanged


def _problem(dtype, variable_bc: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    batch, dim, L, N = 2, 6, 37, 20  # N not a multiple of 16 lanes, L not of the chunk

    def rnd(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(dt)

    B = rnd(batch, 3, N, L) if variable_bc else rnd(dim, N, dt=torch.float32)
    Cm = rnd(batch, N, L) if variable_bc else rnd(dim, N, dt=torch.float32)
    return dict(u=rnd(batch, dim, L), delta=rnd(batch, dim, L, scale=0.5),
                A=-torch.rand(dim, N, generator=g) - 0.2, B=B, C=Cm, D=rnd(dim, dt=torch.float32),
                z=rnd(batch, dim, L), delta_bias=rnd(dim, scale=0.1, dt=torch.float32),
                initial_state=rnd(batch, dim, N, dt=torch.float32))


def _run(backend, inputs):
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    out, last = selective_scan(**leaves, delta_softplus=True, return_last_state=True, backend=backend) \
        if backend != "naive" else selective_scan_naive(**leaves, delta_softplus=True, return_last_state=True)
    g = torch.Generator().manual_seed(1)
    (out.float() * torch.randn(out.shape, generator=g)).sum().add((last * 0.5).sum()).backward()
    return [out.float(), last] + [leaves[k].grad.float() for k in inputs]


@pytest.mark.parametrize("variable_bc", [True, False], ids=["variable_bc", "constant_bc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_selective_scan_in_every_variant(dtype, variable_bc, restore_isa):
    inputs = _problem(dtype, variable_bc)
    want = _run("naive", inputs)
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    results = {}
    for isa in C.cpu_isas():
        C.set_cpu_isa(isa)
        assert C.cpu_isa() == isa
        results[isa] = _run("cpu", inputs)
        for name, got, ref in zip(["out", "last_state", *inputs], results[isa], want):
            torch.testing.assert_close(got, ref, **tol, msg=lambda m: f"{isa}, {name}: {m}")
    for isa, res in results.items():  # variants differ only in rounding (vector widths, FMA)
        for name, got, base in zip(["out", "last_state", *inputs], res, results["baseline"]):
            torch.testing.assert_close(got, base, rtol=1e-4 if dtype == torch.float32 else 1e-2, atol=1e-5,
                                       msg=lambda m: f"{isa} vs baseline, {name}: {m}")
