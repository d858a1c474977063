"""Fuzz pyneuro.ops.selective_scan on every backend the registry reports (see fuzz_support)."""
from __future__ import annotations

import math

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz suite needs hypothesis (`make setup` installs it)")

import torch  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fuzz_support import SEEDS, SPECIAL_VALUES, Call, check_call, fuzz_settings, mutations, tensor_arg  # noqa: E402
from pyneuro.ops import selective_scan  # noqa: E402

FUZZ_OPS = ("selective_scan",)
# Examples per backend. The Triton interpreter takes ~0.1 s forward and ~0.3 s backward per call,
# so it gets a few hundred calls at most; fast backends get the bulk.
# The reference backend gets half: it is plain PyTorch behind the same validation the cpu calls
# exercise, and it is also called to check every valid cpu result.
EXAMPLES = {"triton": 60, "reference": 1250, "default": 2500}
COMPILED_MAX_N = 256  # the documented limit of the compiled kernels on N
REQUIRED = ["u", "delta", "A", "B", "C"]
DTYPES = st.sampled_from((torch.float32, torch.float16, torch.bfloat16, torch.float64))
WEIGHT_DTYPES_FP64 = st.sampled_from((torch.float32, torch.float64))
B_C_FORMS = st.sampled_from(("constant", "variable", "grouped"))
OPTIONAL = ["D", "z", "delta_bias", "initial_state"]


@st.composite
def scan_calls(draw, backend: str, device: str):
    batch, dim, N = draw(st.integers(0, 3)), draw(st.integers(0, 4)), draw(st.integers(1, 5))
    L = draw(st.integers(0, 9))
    # Across the compiled kernels' chunk boundaries (64, 128) now and then; not on the Triton
    # interpreter (too slow) nor on the reference (no chunks).
    if backend not in ("reference", "triton") and draw(st.integers(0, 19)) == 0:
        L = draw(st.sampled_from((63, 64, 65, 127, 128, 129)))
    if draw(st.integers(0, 49)) == 0:
        N = COMPILED_MAX_N + draw(st.integers(0, 1))  # at and just above the compiled limit
    dtype = draw(DTYPES)
    gen = torch.Generator().manual_seed(draw(SEEDS))

    def tensor(shape, low, high, specials=SPECIAL_VALUES):
        return tensor_arg(draw, gen, shape, dtype, low, high, specials)

    def weight(shape, low, high, specials=SPECIAL_VALUES):  # fp32, or fp32/fp64 next to fp64 inputs
        weight_dtype = draw(WEIGHT_DTYPES_FP64) if dtype == torch.float64 else torch.float32
        return tensor_arg(draw, gen, shape, weight_dtype, low, high, specials)

    softplus = draw(st.booleans())
    delta_low, bias_low, a_high = (-3 if softplus else 0), -1, 0.2
    delta_specials = a_specials = SPECIAL_VALUES
    if backend == "cpu":
        # The cpu kernel's exp saturates at ~1.7e38 where exp(delta*A) overflows to +inf (by
        # design: csrc/cpu/vec_math.h's exp_clamped), so on cpu delta*A stays <= 0: A <= 0 without
        # +inf, the time step delta >= 0 (no negative bias or -inf before a softplus-free step).
        a_high, a_specials = 0.0, (math.nan, -math.inf)
        if not softplus:
            bias_low, delta_specials = 0, (math.nan, math.inf)
    tensors = {
        "u": tensor((batch, dim, L), -2, 2),
        "delta": tensor((batch, dim, L), delta_low, 1, delta_specials),
        "A": weight((dim, N), -2, a_high, a_specials),
    }
    for name in ("B", "C"):
        form = draw(B_C_FORMS)
        if form == "constant":
            tensors[name] = weight((dim, N), -1.5, 1.5)
        elif form == "variable":
            tensors[name] = tensor((batch, N, L), -1.5, 1.5)
        else:
            groups = draw(st.sampled_from(tuple(g for g in range(1, dim + 1) if dim % g == 0) or (1, 2)))
            tensors[name] = tensor((batch, groups, N, L), -1.5, 1.5)
    optional = {"D": lambda: weight((dim,), -1, 1), "z": lambda: tensor((batch, dim, L), -3, 3),
                "delta_bias": lambda: weight((dim,), bias_low, 1, delta_specials), "initial_state": lambda: weight((batch, dim, N), -1, 1)}
    for name, make in optional.items():
        tensors[name] = make() if draw(st.booleans()) else None

    fp64_anywhere = any(t.dtype == torch.float64 for t in tensors.values() if t is not None)
    return Call(
        "selective_scan", selective_scan, tensors,
        options={"delta_softplus": softplus, "return_last_state": draw(st.booleans())},
        mutations=draw(mutations(tensors, REQUIRED, device)),
        # The compiled kernels document fp64 and N above their limit as refusals.
        refusable=backend != "reference" and (fp64_anywhere or N > COMPILED_MAX_N),
        backward=draw(st.integers(0, 3)) == 0, grad_seed=draw(SEEDS),
        rank_flatten=frozenset({"B", "C"}))


def test_fuzz_selective_scan(op_name, backend, device, fuzz_calls):
    @fuzz_settings(backend, EXAMPLES)
    @given(call=scan_calls(backend, device))
    def fuzz(call):
        check_call(call, backend, device, fuzz_calls)

    fuzz()

