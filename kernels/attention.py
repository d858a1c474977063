"""Fused scaled dot-product attention in Triton (FlashAttention-2's schedule), forward and backward,
implementing the pair of docs/attention_contract.md:

    attention_fwd(q, k, v, causal, scale, dropout_p, rng_state) -> (out, lse)
    attention_bwd(dout, q, k, v, out, lse, causal, scale, dropout_p, rng_state) -> (dq, dk, dv)

q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D), any strides with the last one 1; outputs are fresh and
contiguous; lse (B, Hq, Lq) fp32, natural log. D a multiple of 8 in [8, 128] (HEAD_DIM is a
constexpr; the tile's D is the next power of two >= 16, the rest masked). Query head h reads
key/value head h // (Hq / Hkv) by index arithmetic: k and v are never repeated.

Schedule (S = scale·q kᵀ is never stored; all statistics and accumulators fp32)
--------------------------------------------------------------------------------
forward   one program per (BLOCK_M query rows, b·Hq + h). Loops over key blocks of BLOCK_N,
          keeping the running max m, the running sum l and the output accumulator, rescaled by
          exp2(m_old − m_new) when m grows (online softmax). Scores are taken in base 2: the dot
          is multiplied by scale·log2(e), so every exponential is one exp2. Causal programs stop
          at the diagonal (key blocks past the last row's index are never loaded). The key blocks
          that need no mask (fully inside Lk and, when causal, entirely below the diagonal) run
          a loop without mask arithmetic; the diagonal and the Lk tail run the masked copy.
          Writes out = acc / l / (1 − p) and lse = (m + log2 l)·ln 2.
backward  (1) delta = rowsum(dout ⊙ out) per query row, fp32 (B·Hq·Lq).
          (2) dK/dV: one program per (BLOCK_N keys, b·Hkv + g); k and v stay in registers while it
              loops over the group's Hq/Hkv query heads and, per head, over the query blocks at or
              below the diagonal: P and dP recomputed from q, dout and the saved lse, dv += Pᵀ dout,
              dk += dSᵀ q. The group sum happens in registers: no atomics, no scratch, and a fixed
              order (deterministic).
          (3) dQ: one program per (BLOCK_M query rows, b·Hq + h), looping over key blocks up to the
              diagonal like the forward: dq += dS k.
dropout   the contract's Philox4x32-10 keep mask (tl.philox: the same rounds and key schedule,
          checked bit for bit against naive.dropout_keep_mask by the tests), regenerated from
          (seed, offset) in every kernel, never stored. One Philox call gives the four words of
          keys 4g .. 4g+3, so a tile of BLOCK_M × BLOCK_N takes BLOCK_M × BLOCK_N/4 calls, the
          words interleaved back with tl.join.

Memory traffic (elements; X = the input dtype)
----------------------------------------------
forward   q, out once; k, v once per query block: cdiv(Lq, BLOCK_M)·Lk·D each per head (halved
          when causal); lse 1 fp32 per row.
backward  delta: reads dout and out, writes 1 fp32 per row. dK/dV: k, v once; q, dout, lse,
          delta once per key block (halved when causal). dQ: q, dout once; k, v once per query
          block. Nothing of size L² is ever written.

Precision: fp16/bf16 dots take operands in the input dtype (P and dS rounded to it, as FA2),
accumulate in fp32; fp32 dots run in IEEE fp32 (no TF32: its 10-bit mantissa on q kᵀ would put
errors of ~1e-3·|S| into the softmax, far outside the contract's fp32 level).

Block sizes are autotuned per (D, causal, dtype, power-of-two bucket of Lq and Lk, dropout), over
`configs(kernel, dtype, head_dim, arch)`: per architecture, the ones that compile without spills; under
TRITON_INTERPRET=1 one small fixed configuration (INTERPRET_BLOCKS) runs instead.
`scripts/triton_compile.py --ops attention` compiles every configuration for sm_80 and sm_90.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from ._common import MAX_GRID_YZ

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The grids are (blocks of L, B·H): batch × heads within a grid axis's limit. (Heads and batch on
# two axes would lift it, but the index arithmetic then costs the fwd and dq kernels a register they
# do not have at D = 128 / 64 in bf16: spills on sm_80.)
MAX_BATCH_HEADS = MAX_GRID_YZ
LOG2E = 1.4426950408889634
LN2 = tl.constexpr(0.6931471805599453)
# Triton's interpreter (3.9) returns garbage from tl.dot on bf16 operands (see kernels/rnn.py):
# under it the bf16 operands are widened to fp32 first (the same products, exact in fp32).
_WIDEN_BF16_DOT = tl.constexpr(INTERPRET)


# ----------------------------------------------------------------------------------------------
# Device helpers
# ----------------------------------------------------------------------------------------------
# Integer arguments that are plain values (the dropout's Philox seed, offset and threshold; the
# autotuner's length buckets), never part of an address: Triton would otherwise compile a variant
# per class of value (divisible by 16 or not), and a fresh seed per call would recompile and
# retune the kernels now and then.
_VALUE_ARGS = ("seed", "offset", "threshold", "LQ_BUCKET", "LK_BUCKET")


@triton.jit
def _key_block_bounds(start_m, Lk, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(full_end, end) of the key loop of the query block starting at ``start_m``: key blocks
    [0, full_end) need no mask (inside Lk and, when causal, left of every row's diagonal, keys <
    start_m); [full_end, end) are masked (the diagonal and the Lk tail)."""
    if CAUSAL:
        end = tl.minimum(start_m + BLOCK_M, Lk)
        full_end = tl.minimum(start_m, Lk) // BLOCK_N * BLOCK_N
    else:
        end = Lk
        full_end = Lk // BLOCK_N * BLOCK_N
    return full_end, end


