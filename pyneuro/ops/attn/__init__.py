"""attention(q, k, v, causal=False, softmax_scale=None, backend="auto") in SDPA's layout.

Backends: ``reference`` (naive.py, autograd through PyTorch). The Triton and C++ backends are
added behind this same function.
"""
from __future__ import annotations

import torch

from ... import _backends
from .naive import attention_naive

OP = _backends.reference_only("attention", attention_naive)

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check(q, k, v, softmax_scale):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be 4-D (batch, heads, seq, head_dim), got shape {tuple(t.shape)}")
        if t.dtype not in _FLOATS:
            raise TypeError(f"attention: {name} must be a floating tensor, got {t.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"attention: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[-1] < 1:
        raise ValueError(f"attention: head_dim (the last dimension of q, k, v) must be at least 1, got shape "
                         f"{tuple(q.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"attention: q {tuple(q.shape)} and k {tuple(k.shape)} must agree in batch, heads and head_dim")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if softmax_scale is not None and not softmax_scale > 0:
        raise ValueError(f"attention: softmax_scale must be positive, got {softmax_scale}")


def attention(q, k, v, causal: bool = False, softmax_scale: float | None = None, backend: str = "auto"):
    """softmax(q kᵀ · scale [+ causal mask]) v, with torch SDPA's semantics and layout."""
    _check(q, k, v, softmax_scale)
    return OP(backend, q.device, q, k, v, causal, softmax_scale)


__all__ = ["attention", "attention_naive"]
