"""Fuzz pyneuro.ops.attention on every backend the registry reports (see fuzz_support)."""
from __future__ import annotations

import math

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz suite needs hypothesis (`make setup` installs it)")

import torch  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fuzz_support import SEEDS, Call, check_call, fuzz_settings, mutations, tensor_arg  # noqa: E402
from pyneuro.ops import attention  # noqa: E402

FUZZ_OPS = ("attention",)
EXAMPLES = {"triton": 80, "default": 2500}
DTYPES = st.sampled_from((torch.float32, torch.float16, torch.bfloat16, torch.float64))
# softmax_scale: None (1/sqrt(head_dim)), a positive float, or a hostile value with its documented error.
SCALES = st.sampled_from((None, None, 0.3, 1.0, 2.5, math.inf, 0.0, -1.0, math.nan, "0.5"))
SCALE_ERRORS = {0.0: ValueError, -1.0: ValueError, "0.5": TypeError}


@st.composite
def attention_calls(draw, backend: str, device: str):
    batch, heads = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    q_len, kv_len, head_dim = draw(st.integers(0, 5)), draw(st.integers(0, 5)), draw(st.integers(0, 4))
    scale = draw(SCALES)
    dtype = draw(DTYPES)
    gen = torch.Generator().manual_seed(draw(SEEDS))
    tensors = {name: tensor_arg(draw, gen, (batch, heads, length, head_dim), dtype, -2, 2)
               for name, length in (("q", q_len), ("k", kv_len), ("v", kv_len))}
    invalid = ValueError if isinstance(scale, float) and math.isnan(scale) else SCALE_ERRORS.get(scale)
    if head_dim == 0:  # documented: head_dim must be at least 1
        invalid = ValueError if invalid in (None, ValueError) else Exception
    sizes = (batch, heads, q_len, kv_len, head_dim)
    return Call(
        "attention", attention, tensors, options={"causal": draw(st.booleans()), "softmax_scale": scale},
        mutations=draw(mutations(tensors, ["q", "k", "v"], device)), invalid=invalid,
        # A backend other than the reference may refuse (documented) anything but fp32 at sizes >= 1.
        refusable=backend != "reference" and (dtype != torch.float32 or 0 in sizes),
        backward=draw(st.integers(0, 3)) == 0, grad_seed=draw(SEEDS))


def test_fuzz_attention(op_name, backend, device, fuzz_calls):
    @fuzz_settings(backend, EXAMPLES)
    @given(call=attention_calls(backend, device))
    def fuzz(call):
        check_call(call, backend, device, fuzz_calls)

    fuzz()