@triton.jit
def _dot(a, b):
    """a @ b with fp32 accumulation: IEEE for fp32 operands (both operands in one dtype)."""
    if a.dtype == tl.float32:
        return tl.dot(a, b, input_precision="ieee")
    elif _WIDEN_BF16_DOT and a.dtype == tl.bfloat16:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _load_rows(base, rows, stride_row, cols, n_rows, ROW_MASK: tl.constexpr,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Tile (len(rows), BLOCK_D) of a (L, D) matrix with unit column stride; zeros outside.
    ROW_MASK=False promises rows < n_rows (the unmasked loops); the D mask exists only when D
    is padded (HEAD_DIM < BLOCK_D), so full tiles load without any mask."""
    ptrs = base + rows[:, None] * stride_row + cols[None, :]
    if ROW_MASK:
        if HEAD_DIM < BLOCK_D:
            tile = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (cols[None, :] < HEAD_DIM), other=0.0)
        else:
            tile = tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
    else:
        if HEAD_DIM < BLOCK_D:
            tile = tl.load(ptrs, mask=cols[None, :] < HEAD_DIM, other=0.0)
        else:
            tile = tl.load(ptrs)
    return tile


@triton.jit
def _store_rows(base, rows, stride_row, cols, n_rows, tile, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    ptrs = base + rows[:, None] * stride_row + cols[None, :]
    if HEAD_DIM < BLOCK_D:
        tl.store(ptrs, tile, mask=(rows[:, None] < n_rows) & (cols[None, :] < HEAD_DIM))
    else:
        tl.store(ptrs, tile, mask=rows[:, None] < n_rows)


@triton.jit
def _keep_mask(seed, offset, bh, rows, col0, threshold, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The contract's keep mask (BLOCK_M, BLOCK_N) for query rows `rows` and keys col0 + [0, BLOCK_N)
    of query head bh = b·Hq + h: key j takes word j & 3 of Philox((j >> 2, i, bh, offset), seed).
    col0 is a multiple of 4 (of BLOCK_N), so the block's keys are BLOCK_N/4 whole Philox calls."""
    groups = (col0 // 4 + tl.arange(0, BLOCK_N // 4)).to(tl.uint32)
    c0 = tl.broadcast_to(groups[None, :], (BLOCK_M, BLOCK_N // 4))
    c1 = tl.broadcast_to(rows.to(tl.uint32)[:, None], (BLOCK_M, BLOCK_N // 4))
    c2 = tl.full((BLOCK_M, BLOCK_N // 4), bh, tl.uint32)
    c3 = tl.full((BLOCK_M, BLOCK_N // 4), offset, tl.uint32)
    w0, w1, w2, w3 = tl.philox(seed, c0, c1, c2, c3)
    # join(join(w0, w2), join(w1, w3))[i, g, a, b] = w_(2a + b): flattened, key 4g + 2a + b.
    words = tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), (BLOCK_M, BLOCK_N))
    return words >= tl.to_tensor(threshold).to(tl.uint32)


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------
@triton.jit
def _fwd_block(acc, m_i, l_i, q, k_base, v_base, s_kl, s_vl, rows, cols_d, start_n, Lk, qk_scale,
               seed, offset, bh, threshold,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
               HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """One key block of the online softmax: (acc, m, l) updated, scores in base 2."""
    keys = start_n + tl.arange(0, BLOCK_N)
    k = _load_rows(k_base, keys, s_kl, cols_d, Lk, MASKED, HEAD_DIM, BLOCK_D)
    v = _load_rows(v_base, keys, s_vl, cols_d, Lk, MASKED, HEAD_DIM, BLOCK_D)
    s = _dot(q, tl.trans(k)) * qk_scale
    if MASKED:
        visible = keys[None, :] < Lk
        if CAUSAL:
            visible = visible & (keys[None, :] <= rows[:, None])
        s = tl.where(visible, s, float("-inf"))
    # Every row sees key 0 in the first block processed, so m_new is finite from then on.
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if DROPOUT:
        p = tl.where(_keep_mask(seed, offset, bh, rows, start_n, threshold, BLOCK_M, BLOCK_N), p, 0.0)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v)
    return acc, m_new, l_i


@triton.jit(do_not_specialize=_VALUE_ARGS)
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr,
    s_qb, s_qh, s_ql, s_kb, s_kh, s_kl, s_vb, s_vh, s_vl,
    Hq, GROUP, Lq, Lk, qk_scale, keep_scale, seed, offset, threshold, LQ_BUCKET, LK_BUCKET,
    CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """grid (cdiv(Lq, BLOCK_M), B·Hq). q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D) strided; out (B, Hq,
    Lq, D) and lse (B, Hq, Lq) contiguous. qk_scale = scale·log2(e); keep_scale = 1/(1 − p).
    LQ_BUCKET/LK_BUCKET are unused here: the autotuner's key (power-of-two buckets of Lq, Lk)."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    kvh = h // GROUP
    rows = start_m + tl.arange(0, BLOCK_M)
    cols_d = tl.arange(0, BLOCK_D)
    q_base = q_ptr + b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh
    k_base = k_ptr + b.to(tl.int64) * s_kb + kvh.to(tl.int64) * s_kh
    v_base = v_ptr + b.to(tl.int64) * s_vb + kvh.to(tl.int64) * s_vh
    q = _load_rows(q_base, rows, s_ql, cols_d, Lq, True, HEAD_DIM, BLOCK_D)

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    full_end, end = _key_block_bounds(start_m, Lk, CAUSAL, BLOCK_M, BLOCK_N)
    for start_n in range(0, full_end, BLOCK_N):
        acc, m_i, l_i = _fwd_block(acc, m_i, l_i, q, k_base, v_base, s_kl, s_vl, rows, cols_d, start_n, Lk,
                                   qk_scale, seed, offset, bh, threshold, False, CAUSAL, DROPOUT,
                                   HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D)
    for start_n in range(full_end, end, BLOCK_N):
        acc, m_i, l_i = _fwd_block(acc, m_i, l_i, q, k_base, v_base, s_kl, s_vl, rows, cols_d, start_n, Lk,
                                   qk_scale, seed, offset, bh, threshold, True, CAUSAL, DROPOUT,
                                   HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D)

    inv_l = 1.0 / l_i
    if DROPOUT:
        inv_l = inv_l * keep_scale
    out = acc * inv_l[:, None]
    _store_rows(out_ptr + bh.to(tl.int64) * Lq * HEAD_DIM, rows, HEAD_DIM, cols_d, Lq,
                out.to(out_ptr.dtype.element_ty), HEAD_DIM, BLOCK_D)
    lse = (m_i + tl.log2(l_i)) * LN2
    tl.store(lse_ptr + bh.to(tl.int64) * Lq + rows, lse, mask=rows < Lq)


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------
@triton.jit
def _bwd_delta_kernel(dout_ptr, out_ptr, delta_ptr, s_db, s_dh, s_dl, Hq, Lq,
                      HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """grid (cdiv(Lq, BLOCK_M), B·Hq). delta (B·Hq, Lq) fp32 = Σ_d dout ⊙ out; dout strided, out
    contiguous. Reads dout and out once."""
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols_d = tl.arange(0, BLOCK_D)
    do = _load_rows(dout_ptr + b.to(tl.int64) * s_db + h.to(tl.int64) * s_dh, rows, s_dl, cols_d, Lq, True,
                    HEAD_DIM, BLOCK_D)
    o = _load_rows(out_ptr + bh.to(tl.int64) * Lq * HEAD_DIM, rows, HEAD_DIM, cols_d, Lq, True, HEAD_DIM, BLOCK_D)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    tl.store(delta_ptr + bh.to(tl.int64) * Lq + rows, delta, mask=rows < Lq)


@triton.jit
def _dkdv_block(dk, dv, k, v, q_base, do_base, lse_base, delta_base, s_ql, s_dl, keys, start_n, cols_d, start_m, Lq,
                qk_scale, keep_scale, seed, offset, bh, threshold,
                MASKED: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """One query block against the program's keys, everything transposed (keys on rows):
    Pᵀ = exp2(k qᵀ·scale·log2 e − lse·log2 e); dv += (Pᵀ ⊙ Mᵀ/(1−p)) dout; dPᵀ = v doutᵀ ⊙ Mᵀ/(1−p);
    dSᵀ = Pᵀ ⊙ (dPᵀ − delta); dk += dSᵀ q (scaled by `scale` once, at the end).
    Padded query rows read lse = +inf (P = 0) and delta = 0, so they add nothing; keys past Lk are
    zero rows of k and v whose dk/dv rows are never stored, so they need no mask."""
    rows = start_m + tl.arange(0, BLOCK_M)
    q = _load_rows(q_base, rows, s_ql, cols_d, Lq, MASKED, HEAD_DIM, BLOCK_D)
    do = _load_rows(do_base, rows, s_dl, cols_d, Lq, MASKED, HEAD_DIM, BLOCK_D)
    if MASKED:
        lse2 = tl.load(lse_base + rows, mask=rows < Lq, other=float("inf")) * 1.4426950408889634
        delta = tl.load(delta_base + rows, mask=rows < Lq, other=0.0)
    else:
        lse2 = tl.load(lse_base + rows) * 1.4426950408889634
        delta = tl.load(delta_base + rows)
    p_t = tl.exp2(_dot(k, tl.trans(q)) * qk_scale - lse2[None, :])
    if MASKED and CAUSAL:
        p_t = tl.where(keys[:, None] <= rows[None, :], p_t, 0.0)
    dp_t = _dot(v, tl.trans(do))
    if DROPOUT:
        keep_t = tl.trans(_keep_mask(seed, offset, bh, rows, start_n, threshold, BLOCK_M, BLOCK_N))
        dv += _dot(tl.where(keep_t, p_t * keep_scale, 0.0).to(do.dtype), do)
        dp_t = tl.where(keep_t, dp_t * keep_scale, 0.0)
    else:
        dv += _dot(p_t.to(do.dtype), do)
    ds_t = p_t * (dp_t - delta[None, :])
    dk += _dot(ds_t.to(q.dtype), q)
    return dk, dv


@triton.jit(do_not_specialize=_VALUE_ARGS)
def _attn_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    s_qb, s_qh, s_ql, s_kb, s_kh, s_kl, s_vb, s_vh, s_vl, s_db, s_dh, s_dl,
    Hq, GROUP, Lq, Lk, scale, qk_scale, keep_scale, seed, offset, threshold, LQ_BUCKET, LK_BUCKET,
    CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """grid (cdiv(Lk, BLOCK_N), B·Hkv). dk, dv (B, Hkv, Lk, D) contiguous, written once: summed in
    registers over the GROUP query heads of this kv head (in head order) and their query blocks.
    lse, delta (B·Hq, Lq) fp32."""
    start_n = tl.program_id(0) * BLOCK_N
    bkv = tl.program_id(1)
    Hkv = Hq // GROUP
    b = bkv // Hkv
    kvh = bkv % Hkv
    keys = start_n + tl.arange(0, BLOCK_N)
    cols_d = tl.arange(0, BLOCK_D)
    k = _load_rows(k_ptr + b.to(tl.int64) * s_kb + kvh.to(tl.int64) * s_kh, keys, s_kl, cols_d, Lk, True,
                   HEAD_DIM, BLOCK_D)
    v = _load_rows(v_ptr + b.to(tl.int64) * s_vb + kvh.to(tl.int64) * s_vh, keys, s_vl, cols_d, Lk, True,
                   HEAD_DIM, BLOCK_D)
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    # Query blocks: causal ones start at the block holding query start_n (earlier rows see none
    # of these keys); [first, diag_end) straddle the diagonal (masked), [diag_end, full_end) are
    # full and below it (no mask), the rest is the Lq tail (row mask only).
    if CAUSAL:
        first = start_n // BLOCK_M * BLOCK_M
        diag_end = tl.minimum(tl.cdiv(start_n + BLOCK_N, BLOCK_M) * BLOCK_M, tl.cdiv(Lq, BLOCK_M) * BLOCK_M)
    else:
        first = 0
        diag_end = 0
    full_end = Lq // BLOCK_M * BLOCK_M
    tail_start = tl.maximum(diag_end, full_end)
    for g in range(0, GROUP):
        h = kvh * GROUP + g
        bh = b * Hq + h
        q_base = q_ptr + b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh
        do_base = do_ptr + b.to(tl.int64) * s_db + h.to(tl.int64) * s_dh
        lse_base = lse_ptr + bh.to(tl.int64) * Lq
        delta_base = delta_ptr + bh.to(tl.int64) * Lq
        for start_m in range(first, diag_end, BLOCK_M):
            dk, dv = _dkdv_block(dk, dv, k, v, q_base, do_base, lse_base, delta_base, s_ql, s_dl, keys, start_n, cols_d,
                                 start_m, Lq, qk_scale, keep_scale, seed, offset, bh, threshold,
                                 True, CAUSAL, DROPOUT, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D)
        for start_m in range(diag_end, full_end, BLOCK_M):
            dk, dv = _dkdv_block(dk, dv, k, v, q_base, do_base, lse_base, delta_base, s_ql, s_dl, keys, start_n, cols_d,
                                 start_m, Lq, qk_scale, keep_scale, seed, offset, bh, threshold,
                                 False, CAUSAL, DROPOUT, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D)
        for start_m in range(tail_start, Lq, BLOCK_M):
            dk, dv = _dkdv_block(dk, dv, k, v, q_base, do_base, lse_base, delta_base, s_ql, s_dl, keys, start_n, cols_d,
                                 start_m, Lq, qk_scale, keep_scale, seed, offset, bh, threshold,
                                 True, False, DROPOUT, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D)
    out_base = bkv.to(tl.int64) * Lk * HEAD_DIM
    _store_rows(dk_ptr + out_base, keys, HEAD_DIM, cols_d, Lk, (dk * scale).to(dk_ptr.dtype.element_ty),
                HEAD_DIM, BLOCK_D)
    _store_rows(dv_ptr + out_base, keys, HEAD_DIM, cols_d, Lk, dv.to(dv_ptr.dtype.element_ty), HEAD_DIM, BLOCK_D)


@triton.jit
def _dq_block(dq, q, do, lse2, delta, k_base, v_base, s_kl, s_vl, rows, cols_d, start_n, Lk,
              qk_scale, keep_scale, seed, offset, bh, threshold,
              MASKED: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """One key block: P = exp2(q kᵀ·scale·log2 e − lse·log2 e), dP = dout vᵀ ⊙ M/(1−p),
    dq += (P ⊙ (dP − delta)) k (scaled once at the end). Keys past Lk are masked in the exponent
    of the tail block (P = 0): with a very negative lse their zero rows of k would give exp2 = inf."""
    keys = start_n + tl.arange(0, BLOCK_N)
    k = _load_rows(k_base, keys, s_kl, cols_d, Lk, MASKED, HEAD_DIM, BLOCK_D)
    v = _load_rows(v_base, keys, s_vl, cols_d, Lk, MASKED, HEAD_DIM, BLOCK_D)
    x = _dot(q, tl.trans(k)) * qk_scale - lse2[:, None]
    if MASKED:
        visible = keys[None, :] < Lk
        if CAUSAL:
            visible = visible & (keys[None, :] <= rows[:, None])
        x = tl.where(visible, x, float("-inf"))
    p = tl.exp2(x)
    dp = _dot(do, tl.trans(v))
    if DROPOUT:
        dp = tl.where(_keep_mask(seed, offset, bh, rows, start_n, threshold, BLOCK_M, BLOCK_N), dp * keep_scale, 0.0)
    ds = p * (dp - delta[:, None])
    return dq + _dot(ds.to(k.dtype), k)


@triton.jit(do_not_specialize=_VALUE_ARGS)
def _attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    s_qb, s_qh, s_ql, s_kb, s_kh, s_kl, s_vb, s_vh, s_vl, s_db, s_dh, s_dl,
    Hq, GROUP, Lq, Lk, scale, qk_scale, keep_scale, seed, offset, threshold, LQ_BUCKET, LK_BUCKET,
    CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """grid (cdiv(Lq, BLOCK_M), B·Hq). dq (B, Hq, Lq, D) contiguous, written once; the loop over
    key blocks is split like the forward's (unmasked interior, masked diagonal and Lk tail)."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    kvh = h // GROUP
    rows = start_m + tl.arange(0, BLOCK_M)
    cols_d = tl.arange(0, BLOCK_D)
    q = _load_rows(q_ptr + b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh, rows, s_ql, cols_d, Lq, True,
                   HEAD_DIM, BLOCK_D)
    do = _load_rows(do_ptr + b.to(tl.int64) * s_db + h.to(tl.int64) * s_dh, rows, s_dl, cols_d, Lq, True,
                    HEAD_DIM, BLOCK_D)
    lse2 = tl.load(lse_ptr + bh.to(tl.int64) * Lq + rows, mask=rows < Lq, other=float("inf")) * 1.4426950408889634
    delta = tl.load(delta_ptr + bh.to(tl.int64) * Lq + rows, mask=rows < Lq, other=0.0)
    k_base = k_ptr + b.to(tl.int64) * s_kb + kvh.to(tl.int64) * s_kh
    v_base = v_ptr + b.to(tl.int64) * s_vb + kvh.to(tl.int64) * s_vh
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    full_end, end = _key_block_bounds(start_m, Lk, CAUSAL, BLOCK_M, BLOCK_N)
    for start_n in range(0, full_end, BLOCK_N):
        dq = _dq_block(dq, q, do, lse2, delta, k_base, v_base, s_kl, s_vl, rows, cols_d, start_n, Lk, qk_scale,
                       keep_scale, seed, offset, bh, threshold, False, CAUSAL, DROPOUT,
                       HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D)
    for start_n in range(full_end, end, BLOCK_N):
        dq = _dq_block(dq, q, do, lse2, delta, k_base, v_base, s_kl, s_vl, rows, cols_d, start_n, Lk, qk_scale,
                       keep_scale, seed, offset, bh, threshold, True, CAUSAL, DROPOUT,
                       HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D)
    _store_rows(dq_ptr + bh.to(tl.int64) * Lq * HEAD_DIM, rows, HEAD_DIM, cols_d, Lq,
                (dq * scale).to(dq_ptr.dtype.element_ty), HEAD_DIM, BLOCK_D)


# ----------------------------------------------------------------------------------------------
# Configurations
# ----------------------------------------------------------------------------------------------
# (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel, element size (2: fp16/bf16, 4: fp32),
# architecture (80: sm_80 .. sm_89, 90: sm_90 and later) and D bucket (BLOCK_D <= 64, or 128).
# 16-bit: FA2's tiles (forward 128 queries x 64-128 keys on 4-8 warps, 3 stages; dQ alike; dK/dV
# 32-64 queries against 32-64 keys), kept only where `scripts/triton_compile.py --ops attention`
# compiles them without register spills for that architecture: the 16-bit gate. Measured with
# Triton 3.9 (bf16, D = 128 unless said) and dropped for spilling: forward 128x64 w4 (both;
# 628-2072 B), 128x128 w8 and 128x64 w8 on sm_80 (232-1208 B); dQ 128x64 w8 on sm_80 (156 B);
# dK/dV on sm_90 at every BLOCK_N = 64 tiling tried (116-456 B: the dk and dv accumulators plus k
# and v stay live through four dots) and 32x32 w4 (4 B), so sm_90 runs it on 32x32 w8 or 16x32;
# dK/dV on sm_80 at D = 64, causal: 32x32 w4 s3, 32x64 w4, 64x64 w8 (8-44 B).
# With dropout (the Philox words and the mask add registers) several kept tiles spill a little
# at D = 128 (16-84 B; on sm_80 every dQ tile); the compile check reports those without failing.
# fp32: IEEE dots lower to FMA loops whose operands hold a thread's whole K slice in registers;
# small tiles, and spills at D = 128 are reported, not gated (fp32 is the accuracy path).
_CONFIGS = {
    "fwd": {
        2: {80: {False: [(64, 64, 4, 3), (128, 64, 8, 3), (128, 32, 4, 3)],
                 True: [(64, 64, 4, 3), (64, 32, 4, 3)]},
            90: {False: [(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3)],
                 True: [(128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 8, 3)]}},
        4: {False: [(32, 32, 4, 2), (32, 16, 4, 2)], True: [(16, 32, 4, 1), (32, 16, 4, 2)]},
    },
    "dq": {
        2: {80: {False: [(128, 32, 8, 3), (64, 64, 4, 3), (128, 32, 4, 3)],
                 True: [(128, 32, 8, 3), (64, 64, 4, 3)]},
            90: {False: [(128, 32, 8, 3), (128, 64, 8, 3), (128, 32, 4, 3)],
                 True: [(128, 32, 8, 3), (128, 64, 8, 3)]}},
        4: {False: [(32, 32, 4, 2), (32, 16, 4, 2)], True: [(32, 16, 4, 2), (16, 32, 4, 2)]},
    },
    "dkdv": {
        2: {80: {False: [(32, 64, 8, 3), (32, 32, 8, 3), (32, 32, 4, 2)],
                 True: [(64, 64, 8, 3), (32, 32, 4, 3)]},
            90: {False: [(32, 32, 4, 3), (32, 64, 4, 3), (64, 64, 8, 3)],
                 True: [(32, 32, 8, 3), (16, 32, 4, 3)]}},
        4: {False: [(16, 32, 4, 2), (32, 32, 4, 2)], True: [(16, 32, 4, 2)]},
    },
}
ARCHS = (80, 90)
# Rows per program of the delta kernel (4 warps; 64 rows of fp16 at D = 128 spilled 20-40 B).
DELTA_ROWS = 32
# Under the interpreter: one small configuration per kernel (BLOCK_M != BLOCK_N, so the tests
# cover diagonals that straddle blocks); tests may replace the entries.
INTERPRET_BLOCKS = {"fwd": (32, 16), "dkdv": (16, 32), "dq": (32, 16)}


def block_d(head_dim: int) -> int:
    """The tile's D: the next power of two, at least 16 (tl.dot's minimum)."""
    return max(16, 1 << (head_dim - 1).bit_length())


def configs(kernel: str, dtype: torch.dtype, head_dim: int, arch: int) -> list[tuple[int, int, int, int]]:
    """The (BLOCK_M, BLOCK_N, num_warps, num_stages) the autotuner tries for this kernel, dtype, D
    and architecture (compute capability x 10; sm_80 .. sm_89 share 80's list, later ones 90's)."""
    wide = block_d(head_dim) > 64
    if dtype == torch.float32:
        return list(_CONFIGS[kernel][4][wide])
    return list(_CONFIGS[kernel][2][90 if arch >= 90 else 80][wide])


def _prune(kernel):
    def prune(configs_, named_args, **kwargs):
        q = named_args["q_ptr"]
        major, minor = torch.cuda.get_device_capability(q.device)
        allowed = set(configs(kernel, q.dtype, kwargs["HEAD_DIM"], 10 * major + minor))
        kept = [c for c in configs_ if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in allowed]
        return kept or configs_[:1]
    return prune


def _tuned(kernel, fn):
    """fn under triton.autotune over every listed configuration (pruned per dtype and D), keyed on
    D, causal, dropout, the power-of-two buckets of the lengths and (implicitly) the dtypes."""
    listed = sorted({c for dtype in DTYPES for d in (64, 128) for arch in ARCHS
                     for c in configs(kernel, dtype, d, arch)})
    return triton.autotune(
        configs=[triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in listed],
        key=["HEAD_DIM", "CAUSAL", "DROPOUT", "LQ_BUCKET", "LK_BUCKET"],
        prune_configs_by={"early_config_prune": _prune(kernel)},
    )(fn)


_fwd_tuned = None if INTERPRET else _tuned("fwd", _attn_fwd_kernel)
_dkdv_tuned = None if INTERPRET else _tuned("dkdv", _attn_bwd_dkdv_kernel)
_dq_tuned = None if INTERPRET else _tuned("dq", _attn_bwd_dq_kernel)


def _launch(kernel, fn, tuned, grid, args, consts):
    """Launch through the autotuner on a GPU; with the fixed INTERPRET_BLOCKS under the interpreter.
    grid(BLOCK_M, BLOCK_N) -> the launch grid."""
    if INTERPRET:
        bm, bn = INTERPRET_BLOCKS[kernel]
        fn[grid(bm, bn)](*args, BLOCK_M=bm, BLOCK_N=bn, **consts, num_warps=4)
    else:
        tuned[lambda meta: grid(meta["BLOCK_M"], meta["BLOCK_N"])](*args, **consts)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
def _bucket(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _check(q, k, v):
    B, Hq, Lq, D = q.shape
    if k.shape[0] != B or k.shape[3] != D or v.shape != k.shape or Hq % k.shape[1]:
        raise ValueError(f"attention (triton): shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if D % 8 or not 8 <= D <= 128:
        raise ValueError(f"attention (triton): head dim {D} is not a multiple of 8 in [8, 128]")
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"attention (triton): dtypes {q.dtype}, {k.dtype}, {v.dtype}")
    if B * Hq > MAX_BATCH_HEADS:
        raise ValueError(f"attention (triton): batch × heads = {B} × {Hq} = {B * Hq} exceeds {MAX_BATCH_HEADS} "
                         "(one grid axis)")
    if not row_offsets_fit(max(Lq, k.shape[2]), D):
        raise ValueError(f"attention (triton): a head of {max(Lq, k.shape[2])} rows × {D} exceeds the kernels' "
                         f"int32 row offsets ({MAX_ROW_OFFSET + 1} elements per head)")


# The kernels form a row's offset within its (batch, head) as rows * stride_row in int32 (only the
# (batch, head) base is int64: widening the rows costs registers in kernels at 254-255). Rows run to
# the last block's end, at most 256 past the length.
MAX_ROW_OFFSET = 2**31 - 1


def row_offsets_fit(rows: int, row_stride: int) -> bool:
    """Whether the offsets of ``rows`` rows (and the last block's masked rows past them, at most
    256) at ``row_stride`` stay within int32."""
    return (rows + 256) * row_stride <= MAX_ROW_OFFSET


def _last_unit(t):
    """Any strides are fine but the last one, and a row stride whose offsets fit in int32: a copy
    only when the last stride is not 1, or when the sequence's row offsets would overflow (e.g. q of
    a packed qkv projection, row stride 3 H D, from L ~ 175 K at H D = 4096; contiguous, the row
    stride is D)."""
    if (t.stride(-1) == 1 or t.shape[-1] == 1) and row_offsets_fit(t.shape[2], t.stride(2)):
        return t
    return t.contiguous()


def _dropout_args(dropout_p, rng_state):
    """(DROPOUT, seed, offset, threshold, keep_scale) as the kernels take them; rng_state is read on
    the host. The seed is passed as its signed 64-bit value; tl.philox takes its bits as unsigned."""
    if not dropout_p > 0:
        return False, 0, 0, 0, 1.0
    if rng_state is None:
        raise ValueError("attention (triton): dropout_p > 0 needs rng_state = [seed, offset]")
    seed, offset = (int(x) for x in rng_state.tolist())
    threshold = int(math.floor(float(dropout_p) * 4294967296.0))
    return True, seed, offset & 0xFFFFFFFF, threshold, 1.0 / (1.0 - dropout_p)


def _strides(t):
    return t.stride(0), t.stride(1), t.stride(2)


def attention_fwd(q, k, v, causal, scale, dropout_p, rng_state):
    """(out (B, Hq, Lq, D) as q, lse (B, Hq, Lq) fp32), both fresh and contiguous."""
    _check(q, k, v)
    q, k, v = _last_unit(q), _last_unit(k), _last_unit(v)
    B, Hq, Lq, D = q.shape
    Lk = k.shape[2]
    dropout, seed, offset, threshold, keep_scale = _dropout_args(dropout_p, rng_state)
    out = torch.empty(B, Hq, Lq, D, device=q.device, dtype=q.dtype)
    lse = torch.empty(B, Hq, Lq, device=q.device, dtype=torch.float32)
    args = (q, k, v, out, lse, *_strides(q), *_strides(k), *_strides(v),
            Hq, Hq // k.shape[1], Lq, Lk, float(scale) * LOG2E, keep_scale, seed, offset, threshold,
            _bucket(Lq), _bucket(Lk))
    consts = dict(CAUSAL=bool(causal), DROPOUT=dropout, HEAD_DIM=D, BLOCK_D=block_d(D))
    _launch("fwd", _attn_fwd_kernel, _fwd_tuned, lambda bm, bn: (triton.cdiv(Lq, bm), B * Hq), args, consts)
    return out, lse


def attention_bwd(dout, q, k, v, out, lse, causal, scale, dropout_p, rng_state):
    """(dq, dk, dv) in the shapes and dtype of q, k, v, fresh and contiguous."""
    _check(q, k, v)
    q, k, v, dout = _last_unit(q), _last_unit(k), _last_unit(v), _last_unit(dout)
    out, lse = out.contiguous(), lse.float().contiguous()
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    dropout, seed, offset, threshold, keep_scale = _dropout_args(dropout_p, rng_state)
    bd = block_d(D)
    delta = torch.empty(B, Hq, Lq, device=q.device, dtype=torch.float32)
    _bwd_delta_kernel[(triton.cdiv(Lq, DELTA_ROWS), B * Hq)](dout, out, delta, *_strides(dout), Hq, Lq,
                                                             HEAD_DIM=D, BLOCK_M=DELTA_ROWS, BLOCK_D=bd)
    dq = torch.empty(B, Hq, Lq, D, device=q.device, dtype=q.dtype)
    dk = torch.empty(B, Hkv, Lk, D, device=q.device, dtype=q.dtype)
    dv = torch.empty(B, Hkv, Lk, D, device=q.device, dtype=q.dtype)
    common = (*_strides(q), *_strides(k), *_strides(v), *_strides(dout),
              Hq, Hq // Hkv, Lq, Lk, float(scale), float(scale) * LOG2E, keep_scale, seed, offset, threshold,
              _bucket(Lq), _bucket(Lk))
    consts = dict(CAUSAL=bool(causal), DROPOUT=dropout, HEAD_DIM=D, BLOCK_D=bd)
    _launch("dkdv", _attn_bwd_dkdv_kernel, _dkdv_tuned, lambda bm, bn: (triton.cdiv(Lk, bn), B * Hkv),
            (q, k, v, dout, lse, delta, dk, dv, *common), consts)
    _launch("dq", _attn_bwd_dq_kernel, _dq_tuned, lambda bm, bn: (triton.cdiv(Lq, bm), B * Hq),
            (q, k, v, dout, lse, delta, dq, *common), consts)
    return dq, dk, dv
