"""Scaled dot-product attention, written out: the ground truth every attention backend matches.

Layout is SDPA's: q (B, Hq, Lq, D), k and v (B, Hkv, Lk, D) with Hq a multiple of Hkv (grouped
heads); out (B, Hq, Lq, D). Computed in fp32 (fp64 stays fp64) and returned in the input dtype.

Also here, for the compiled backends (docs/attention_contract.md):

* ``dropout_keep_mask``: the Philox4x32-10 keep mask every backend regenerates from
  ``rng_state = [seed, offset]``, so a kernel's dropout can be checked against this file;
* ``attention_fwd_contract`` / ``attention_bwd_contract``: the forward/backward pair the kernels
  implement (out and lse; dq, dk, dv from the saved out and lse), written step by step in fp64.
"""
from __future__ import annotations

import math

import numpy as np
import torch

# --------------------------------------------------------------------------------- Philox4x32-10
_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)  # round multipliers
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)  # key increments (Weyl sequence)
_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


def philox4x32(seed: int, c0, c1, c2, c3, rounds: int = 10):
    """Random123's Philox4x32 on broadcastable uint32-valued counter arrays; four uint32 words.

    numpy's uint64 keeps the 32×32-bit products exact (they are below 2⁶⁴)."""
    c = [np.asarray(x, dtype=np.uint64) & _LOW32 for x in np.broadcast_arrays(c0, c1, c2, c3)]
    seed &= (1 << 64) - 1
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    for r in range(rounds):
        p0, p1 = _M0 * c[0], _M1 * c[2]
        c = [(p1 >> _SHIFT32) ^ c[1] ^ k0, p1 & _LOW32, (p0 >> _SHIFT32) ^ c[3] ^ k1, p0 & _LOW32]
        k0, k1 = (k0 + _W0) & _LOW32, (k1 + _W1) & _LOW32
    return c


def dropout_threshold(p: float) -> int:
    """A 32-bit word is kept when it is >= this: floor(p · 2³²), computed in fp64 (p in [0, 1))."""
    return int(math.floor(float(p) * 4294967296.0))


def dropout_keep_mask(rng_state, batch: int, heads: int, lq: int, lk: int, p: float, device=None) -> torch.Tensor:
    """The keep mask (B, Hq, Lq, Lk) of docs/attention_contract.md: element (b, h, i, j) takes word
    j & 3 of Philox((j >> 2, i, b·Hq + h, offset), seed) and is kept when it is >= the threshold."""
    seed, offset = (int(x) for x in rng_state.tolist())
    j = np.arange(lk, dtype=np.uint64)
    i = np.arange(lq, dtype=np.uint64)[:, None]
    bh = np.arange(batch * heads, dtype=np.uint64)[:, None, None]
    words = philox4x32(seed, j >> np.uint64(2), i, bh, np.uint64(offset & 0xFFFFFFFF))
    lane = (j & np.uint64(3)).astype(np.int64)
    word = np.choose(np.broadcast_to(lane, words[0].shape), words)
    keep = word >= np.uint64(dropout_threshold(p))
    return torch.from_numpy(np.ascontiguousarray(keep)).view(batch, heads, lq, lk).to(device)


# ----------------------------------------------------------------------------------- attention
def _expand_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """k or v (B, Hkv, L, D) -> (B, Hq, L, D): query head h reads head h // (Hq / Hkv)."""
    return t if t.shape[1] == heads else t.repeat_interleave(heads // t.shape[1], dim=1)


def _scores(q, k, causal: bool, scale: float, compute: torch.dtype) -> torch.Tensor:
    scores = (q.to(compute) @ _expand_heads(k, q.shape[1]).to(compute).transpose(-2, -1)) * scale
    if causal:
        # Top-left aligned, as torch SDPA: query i sees keys 0..i, so no row is fully masked.
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    return scores


def attention_naive(q, k, v, causal: bool = False, softmax_scale: float | None = None,
                    dropout_p: float = 0.0, rng_state: torch.Tensor | None = None, return_lse: bool = False):
    """softmax(scale · q kᵀ [causal]) with the contract's dropout mask, times v. Differentiable by
    autograd; ``return_lse`` also gives the fp32 (fp64) log-sum-exp (B, Hq, Lq), detached."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = _scores(q, k, causal, scale, compute)
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        keep = dropout_keep_mask(rng_state, q.shape[0], q.shape[1], q.shape[2], k.shape[2], dropout_p, q.device)
        probs = probs * keep.to(compute) / (1.0 - dropout_p)
    out = (probs @ _expand_heads(v, q.shape[1]).to(compute)).to(q.dtype)
    if return_lse:
        return out, torch.logsumexp(scores, dim=-1).detach()
    return out


def attention_fwd_contract(q, k, v, causal: bool, scale: float, dropout_p: float, rng_state):
    """The compiled forward (out, lse), in fp64."""
    scores = _scores(q, k, causal, scale, torch.float64)
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse[..., None])
    if dropout_p > 0:
        keep = dropout_keep_mask(rng_state, q.shape[0], q.shape[1], q.shape[2], k.shape[2], dropout_p, q.device)
        probs = probs * keep.double() / (1.0 - dropout_p)
    return probs @ _expand_heads(v, q.shape[1]).double(), lse


def attention_bwd_contract(dout, q, k, v, out, lse, causal: bool, scale: float, dropout_p: float, rng_state):
    """The compiled backward (dq, dk, dv) from the saved out and lse, step by step in fp64."""
    B, Hq, Lq, _ = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    dout, q, out, lse = dout.double(), q.double(), out.double(), lse.double()
    k_full, v_full = _expand_heads(k, Hq).double(), _expand_heads(v, Hq).double()
    probs = torch.exp(_scores(q, k, causal, scale, torch.float64) - lse[..., None])  # P, from the saved lse
    drop = torch.ones_like(probs)
    if dropout_p > 0:
        drop = dropout_keep_mask(rng_state, B, Hq, Lq, Lk, dropout_p, q.device).double() / (1.0 - dropout_p)
    delta = (dout * out).sum(-1, keepdim=True)                       # (B, Hq, Lq, 1)
    dprobs = (dout @ v_full.transpose(-2, -1)) * drop                # dP
    dscores = probs * (dprobs - delta)                               # dS
    dq = scale * dscores @ k_full
    dk_full = scale * dscores.transpose(-2, -1) @ q
    dv_full = (probs * drop).transpose(-2, -1) @ dout
    group = Hq // Hkv
    # Sum each key/value head's gradient over the query heads of its group.
    dk = dk_full.view(B, Hkv, group, Lk, -1).sum(2)
    dv = dv_full.view(B, Hkv, group, Lk, -1).sum(2)
    return dq, dk, dv
