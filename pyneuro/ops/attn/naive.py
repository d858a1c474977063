"""Scaled dot-product attention, written out: the ground truth every attention backend matches.

Layout is SDPA's: q (B, H, Lq, Dh), k and v (B, H, Lk, Dh); out (B, H, Lq, Dh).
Computed in fp32 (fp64 stays fp64) and returned in the input dtype.
"""
from __future__ import annotations

import math

import torch


def attention_naive(q, k, v, causal: bool = False, softmax_scale: float | None = None):
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = (q.to(compute) @ k.to(compute).transpose(-2, -1)) * scale  # (B, H, Lq, Lk)
    if causal:
        # Top-left aligned, as torch SDPA: query i sees keys 0..i.
        lq, lk = q.shape[-2], k.shape[-2]
        keep = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    # A fully masked row (only possible when Lq > Lk) gives NaN in softmax; SDPA's math path too.
    return (probs @ v.to(compute)).to(q.dtype)
