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
EXAMPLES = {"triton": 80, "reference": 1250, "default": 2500}  # reference: half, as in test_fuzz_selective_scan
DTYPES = st.sampled_from((torch.float32, torch.float16, torch.bfloat16, torch.float64))
# softmax_scale: None (1/sqrt(head_dim)), a positive float, or a hostile value with its documented error.
SCALES = st.sampled_from((None, None, 0.3, 1.0, 2.5, math.inf, 0.0, -1.0, math.nan, "0.5"))
SCALE_ERRORS = {0.0: ValueError, -1.0: ValueError, math.inf: ValueError, "0.5": TypeError}


# dropout_p: mostly off; a valid rate (the call reseeds torch's generator first, so the backend and
# the reference draw the same mask); or a hostile value with its documented error.
DROPOUTS = st.sampled_from((0.0, 0.0, 0.0, 0.3, 1.0, -0.1))
DROPOUT_ERRORS = {1.0: ValueError, -0.1: ValueError}
# Head dims: the compiled kernels take multiples of 8 up to 128 (documented refusal otherwise).
HEAD_DIMS = st.sampled_from((0, 1, 3, 8, 8, 16, 24))


def _seeded_attention(seed: int):
    def call(**kwargs):
        torch.manual_seed(seed)
        return attention(**kwargs)
    return call


@st.composite
def attention_calls(draw, backend: str, device: str):
    batch, kv_heads, group = draw(st.integers(0, 2)), draw(st.integers(0, 2)), draw(st.integers(1, 3))
    q_heads = kv_heads * group + (1 if draw(st.integers(0, 9)) == 0 else 0)  # sometimes not a multiple
    q_len, kv_len, head_dim = draw(st.integers(0, 5)), draw(st.integers(0, 5)), draw(HEAD_DIMS)
    scale, dropout = draw(SCALES), draw(DROPOUTS)
    dtype = draw(DTYPES)
    gen = torch.Generator().manual_seed(draw(SEEDS))
    tensors = {name: tensor_arg(draw, gen, (batch, heads, length, head_dim), dtype, -2, 2)
               for name, heads, length in (("q", q_heads, q_len), ("k", kv_heads, kv_len), ("v", kv_heads, kv_len))}
    errors = [ValueError if isinstance(scale, float) and math.isnan(scale) else SCALE_ERRORS.get(scale),
              DROPOUT_ERRORS.get(dropout)]
    # documented: head_dim >= 1, at least one key, q's heads a multiple of k's (none: only with none)
    grouped = q_heads == kv_heads == 0 or (kv_heads > 0 and q_heads % kv_heads == 0)
    errors += [ValueError if head_dim == 0 or kv_len == 0 or not grouped else None]
    errors = [e for e in errors if e is not None]
    invalid = None if not errors else errors[0] if len(set(errors)) == 1 else Exception
    compiled_range = head_dim % 8 == 0 and 8 <= head_dim <= 128 and dtype != torch.float64
    return Call(
        "attention", _seeded_attention(draw(SEEDS)), tensors,
        options={"causal": draw(st.booleans()), "softmax_scale": scale, "dropout_p": dropout},
        mutations=draw(mutations(tensors, ["q", "k", "v"], device)), invalid=invalid,
        # A backend other than the reference may refuse (documented) what its kernels do not take.
        refusable=backend != "reference" and not compiled_range,
        # Gradients are compared in fp32/fp64 only: in fp16/bf16 the backward's delta = rowsum(dout ⊙ out)
        # reads the forward's rounded out (docs/attention_contract.md), which moves dq and dk away
        # from the reference's exact gradient by up to D·u·|dout||out| per row; the conformance
        # suite checks 16-bit gradients against the contract oracle given that very out.
        backward=draw(st.integers(0, 3)) == 0 and dtype in (torch.float32, torch.float64), grad_seed=draw(SEEDS))


def test_fuzz_attention(op_name, backend, device, fuzz_calls):
    @fuzz_settings(backend, EXAMPLES)
    @given(call=attention_calls(backend, device))
    def fuzz(call):
        check_call(call, backend, device, fuzz_calls)

    fuzz()

