"""Fused recurrent cells in Triton (LSTM with projection, GRU, RNN tanh/relu, leaky integrator),
forward and backward, implementing the ops of docs/rnn_contract.md on normalised inputs:

    lstm_fwd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) -> (y, h_n, c_n, reserve)
    lstm_bwd(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reserve)
        -> (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr)
    gru_fwd / gru_bwd, rnn_fwd / rnn_bwd (relu flag), leaky_fwd / leaky_bwd: as the contract.

Work split (one layer, one direction, time-major; G gates, R = state width, P = LSTM projection)
-----------------------------------------------------------------------------------------------
forward   xg = x W_ihᵀ + biases for all T: one torch GEMM (T·B, I) x (I, G·H), fp32.
          Then the time loop, in one of two modes (chosen by `persistent()`):
          * persistent: ONE launch for the whole sequence. A program owns BLOCK_B batch rows and
            every hidden unit, loads W_hh (and W_hr) once, keeps the state in registers and runs
            all T steps: per step the recurrent product is G tl.dot's of (BLOCK_B, R) x (R, H)
            against the resident weights, the cell update is fused behind them. Batch rows are
            independent, so programs never synchronise.
          * step: for H too large for the weights to stay on chip. Per step a torch GEMM
            (h_{t-1} W_hhᵀ, cuBLAS) and one fused pointwise cell launch over (B, H) tiles (for a
            projected LSTM a second GEMM, m_t W_hrᵀ, after it).
backward  the reverse time loop in the same two modes writes the pre-activation gradients of all
          steps (T, B, G·H) fp32; then dx, dW_ih, dW_hh and the bias gradients are single GEMMs /
          sums over all T·B rows (dW_hr too: dh_totalᵀ m over all steps).

Both modes run the same kernel source: STEP=True swaps the in-kernel tl.dot for a load of the
torch GEMM's result and tiles H over a second grid axis. All state and accumulation is fp32. With
fp16/bf16 inputs the weights stay in that dtype on chip and the tl.dot operands (state, or
gate gradients in the backward) are rounded to it, with fp32 accumulation (allowed by the
contract); fp32 runs tl.dot in IEEE fp32 (no TF32), the host GEMMs in fp32.

What stays on chip, and what fits (PERSISTENT_MAX_H)
----------------------------------------------------
The resident operand is W_hhᵀ per gate (G·H·R elements, + P·H for W_hr), loaded before the time
loop. Triton (3.9, TTGIR inspected for sm_80 and sm_90) writes it to shared memory once, before
the loop (a hoisted local_alloc), and each step reads it from there into the dot-operand
registers (local_load): the weights cross the memory bus once per program, not once per step.
With BLOCK_B = 16 rows the dots are mma.sync on both architectures (wgmma needs M >= 64), and
fp32 IEEE dots run on the FMA units. The limits are then shared memory per block (163 KB sm_80,
227 KB sm_90: the weights plus the staging of the other dot operand and of layout conversions)
and registers for the dot operands and the per-step tiles (64 K per SM, <= 255 per thread).
`make triton-compile` compiles every persistent specialisation for both architectures and gates
spills and shared memory up to PERSISTENT_MAX_H (the table is in docs/kernels/triton.md); beyond
it the step mode runs (any H).

Traffic (per sequence, persistent): reads xg (T·B·G·H fp32) once, W_hh once per program;
writes y (T·B·R, X) and the reserve (contract table, fp32) once. Backward: reads dy, reserve once
(the previous step's state is the next iteration's load, kept in registers), writes the gate
gradients (T·B·G·H fp32) once. Step mode adds, per step, the (B, R) state round trip and the GEMM.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import outer_mask, range_mask, sigmoid, tanh

CELLS = ("lstm", "gru", "rnn", "leaky")
GATES = {"lstm": 4, "gru": 3, "rnn": 1, "leaky": 1}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# tl.dot needs every dimension >= 16: batch rows, hidden units and the state width are padded to
# at least this (masked loads/stores; padded weights are zero, so padded units stay 0).
MIN_BLOCK = 16
BLOCK_B = 16  # batch rows per persistent program: the smallest tl.dot M, the most programs
# Largest H (and state width R) the persistent kernel runs, per cell and dtype: what compiles for
# both sm_80 and sm_90 without register spills and within shared memory (`make triton-compile`,
# table in docs/kernels/triton.md). The limits that bind:
# * fp32: IEEE dots run on the FMA units with operand slices in registers; H = 128 spills (every
#   cell's forward) or needs more shared memory than sm_80/sm_90 have (LSTM/GRU: 200-385 KB).
# * fp16/bf16 LSTM and GRU at H = 128: the backward stages 4 (3) 128x128 weight tiles plus the
#   transposes through shared memory, 221 KB (188 KB) > sm_80's 163 KB, and the LSTM's spills on
#   sm_90. RNN and leaky (one 128x128 tile) fit at 128.
PERSISTENT_MAX_H = {
    "lstm": {torch.float32: 64, torch.float16: 64, torch.bfloat16: 64},
    "gru": {torch.float32: 64, torch.float16: 64, torch.bfloat16: 64},
    "rnn": {torch.float32: 64, torch.float16: 128, torch.bfloat16: 128},
    "leaky": {torch.float32: 64, torch.float16: 128, torch.bfloat16: 128},
}
# Warps of a persistent program: from a sweep over 4/8/16/32 of every cell, dtype and H up to the
# limits above (sm_80 and sm_90), 8 is spill-free everywhere but at one shape (launch_config).
PERSISTENT_WARPS = 8
# Step mode tile: (STEP_BLOCK_B, STEP_BLOCK_H) elements per program, 4 warps.
STEP_BLOCK_B, STEP_BLOCK_H = 16, 64
# Triton's interpreter (3.9, measured) returns garbage (~1e10) from tl.dot on bf16 operands. Under
# it, the bf16-rounded operands are widened to fp32 first: the same products (exact in fp32), the
# same fp32 accumulation. Read at import, like TRITON_INTERPRET itself.
_WIDEN_BF16_DOT = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"))


# ----------------------------------------------------------------------------------------------
# Device helpers
# ----------------------------------------------------------------------------------------------
@triton.jit
def _mm(a, w):
    """a (M, K) fp32 @ w (K, N) -> fp32: operands in w's dtype, fp32 accumulation; IEEE for fp32."""
    if w.dtype == tl.float32:
        return tl.dot(a, w, input_precision="ieee")
    elif _WIDEN_BF16_DOT and w.dtype == tl.bfloat16:
        return tl.dot(a.to(tl.bfloat16).to(tl.float32), w.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a.to(w.dtype), w)


@triton.jit
def _w_t(w_ptr, row0, cols, cmask, ks, kmask, K):
    """Tile (len(ks), len(cols)) of W_gᵀ: element [k, j] = W[row0 + j, k] for a row-major (·, K) W."""
    return tl.load(w_ptr + (row0 + cols[None, :]) * K + ks[:, None], mask=outer_mask(kmask, cmask), other=0.0)


@triton.jit
def _w(w_ptr, row0, rows, rmask, ks, kmask, K):
    """Tile (len(rows), len(ks)) of W itself: element [j, k] = W[row0 + j, k]."""
    return tl.load(w_ptr + (row0 + rows[:, None]) * K + ks[None, :], mask=outer_mask(rmask, kmask), other=0.0)


@triton.jit
def _ld(ptr, row_off, cols, mask):
    """fp32 (rows, cols) tile from row offsets (rows, 1) and column indices."""
    return tl.load(ptr + row_off + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _prev(res_ptr, init_ptr, t, B, rows, cols, mask, RES, OFF, s_init):
    """The state before step t: the reserve's slot OFF at step t-1, or the initial state at t = 0."""
    tb = ((t - 1) * B + rows).to(tl.int64)[:, None]
    later = tl.full((1, 1), t, tl.int32) > 0  # a tensor: a scalar bool cannot mask
    from_res = _ld(res_ptr + OFF, tb * RES, cols, mask & later)
    from_init = _ld(init_ptr, rows.to(tl.int64)[:, None] * s_init, cols, mask & (~later))
    return from_res + from_init


@triton.jit
def _act(x, RELU: tl.constexpr):
    if RELU:
        return tl.maximum(x, 0.0)
    else:
        return tanh(x)


@triton.jit
def _dact(y, RELU: tl.constexpr):
    """act'(pre) from y = act(pre): 1 - y² (tanh), y > 0 (relu)."""
    if RELU:
        return tl.where(y > 0.0, 1.0, 0.0)
    else:
        return 1.0 - y * y


# ----------------------------------------------------------------------------------------------
# LSTM
# ----------------------------------------------------------------------------------------------
@triton.jit
def _lstm_fwd_kernel(
    xg_ptr, rec_ptr, h0_ptr, c0_ptr, whh_ptr, whr_ptr, y_ptr, res_ptr, m_ptr,
    t0, T, B, H, R, s_h0, s_c0,
    PROJ: tl.constexpr, STEP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Steps t0 .. t0+T-1 for BLOCK_B batch rows.

    grid: (cdiv(B, BLOCK_B), 1) persistent (BLOCK_H >= H, BLOCK_R >= R), (.., cdiv(H, BLOCK_H)) STEP
    xg (T, B, 4H) fp32 = x W_ihᵀ + b_ih + b_hh · rec (B, 4H) fp32 = h_{t-1} W_hhᵀ (STEP only)
    h0 (B, R), c0 (B, H): the state before t0 (row strides s_h0, s_c0; STEP passes reserve slices)
    y (T, B, R) X · reserve (T, B, 5H + R) fp32 [i f g o c h] · m (B, H) fp32: o·tanh(c) (STEP+PROJ,
    where the host does the projection GEMM and writes h)
    """
    pid_b = tl.program_id(0)
    rows, rmask = range_mask(pid_b * BLOCK_B, BLOCK_B, B)
    cols, cmask = range_mask(tl.program_id(1) * BLOCK_H, BLOCK_H, H)
    bh = outer_mask(rmask, cmask)
    G4 = 4 * H
    RES = 5 * H + R
    rows64 = rows.to(tl.int64)[:, None]
    c = _ld(c0_ptr, rows64 * s_c0, cols, bh)
    if PROJ:
        hcols, hmask = range_mask(0, BLOCK_R, R)
    else:
        hcols, hmask = cols, cmask
    bhr = outer_mask(rmask, hmask)
    if not STEP:
        # Resident weights: W_hh gate k transposed (BLOCK_R, BLOCK_H), W_hrᵀ (BLOCK_H, BLOCK_R).
        ks, kmask = range_mask(0, BLOCK_R, R)
        w_i = _w_t(whh_ptr, 0 * H, cols, cmask, ks, kmask, R)
        w_f = _w_t(whh_ptr, 1 * H, cols, cmask, ks, kmask, R)
        w_g = _w_t(whh_ptr, 2 * H, cols, cmask, ks, kmask, R)
        w_o = _w_t(whh_ptr, 3 * H, cols, cmask, ks, kmask, R)
        if PROJ:
            w_r = _w_t(whr_ptr, 0, ks, kmask, cols, cmask, H)
        h = _ld(h0_ptr, rows64 * s_h0, hcols, bhr)

    for t in range(t0, t0 + T):
        tb = (t * B + rows).to(tl.int64)[:, None]
        pi = _ld(xg_ptr, tb * G4, cols, bh)
        pf = _ld(xg_ptr, tb * G4 + H, cols, bh)
        pg = _ld(xg_ptr, tb * G4 + 2 * H, cols, bh)
        po = _ld(xg_ptr, tb * G4 + 3 * H, cols, bh)
        if STEP:
            pi += _ld(rec_ptr, rows64 * G4, cols, bh)
            pf += _ld(rec_ptr, rows64 * G4 + H, cols, bh)
            pg += _ld(rec_ptr, rows64 * G4 + 2 * H, cols, bh)
            po += _ld(rec_ptr, rows64 * G4 + 3 * H, cols, bh)
        else:
            pi += _mm(h, w_i)
            pf += _mm(h, w_f)
            pg += _mm(h, w_g)
            po += _mm(h, w_o)
        i = sigmoid(pi)
        f = sigmoid(pf)
        g = tanh(pg)
        o = sigmoid(po)
        c = f * c + i * g
        m = o * tanh(c)
        r_off = tb * RES + cols[None, :]
        tl.store(res_ptr + r_off, i, mask=bh)
        tl.store(res_ptr + r_off + H, f, mask=bh)
        tl.store(res_ptr + r_off + 2 * H, g, mask=bh)
        tl.store(res_ptr + r_off + 3 * H, o, mask=bh)
        tl.store(res_ptr + r_off + 4 * H, c, mask=bh)
        if PROJ and STEP:
            tl.store(m_ptr + rows64 * H + cols[None, :], m, mask=bh)
        else:
            if PROJ:
                h = _mm(m, w_r)
            else:
                h = m
            tl.store(res_ptr + tb * RES + 5 * H + hcols[None, :], h, mask=bhr)
            tl.store(y_ptr + tb * R + hcols[None, :], h.to(y_ptr.dtype.element_ty), mask=bhr)


@triton.jit
def _lstm_bwd_kernel(
    dy_ptr, dh_ptr, dc_ptr, res_ptr, c0_ptr, whh_ptr, whr_ptr, dg_ptr, dht_ptr,
    t0, T, B, H, R,
    PROJ: tl.constexpr, STEP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Steps t0+T-1 down to t0 for BLOCK_B batch rows (grid as the forward).

    dy (T, B, R) X · reserve (T, B, 5H + R) fp32 · c0 (B, H) X
    dc (B, H) fp32, in/out: gradient into c_{t0+T-1}, replaced by the one into c_{t0-1}
    dh (B, R) fp32: persistent: in dh_n, out dh0 (= Σ_k dgate_k W_hh,k at t0);
                    STEP: in the gradient into m_t (host: (dy_t + carry) [W_hr])
    dg (T, B, 4H) fp32 out: [di df dg do] pre-activation gradients
    dht (T, B, R) fp32 out: the total gradient into h_t (persistent + PROJ, for dW_hr)
    """
    rows, rmask = range_mask(tl.program_id(0) * BLOCK_B, BLOCK_B, B)
    cols, cmask = range_mask(tl.program_id(1) * BLOCK_H, BLOCK_H, H)
    bh = outer_mask(rmask, cmask)
    G4 = 4 * H
    RES = 5 * H + R
    rows64 = rows.to(tl.int64)[:, None]
    dc = _ld(dc_ptr, rows64 * H, cols, bh)
    if not STEP:
        ks, kmask = range_mask(0, BLOCK_R, R)
        bhr = outer_mask(rmask, kmask)
        # W_hh gate k as is (BLOCK_H, BLOCK_R): dh_{t-1} = Σ_k dgate_k W_hh,k.
        w_i = _w(whh_ptr, 0 * H, cols, cmask, ks, kmask, R)
        w_f = _w(whh_ptr, 1 * H, cols, cmask, ks, kmask, R)
        w_g = _w(whh_ptr, 2 * H, cols, cmask, ks, kmask, R)
        w_o = _w(whh_ptr, 3 * H, cols, cmask, ks, kmask, R)
        if PROJ:
            w_r = _w(whr_ptr, 0, ks, kmask, cols, cmask, H)  # (BLOCK_R, BLOCK_H): dm = dh W_hr
        dh = _ld(dh_ptr, rows64 * R, ks, bhr)
    # c_{t-1} of the last step; afterwards each step's c_{t-1} is the next one's c_t.
    c = _prev(res_ptr, c0_ptr, t0 + T, B, rows, cols, bh, RES, 4 * H, H)

    for k in range(0, T):
        t = t0 + T - 1 - k
        tb = (t * B + rows).to(tl.int64)[:, None]
        if STEP:
            dm = _ld(dh_ptr, rows64 * H, cols, bh)
        else:
            dh += _ld(dy_ptr, tb * R, ks, bhr)
            if PROJ:
                tl.store(dht_ptr + tb * R + ks[None, :], dh, mask=bhr)
                dm = _mm(dh, w_r)
            else:
                dm = dh
        r_off = tb * RES
        i = _ld(res_ptr, r_off, cols, bh)
        f = _ld(res_ptr, r_off + H, cols, bh)
        g = _ld(res_ptr, r_off + 2 * H, cols, bh)
        o = _ld(res_ptr, r_off + 3 * H, cols, bh)
        c_prev = _prev(res_ptr, c0_ptr, t, B, rows, cols, bh, RES, 4 * H, H)
        tc = tanh(c)
        dc += dm * o * (1.0 - tc * tc)
        d_i = dc * g * i * (1.0 - i)
        d_f = dc * c_prev * f * (1.0 - f)
        d_g = dc * i * (1.0 - g * g)
        d_o = dm * tc * o * (1.0 - o)
        dc = dc * f
        c = c_prev
        g_off = tb * G4 + cols[None, :]
        tl.store(dg_ptr + g_off, d_i, mask=bh)
        tl.store(dg_ptr + g_off + H, d_f, mask=bh)
        tl.store(dg_ptr + g_off + 2 * H, d_g, mask=bh)
        tl.store(dg_ptr + g_off + 3 * H, d_o, mask=bh)
        if not STEP:
            dh = _mm(d_i, w_i) + _mm(d_f, w_f) + _mm(d_g, w_g) + _mm(d_o, w_o)

    tl.store(dc_ptr + rows64 * H + cols[None, :], dc, mask=bh)
    if not STEP:
        tl.store(dh_ptr + rows64 * R + ks[None, :], dh, mask=bhr)


# ----------------------------------------------------------------------------------------------
# GRU
# ----------------------------------------------------------------------------------------------
@triton.jit
def _gru_fwd_kernel(
    xg_ptr, rec_ptr, h0_ptr, whh_ptr, bhh_ptr, y_ptr, res_ptr,
    t0, T, B, H, s_h0,
    HAS_BHH: tl.constexpr, STEP: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Steps t0 .. t0+T-1 for BLOCK_B batch rows (grid as the LSTM's).

    xg (T, B, 3H) fp32 = x W_ihᵀ + b_ih · rec (B, 3H) fp32 = h_{t-1} W_hhᵀ + b_hh (STEP only)
    h0 (B, H): the state before t0 (row stride s_h0) · y (T, B, H) X
    reserve (T, B, 5H) fp32 [r z n s_n h]
    """
    rows, rmask = range_mask(tl.program_id(0) * BLOCK_B, BLOCK_B, B)
    cols, cmask = range_mask(tl.program_id(1) * BLOCK_H, BLOCK_H, H)
    bh = outer_mask(rmask, cmask)
    G3 = 3 * H
    rows64 = rows.to(tl.int64)[:, None]
    h = _ld(h0_ptr, rows64 * s_h0, cols, bh)
    if not STEP:
        w_r = _w_t(whh_ptr, 0 * H, cols, cmask, cols, cmask, H)
        w_z = _w_t(whh_ptr, 1 * H, cols, cmask, cols, cmask, H)
        w_n = _w_t(whh_ptr, 2 * H, cols, cmask, cols, cmask, H)
        if HAS_BHH:
            b_r = tl.load(bhh_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
            b_z = tl.load(bhh_ptr + H + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
            b_n = tl.load(bhh_ptr + 2 * H + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]

    for t in range(t0, t0 + T):
        tb = (t * B + rows).to(tl.int64)[:, None]
        if STEP:
            s_r = _ld(rec_ptr, rows64 * G3, cols, bh)
            s_z = _ld(rec_ptr, rows64 * G3 + H, cols, bh)
            s_n = _ld(rec_ptr, rows64 * G3 + 2 * H, cols, bh)
        else:
            s_r = _mm(h, w_r)
            s_z = _mm(h, w_z)
            s_n = _mm(h, w_n)
            if HAS_BHH:
                s_r += b_r
                s_z += b_z
                s_n += b_n
        r = sigmoid(_ld(xg_ptr, tb * G3, cols, bh) + s_r)
        z = sigmoid(_ld(xg_ptr, tb * G3 + H, cols, bh) + s_z)
        n = tanh(_ld(xg_ptr, tb * G3 + 2 * H, cols, bh) + r * s_n)
        h = (1.0 - z) * n + z * h
        r_off = tb * (5 * H) + cols[None, :]
        tl.store(res_ptr + r_off, r, mask=bh)
        tl.store(res_ptr + r_off + H, z, mask=bh)
        tl.store(res_ptr + r_off + 2 * H, n, mask=bh)
        tl.store(res_ptr + r_off + 3 * H, s_n, mask=bh)
        tl.store(res_ptr + r_off + 4 * H, h, mask=bh)
        tl.store(y_ptr + tb * H + cols[None, :], h.to(y_ptr.dtype.element_ty), mask=bh)


@triton.jit
def _gru_bwd_kernel(
    dy_ptr, dh_ptr, res_ptr, h0_ptr, whh_ptr, da_ptr,
    t0, T, B, H,
    STEP: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Steps t0+T-1 down to t0 for BLOCK_B batch rows (grid as the forward).

    dy (T, B, H) X · reserve (T, B, 5H) fp32 · h0 (B, H) X
    dh (B, H) fp32: persistent: in dh_n, out dh0; STEP: in the total gradient into h_t,
                    out its direct part dh_t ⊙ z_t (the host adds ds_t W_hh)
    da (T, B, 3H) fp32 out: [da_r da_z da_n], the gradients of the input-side pre-activations;
    the hidden side's are the same with da_n ⊙ r in the last block (formed on the host).
    """
    rows, rmask = range_mask(tl.program_id(0) * BLOCK_B, BLOCK_B, B)
    cols, cmask = range_mask(tl.program_id(1) * BLOCK_H, BLOCK_H, H)
    bh = outer_mask(rmask, cmask)
    G3 = 3 * H
    RES = 5 * H
    rows64 = rows.to(tl.int64)[:, None]
    dh = _ld(dh_ptr, rows64 * H, cols, bh)
    if not STEP:
        w_r = _w(whh_ptr, 0 * H, cols, cmask, cols, cmask, H)
        w_z = _w(whh_ptr, 1 * H, cols, cmask, cols, cmask, H)
        w_n = _w(whh_ptr, 2 * H, cols, cmask, cols, cmask, H)

    for k in range(0, T):
        t = t0 + T - 1 - k
        tb = (t * B + rows).to(tl.int64)[:, None]
        if not STEP:
            dh += _ld(dy_ptr, tb * H, cols, bh)
        r_off = tb * RES
        r = _ld(res_ptr, r_off, cols, bh)
        z = _ld(res_ptr, r_off + H, cols, bh)
        n = _ld(res_ptr, r_off + 2 * H, cols, bh)
        s_n = _ld(res_ptr, r_off + 3 * H, cols, bh)
        h_prev = _prev(res_ptr, h0_ptr, t, B, rows, cols, bh, RES, 4 * H, H)
        da_n = dh * (1.0 - z) * (1.0 - n * n)
        da_z = dh * (h_prev - n) * z * (1.0 - z)
        da_r = da_n * s_n * r * (1.0 - r)
        a_off = tb * G3 + cols[None, :]
        tl.store(da_ptr + a_off, da_r, mask=bh)
        tl.store(da_ptr + a_off + H, da_z, mask=bh)
        tl.store(da_ptr + a_off + 2 * H, da_n, mask=bh)
        dh = dh * z
        if not STEP:
            dh += _mm(da_r, w_r) + _mm(da_z, w_z) + _mm(da_n * r, w_n)

    tl.store(dh_ptr + rows64 * H + cols[None, :], dh, mask=bh)


# ----------------------------------------------------------------------------------------------
# Elman RNN and the leaky integrator (one gate block)
# ----------------------------------------------------------------------------------------------
@triton.jit
def _rnn_fwd_kernel(
    xg_ptr, rec_ptr, h0_ptr, whh_ptr, tau_ptr, y_ptr, res_ptr,
    t0, T, B, H, s_h0,
    LEAKY: tl.constexpr, RELU: tl.constexpr, STEP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Steps t0 .. t0+T-1 for BLOCK_B batch rows (grid as the LSTM's). State s = h (RNN) or u (leaky).

    RNN:   h_t = act(xg_t + h_{t-1} W_hhᵀ)
    leaky: u_t = (1 - 1/τ) u_{t-1} + (1/τ)(xg_t + tanh(u_{t-1}) W_hhᵀ),  y_t = tanh(u_t)
    xg (T, B, H) fp32 (biases folded in) · rec (B, H) fp32 = the recurrent product (STEP only)
    h0 (B, H): the state before t0 (row stride s_h0) · y (T, B, H) X · reserve (T, B, H) fp32: s_t
    """
    rows, rmask = range_mask(tl.program_id(0) * BLOCK_B, BLOCK_B, B)
    cols, cmask = range_mask(tl.program_id(1) * BLOCK_H, BLOCK_H, H)
    bh = outer_mask(rmask, cmask)
    rows64 = rows.to(tl.int64)[:, None]
    s = _ld(h0_ptr, rows64 * s_h0, cols, bh)
    if LEAKY:
        alpha = 1.0 / tl.load(tau_ptr + cols, mask=cmask, other=1.0).to(tl.float32)[None, :]
    if not STEP:
        w = _w_t(whh_ptr, 0, cols, cmask, cols, cmask, H)

    for t in range(t0, t0 + T):
        tb = (t * B + rows).to(tl.int64)[:, None]
        pre = _ld(xg_ptr, tb * H, cols, bh)
        if STEP:
            pre += _ld(rec_ptr, rows64 * H, cols, bh)
        elif LEAKY:
            pre += _mm(tanh(s), w)
        else:
            pre += _mm(s, w)
        if LEAKY:
            s = (1.0 - alpha) * s + alpha * pre
            y = tanh(s)
        else:
            s = _act(pre, RELU)
            y = s
        tl.store(res_ptr + tb * H + cols[None, :], s, mask=bh)
        tl.store(y_ptr + tb * H + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=bh)


@triton.jit
def _rnn_bwd_kernel(
    dy_ptr, dh_ptr, du_ptr, res_ptr, whh_ptr, tau_ptr, da_ptr,
    t0, T, B, H,
    LEAKY: tl.constexpr, RELU: tl.constexpr, STEP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Steps t0+T-1 down to t0 for BLOCK_B batch rows (grid as the forward).

    dy (T, B, H) X · reserve (T, B, H) fp32 (h_t or u_t)
    dh (B, H) fp32: the recurrent gradient into h_t = act(s_t) from step t+1, da_{t+1} W_hh.
        persistent: in dh_n (RNN) or 0 (leaky), out the value after step t0;
        STEP: in, computed by the host; for the RNN it already includes dy_t
    du (B, H) fp32, leaky only, in/out: the carry (1 - α) g_{t+1} into u_t (in: du_n)
    da (T, B, H) fp32 out: the pre-activation gradients (RNN: of xg_t + rec; leaky: of a_t)
    leaky, with g_t the total gradient into u_t:  g_t = (dy_t + dh) (1 - h_t²) + du,
        da_t = α g_t, then du = (1 - α) g_t, dh = da_t W_hh
    """
    rows, rmask = range_mask(tl.program_id(0) * BLOCK_B, BLOCK_B, B)
    cols, cmask = range_mask(tl.program_id(1) * BLOCK_H, BLOCK_H, H)
    bh = outer_mask(rmask, cmask)
    rows64 = rows.to(tl.int64)[:, None]
    dh = _ld(dh_ptr, rows64 * H, cols, bh)
    if LEAKY:
        du = _ld(du_ptr, rows64 * H, cols, bh)
        alpha = 1.0 / tl.load(tau_ptr + cols, mask=cmask, other=1.0).to(tl.float32)[None, :]
    if not STEP:
        w = _w(whh_ptr, 0, cols, cmask, cols, cmask, H)

    for k in range(0, T):
        t = t0 + T - 1 - k
        tb = (t * B + rows).to(tl.int64)[:, None]
        s = _ld(res_ptr, tb * H, cols, bh)
        if LEAKY:
            h = tanh(s)
            g = (_ld(dy_ptr, tb * H, cols, bh) + dh) * (1.0 - h * h) + du
            da = alpha * g
            du = g - da
        else:
            if not STEP:
                dh += _ld(dy_ptr, tb * H, cols, bh)
            da = dh * _dact(s, RELU)
        tl.store(da_ptr + tb * H + cols[None, :], da, mask=bh)
        if not STEP:
            dh = _mm(da, w)

    if not STEP:
        tl.store(dh_ptr + rows64 * H + cols[None, :], dh, mask=bh)
    if LEAKY:
        tl.store(du_ptr + rows64 * H + cols[None, :], du, mask=bh)


# ----------------------------------------------------------------------------------------------
# Host side: launch shapes and limits
# ----------------------------------------------------------------------------------------------
def _block(n: int) -> int:
    return max(MIN_BLOCK, triton.next_power_of_2(n))


# PERSISTENT_MAX_H holds within sm_80's 163 KB of shared memory per block (sm_90 has 227 KB). Devices
# with less (sm_86/89/120: 99-101 KB, never compiled for here) run step mode: there a persistent
# kernel could fail to launch (out of resources) at shapes this table admits.
PERSISTENT_MIN_SMEM = 166912
_SMEM_OPTIN: dict[int, int] = {}


def _smem_optin(device: torch.device) -> int:
    """Shared memory a block of ``device`` may opt in to (bytes); cached per device."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SMEM_OPTIN:
        props = torch.cuda.get_device_properties(index)
        optin = getattr(props, "shared_memory_per_block_optin", None)
        if optin is None:  # older torch: sm_80 and sm_90+ (but sm_12x) have >= 163 KB, the rest less
            big = (props.major, props.minor) == (8, 0) or 9 <= props.major < 12
            optin = PERSISTENT_MIN_SMEM if big else 0
        _SMEM_OPTIN[index] = int(optin)
    return _SMEM_OPTIN[index]


def persistent(cell: str, hidden_size: int, state_size: int, dtype, device: Optional[torch.device] = None) -> bool:
    """Whether the persistent kernel runs this shape (its weights fit on chip), else step mode.
    On a CUDA ``device`` with less shared memory per block than PERSISTENT_MIN_SMEM, always step mode."""
    if device is not None and device.type == "cuda" and _smem_optin(device) < PERSISTENT_MIN_SMEM:
        return False
    return max(hidden_size, state_size) <= PERSISTENT_MAX_H.get(cell, {}).get(dtype, 0)


def launch_config(cell: str, hidden_size: int, state_size: int, dtype, step: bool):
    """(BLOCK_B, BLOCK_H, BLOCK_R, num_warps) the launchers use (also scripts/triton_compile.py)."""
    if step:
        return STEP_BLOCK_B, STEP_BLOCK_H, STEP_BLOCK_H, 4
    bh, br = _block(hidden_size), _block(state_size)
    warps = PERSISTENT_WARPS
    if cell == "gru" and dtype == torch.float32 and bh == 64:
        warps = 16  # the GRU backward spills 32 B on sm_90 at 8 warps (4 and 16 are clean)
    return BLOCK_B, bh, br, warps


def supports(cell: str, hidden_size: int, state_size: int, dtype) -> Optional[str]:
    """None if the Triton kernels run this cell (any size: step mode beyond PERSISTENT_MAX_H), else why."""
    if cell not in CELLS:
        return f"the triton rnn kernels have no cell {cell!r} (they have {', '.join(CELLS)})"
    if dtype not in DTYPES:
        return f"the triton rnn kernels take float32, float16 or bfloat16, got {dtype}"
    if hidden_size < 1 or state_size < 1:
        return f"hidden_size and state_size must be >= 1, got {hidden_size} and {state_size}"
    if cell != "lstm" and state_size != hidden_size:
        return f"{cell}: state_size must equal hidden_size, got {state_size} != {hidden_size}"
    return None


def _require(cell, H, R, dtype):
    # The op checks supports() before launching; this guards direct callers (the error contract:
    # TypeError for a dtype, ValueError otherwise).
    reason = supports(cell, H, R, dtype)
    if reason is not None:
        raise (TypeError if dtype not in DTYPES else ValueError)(f"{cell} (triton): {reason}")


def _input_proj(x, w_ih, *biases):
    """x W_ihᵀ + Σ biases for all T steps: one fp32 GEMM, (T, B, G·H)."""
    T, B, _ = x.shape
    xg = torch.mm(x.reshape(T * B, -1).float(), w_ih.float().t())
    for b in biases:
        if b is not None:
            xg += b.float()
    return xg.view(T, B, -1)


def _weight_grads(x, dpre, w_ih, h_prev):
    """dx, dW_ih, dW_hh (from the recurrent operand h_prev (T, B, R)) and Σ dpre: GEMMs over all T·B."""
    T, B, _ = x.shape
    d2 = dpre.reshape(T * B, -1)
    dx = torch.mm(d2, w_ih.float()).view(T, B, -1).to(x.dtype)
    dw_ih = torch.mm(d2.t(), x.reshape(T * B, -1).float()).to(x.dtype)
    dw_hh = torch.mm(d2.t(), h_prev.reshape(T * B, -1)).to(x.dtype)
    return dx, dw_ih, dw_hh, d2.sum(0)


def _shifted(init, states):
    """(T, B, ·) fp32 of the state before each step: init, then states[:-1]."""
    return torch.cat([init.float().unsqueeze(0), states[:-1]], 0)


def _empty(like):
    return torch.empty(0, device=like.device, dtype=like.dtype)


def _grid(B, H, step):
    return (triton.cdiv(B, STEP_BLOCK_B), triton.cdiv(H, STEP_BLOCK_H)) if step else (triton.cdiv(B, BLOCK_B), 1)


def _carry(d, like_shape, x):
    """An fp32 (B, ·) carry buffer holding d (or zeros when d is absent)."""
    return d.float().clone() if d is not None else torch.zeros(like_shape, device=x.device, dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# LSTM launchers
# ----------------------------------------------------------------------------------------------
def lstm_fwd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
    T, B, _ = x.shape
    H = w_ih.shape[0] // 4
    R = h0.shape[1]
    _require("lstm", H, R, x.dtype)
    step = not persistent("lstm", H, R, x.dtype, x.device)
    bb, bh, br, warps = launch_config("lstm", H, R, x.dtype, step)
    proj = w_hr is not None
    xg = _input_proj(x, w_ih, b_ih, b_hh)
    y = torch.empty(T, B, R, device=x.device, dtype=x.dtype)
    res = torch.empty(T, B, 5 * H + R, device=x.device, dtype=torch.float32)
    kw = dict(PROJ=proj, BLOCK_B=bb, BLOCK_H=bh, BLOCK_R=br, num_warps=warps)
    whr = w_hr if proj else w_hh
    if not step:
        _lstm_fwd_kernel[_grid(B, H, False)](xg, xg, h0, c0, w_hh, whr, y, res, xg,
                                             0, T, B, H, R, R, H, STEP=False, **kw)
    else:
        w_hh_t, w_hr_t = w_hh.float().t(), (w_hr.float().t() if proj else None)
        rec = torch.empty(B, 4 * H, device=x.device, dtype=torch.float32)
        m = torch.empty(B, H, device=x.device, dtype=torch.float32) if proj else rec
        for t in range(T):
            h_prev = h0.float() if t == 0 else res[t - 1, :, 5 * H:]
            c_prev, s_c = (c0, H) if t == 0 else (res[t - 1, :, 4 * H:5 * H], 5 * H + R)
            torch.mm(h_prev, w_hh_t, out=rec)
            _lstm_fwd_kernel[_grid(B, H, True)](xg, rec, h0, c_prev, w_hh, whr, y, res, m,
                                                t, 1, B, H, R, R, s_c, STEP=True, **kw)
            if proj:
                h = torch.mm(m, w_hr_t)
                res[t, :, 5 * H:] = h
                y[t] = h
    return y, y[T - 1].clone(), res[T - 1, :, 4 * H:5 * H].to(x.dtype, copy=True), res


def lstm_bwd(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reserve):
    T, B, _ = x.shape
    H = w_ih.shape[0] // 4
    R = h0.shape[1]
    _require("lstm", H, R, x.dtype)
    step = not persistent("lstm", H, R, x.dtype, x.device)
    bb, bh, br, warps = launch_config("lstm", H, R, x.dtype, step)
    proj = w_hr is not None
    dev, f32 = x.device, torch.float32
    dg = torch.empty(T, B, 4 * H, device=dev, dtype=f32)
    dht = torch.empty(T, B, R, device=dev, dtype=f32) if proj else dg
    dh = _carry(dh_n, (B, R), x)
    dc = _carry(dc_n, (B, H), x)
    kw = dict(PROJ=proj, BLOCK_B=bb, BLOCK_H=bh, BLOCK_R=br, num_warps=warps)
    whr = w_hr if proj else w_hh
    if not step:
        _lstm_bwd_kernel[_grid(B, H, False)](dy, dh, dc, reserve, c0, w_hh, whr, dg, dht,
                                             0, T, B, H, R, STEP=False, **kw)
    else:
        w_hh32, w_hr32 = w_hh.float(), (w_hr.float() if proj else None)
        for t in reversed(range(T)):
            dh = dh + dy[t].float()
            if proj:
                dht[t] = dh
                dm = torch.mm(dh, w_hr32)
            else:
                dm = dh
            _lstm_bwd_kernel[_grid(B, H, True)](dy, dm.contiguous(), dc, reserve, c0, w_hh, whr, dg, dht,
                                                t, 1, B, H, R, STEP=True, **kw)
            dh = torch.mm(dg[t], w_hh32)
    h_prev = _shifted(h0, reserve[:, :, 5 * H:])
    dx, dw_ih, dw_hh, db = _weight_grads(x, dg, w_ih, h_prev)
    db_ih = db.to(x.dtype) if b_ih is not None else _empty(x)
    db_hh = db.to(x.dtype, copy=True) if b_hh is not None else _empty(x)  # never db_ih's storage
    if proj:
        m = reserve[:, :, 3 * H:4 * H] * torch.tanh(reserve[:, :, 4 * H:5 * H])
        dw_hr = torch.mm(dht.reshape(T * B, R).t(), m.reshape(T * B, H)).to(x.dtype)
    else:
        dw_hr = _empty(x)
    return dx, dh.to(x.dtype), dc.to(x.dtype), dw_ih, dw_hh, db_ih, db_hh, dw_hr


# ----------------------------------------------------------------------------------------------
# GRU launchers
# ----------------------------------------------------------------------------------------------
def gru_fwd(x, h0, w_ih, w_hh, b_ih, b_hh):
    T, B, _ = x.shape
    H = w_ih.shape[0] // 3
    _require("gru", H, H, x.dtype)
    step = not persistent("gru", H, H, x.dtype, x.device)
    bb, bh, _, warps = launch_config("gru", H, H, x.dtype, step)
    xg = _input_proj(x, w_ih, b_ih)
    y = torch.empty(T, B, H, device=x.device, dtype=x.dtype)
    res = torch.empty(T, B, 5 * H, device=x.device, dtype=torch.float32)
    kw = dict(HAS_BHH=b_hh is not None, BLOCK_B=bb, BLOCK_H=bh, num_warps=warps)
    bhh = b_hh if b_hh is not None else w_hh
    if not step:
        _gru_fwd_kernel[_grid(B, H, False)](xg, xg, h0, w_hh, bhh, y, res, 0, T, B, H, H, STEP=False, **kw)
    else:
        w_hh_t = w_hh.float().t()
        rec = torch.empty(B, 3 * H, device=x.device, dtype=torch.float32)
        for t in range(T):
            h_prev, s_h = (h0, H) if t == 0 else (res[t - 1, :, 4 * H:], 5 * H)
            torch.mm(h_prev.float(), w_hh_t, out=rec)
            if b_hh is not None:
                rec += b_hh.float()
            _gru_fwd_kernel[_grid(B, H, True)](xg, rec, h_prev, w_hh, bhh, y, res, t, 1, B, H, s_h,
                                               STEP=True, **kw)
    return y, y[T - 1].clone(), res


def gru_bwd(dy, dh_n, x, h0, w_ih, w_hh, b_ih, b_hh, reserve):
    T, B, _ = x.shape
    H = w_ih.shape[0] // 3
    _require("gru", H, H, x.dtype)
    step = not persistent("gru", H, H, x.dtype, x.device)
    bb, bh, _, warps = launch_config("gru", H, H, x.dtype, step)
    da = torch.empty(T, B, 3 * H, device=x.device, dtype=torch.float32)
    dh = _carry(dh_n, (B, H), x)
    kw = dict(BLOCK_B=bb, BLOCK_H=bh, num_warps=warps)
    if not step:
        _gru_bwd_kernel[_grid(B, H, False)](dy, dh, reserve, h0, w_hh, da, 0, T, B, H, STEP=False, **kw)
    ds = da.clone()
    if step:
        w_hh32 = w_hh.float()
        for t in reversed(range(T)):
            dh += dy[t].float()
            _gru_bwd_kernel[_grid(B, H, True)](dy, dh, reserve, h0, w_hh, da, t, 1, B, H, STEP=True, **kw)
            ds[t] = da[t]
            ds[t, :, 2 * H:] *= reserve[t, :, :H]
            dh.addmm_(ds[t], w_hh32)  # dh held dh_t ⊙ z_t
    else:
        ds[:, :, 2 * H:] *= reserve[:, :, :H]  # the hidden side's n block: da_n ⊙ r
    h_prev = _shifted(h0, reserve[:, :, 4 * H:])
    dx, dw_ih, _, db_ih = _weight_grads(x, da, w_ih, h_prev)
    ds2 = ds.view(T * B, 3 * H)
    dw_hh = torch.mm(ds2.t(), h_prev.reshape(T * B, H)).to(x.dtype)
    db_ih = db_ih.to(x.dtype) if b_ih is not None else _empty(x)
    db_hh = ds2.sum(0).to(x.dtype) if b_hh is not None else _empty(x)
    return dx, dh.to(x.dtype), dw_ih, dw_hh, db_ih, db_hh


# ----------------------------------------------------------------------------------------------
# RNN and leaky launchers (one kernel pair)
# ----------------------------------------------------------------------------------------------
def _one_gate_fwd(cell, x, s0, w_ih, w_hh, biases, tau, relu):
    T, B, _ = x.shape
    H = w_ih.shape[0]
    _require(cell, H, H, x.dtype)
    step = not persistent(cell, H, H, x.dtype, x.device)
    bb, bh, _, warps = launch_config(cell, H, H, x.dtype, step)
    leaky = cell == "leaky"
    xg = _input_proj(x, w_ih, *biases)
    y = torch.empty(T, B, H, device=x.device, dtype=x.dtype)
    res = torch.empty(T, B, H, device=x.device, dtype=torch.float32)
    kw = dict(LEAKY=leaky, RELU=bool(relu), BLOCK_B=bb, BLOCK_H=bh, num_warps=warps)
    tau_arg = tau if leaky else w_hh
    if not step:
        _rnn_fwd_kernel[_grid(B, H, False)](xg, xg, s0, w_hh, tau_arg, y, res, 0, T, B, H, H, STEP=False, **kw)
    else:
        w_hh_t = w_hh.float().t()
        rec = torch.empty(B, H, device=x.device, dtype=torch.float32)
        for t in range(T):
            s_prev = s0 if t == 0 else res[t - 1]
            torch.mm(torch.tanh(s_prev.float()) if leaky else s_prev.float(), w_hh_t, out=rec)
            _rnn_fwd_kernel[_grid(B, H, True)](xg, rec, s_prev, w_hh, tau_arg, y, res, t, 1, B, H, H, STEP=True, **kw)
    return y, res


def _one_gate_bwd(cell, dy, ds_n, x, s0, w_ih, w_hh, tau, reserve, relu):
    """(dx, ds0, dw_ih, dw_hh, Σ da, da) for the RNN (ds = dh) and the leaky cell (ds = du)."""
    T, B, _ = x.shape
    H = w_ih.shape[0]
    _require(cell, H, H, x.dtype)
    step = not persistent(cell, H, H, x.dtype, x.device)
    bb, bh, _, warps = launch_config(cell, H, H, x.dtype, step)
    leaky = cell == "leaky"
    da = torch.empty(T, B, H, device=x.device, dtype=torch.float32)
    if leaky:  # recurrent gradient into h = tanh(u) from 0; du_n enters the u carry
        dh, du = torch.zeros(B, H, device=x.device, dtype=torch.float32), _carry(ds_n, (B, H), x)
    else:
        dh, du = _carry(ds_n, (B, H), x), da
    kw = dict(LEAKY=leaky, RELU=bool(relu), BLOCK_B=bb, BLOCK_H=bh, num_warps=warps)
    tau_arg = tau if leaky else w_hh
    if not step:
        _rnn_bwd_kernel[_grid(B, H, False)](dy, dh, du, reserve, w_hh, tau_arg, da, 0, T, B, H, STEP=False, **kw)
    else:
        w_hh32 = w_hh.float()
        for t in reversed(range(T)):
            if not leaky:
                dh += dy[t].float()
            _rnn_bwd_kernel[_grid(B, H, True)](dy, dh, du, reserve, w_hh, tau_arg, da, t, 1, B, H, STEP=True, **kw)
            torch.mm(da[t], w_hh32, out=dh)
    states = _shifted(s0, reserve)
    if leaky:
        ds0 = du + dh * (1.0 - torch.tanh(s0.float()) ** 2)
        dx, dw_ih, dw_hh, db = _weight_grads(x, da, w_ih, torch.tanh(states))
    else:
        ds0 = dh
        dx, dw_ih, dw_hh, db = _weight_grads(x, da, w_ih, states)
    return dx, ds0.to(x.dtype), dw_ih, dw_hh, db, da, states


def rnn_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, relu):
    y, res = _one_gate_fwd("rnn", x, h0, w_ih, w_hh, (b_ih, b_hh), None, relu)
    return y, y[-1].clone(), res


def rnn_bwd(dy, dh_n, x, h0, w_ih, w_hh, b_ih, b_hh, reserve, relu):
    dx, dh0, dw_ih, dw_hh, db, _, _ = _one_gate_bwd("rnn", dy, dh_n, x, h0, w_ih, w_hh, None, reserve, relu)
    db_ih = db.to(x.dtype) if b_ih is not None else _empty(x)
    db_hh = db.to(x.dtype, copy=True) if b_hh is not None else _empty(x)  # never db_ih's storage
    return dx, dh0, dw_ih, dw_hh, db_ih, db_hh


def leaky_fwd(x, u0, w_ih, w_hh, bias, tau):
    h, res = _one_gate_fwd("leaky", x, u0, w_ih, w_hh, (bias,), tau, False)
    return h, res[-1].to(x.dtype, copy=True), res


def leaky_bwd(dh, du_n, x, u0, w_ih, w_hh, bias, tau, reserve):
    dx, du0, dw_ih, dw_hh, db, da, u_prev = _one_gate_bwd("leaky", dh, du_n, x, u0, w_ih, w_hh, tau, reserve,
                                                          False)
    # dτ = Σ_{t,b} g_t (u_{t-1} - u_t) / τ with g_t = τ da_t (docs/rnn_contract.md)
    dtau = (da * (u_prev - reserve)).sum((0, 1)).to(x.dtype)
    dbias = db.to(x.dtype) if bias is not None else _empty(x)
    return dx, du0, dw_ih, dw_hh, dbias, dtau
