"""Selective scan (Mamba's S6 recurrence) in Triton: chunked parallel scan, forward and backward.

Implements the two functions of docs/selective_scan_contract.md on normalised inputs:

    selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, chunk_size)
        -> (out, last_state, chunk_states)
    selective_scan_bwd(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, initial_state,
                       chunk_states, delta_softplus, chunk_size)
        -> (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state)

Recurrence, per (batch b, channel d, state n):
    δ_t = softplus(δraw_t + bias) (or δraw_t + bias),   a_t = exp(δ_t·A),   β_t = δ_t·B_t·u_t
    x_t = a_t·x_{t-1} + β_t,   y_t = Σ_n x_t·C_t,   out_t = (y_t + D·u_t)·silu(z_t)

x_t is an affine map of x_{t-1}, and affine maps compose associatively:
    (a, β) ∘ (a', β') = (a·a', a'·β + β')        (apply (a, β) first)
so inside a chunk of BLOCK_L steps `tl.associative_scan` yields (Π a, accumulated β) for every t,
and x_t = (Π a)_t · x_carry + β̃_t with x_carry the state before the chunk, kept in registers
across chunks (forward) or re-read from `chunk_states` (backward).

The backward runs the same recurrence in reverse for the adjoint g_t = ∂loss/∂x_t:
    g_t = a_{t+1}·g_{t+1} + C_t·dy_t,   g_{L-1} = C_{L-1}·dy_{L-1} + dlast_state
i.e. a reverse scan over (a_{t+1}, C_t·dy_t). a_{t+1} is recomputed from δ loaded one step ahead
(a = 1 past the end). The state before step t enters only as a_t·x_{t-1} = x_t − β_t, so no
shifted forward scan is needed.

Reverse scan (the one risky primitive)
--------------------------------------
The adjoint scan is backwards in time with a non-commutative combine. By default ("native") it is
`tl.associative_scan(..., reverse=True)`: the interpreter implements that as flip, forward scan,
flip (numpy); the GPU lowering (ScanOpToLLVM) reverses the registers and lanes, runs the forward
scan with the accumulated prefix as the combine's first argument, and reverses back, i.e. the same
operand order. Reverse scans with non-commutative combines have had upstream bug reports
(triton-lang/triton#4362, open; #8412), so there is a fallback that needs no reverse=True:
"flip" loads the chunk's tiles in reverse time order (position l holds step BLOCK_L−1−l), runs a
forward scan and flips the result back with tl.flip. Both are tested against the fp64 reference
(tests/kernels/test_selective_scan_triton.py), and reverse=True alone by
tests/kernels/test_triton_reverse_scan.py, which is the real check on a GPU. If that test fails
on a GPU, switch every backward to the fallback with

    PYNEURO_TRITON_REVERSE_SCAN=flip        (environment, read at import)
    pyneuro.kernels.selective_scan.REVERSE_SCAN = "flip"      (at run time)

The fallback costs a second, time-reversed load of δ, dout, z and C per chunk and a tl.flip of
one (BLOCK_D, BLOCK_N, BLOCK_L) tile.

Design
------
* chunk_size == BLOCK_L: one chunk is one scan tile; it must be a power of two in
  [MIN_CHUNK_SIZE, MAX_CHUNK_SIZE]. The backward keeps no per-step state: it recomputes each chunk
  from chunk_states (memory O(L/chunk_size · N)).
* N is padded to BLOCK_N = next_power_of_2(N) ≤ MAX_N. Padded states have A = B = C = 0, so they
  stay 0 and contribute nothing.
* Channels are split into "segments" of dim / lcm(G_B, G_C) channels: every channel of a segment
  reads the same B group and the same C group, so a variable B/C tile (BLOCK_N, BLOCK_L) is loaded
  once per program and broadcast over BLOCK_D channels, and the backward can sum dB/dC over the
  segment's channels in registers.
* All state, scans and accumulations are fp32; inputs may be fp32/fp16/bf16.
* MAX_N = 256 works everywhere; the tiles are sized so that the shapes run with
  default_chunk_size(N) (64 up to N = 32, then N·chunk = 2048) compile without register spills
  for N ≤ 64 on sm_80 and sm_90 (`make triton-compile` checks it; not yet timed on a GPU).
* Deterministic backward: every output element and every partial-sum element has exactly one
  writer; the cross-program reductions (over batch, chunks and channel splits) are fixed-order
  torch `.sum` calls on the partial buffers. No atomics.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from ._common import MAX_GRID_YZ, affine_combine, exp, range_mask, reversed_range_mask, sigmoid, softplus

DEFAULT_CHUNK_SIZE = 64  # for N <= 32; see default_chunk_size(N)
MIN_CHUNK_SIZE = 4
MAX_CHUNK_SIZE = 256
MAX_N = 256
MAX_BATCH = MAX_GRID_YZ  # the batch is the grids' second axis
# Launch shape: BLOCK_D channels per tile so that a (BLOCK_D, BLOCK_N, BLOCK_L) tile has at most
# _*_TILE elements, and enough warps that each thread holds at most _*_PER_THREAD of them. Chosen from
# ptxas reports (scripts/triton_compile.py, sm_80 and sm_90, Triton 3.6 and 3.9), all flags on:
# * forward: tiles of 2048 on 8 warps (8 elements per thread) need at most 128 registers up to
#   N = 128 (4096 on 16 warps spilled 8 B at N = 4, sm_80, Triton 3.6).
# * backward: it keeps ~4x more tiles alive (states, adjoints, two scans). 2 elements per thread on
#   16 warps fits the 128-register cap (4 spill there, e.g. (2, 16, 64): 24 B on sm_90). Where one
#   channel alone exceeds the tile (BLOCK_N·BLOCK_L = 2048), 8 warps with 8 elements per thread
#   fit in 255 registers; beyond that (N·chunk ≥ 4096) it spills, hence default_chunk_size(N).
_FWD_TILE, _FWD_PER_THREAD = 2048, 8
_BWD_TILE, _BWD_PER_THREAD = 1024, 2
_MAX_BLOCK_D = 16
# The backward splits a segment's channels over at most _MAX_SPLITS programs (fewer once
# batch · segments · splits reaches _BWD_TARGET_PROGRAMS); each split writes its own
# (batch, segments, N, L) fp32 partial of variable dB/dC, so that buffer is at most
# _MAX_SPLITS × |dB| whatever dim is, never O(dim · N · L).
_MAX_SPLITS = 64
_BWD_TARGET_PROGRAMS = 1024
# How the backward runs its backward-in-time scan (see "Reverse scan" above): "native" uses
# tl.associative_scan(reverse=True), "flip" a forward scan over time-reversed loads. Read at each
# launch, so tests (and users) may also set the attribute.
REVERSE_SCAN = os.environ.get("PYNEURO_TRITON_REVERSE_SCAN", "native")


# ----------------------------------------------------------------------------------------------
# Op-specific helper (the generic ones are in _common.py)
# ----------------------------------------------------------------------------------------------
@triton.jit
def _decay(dt, A):
    """exp(dt·A), exactly 1 where dt = 0 (padded steps) even when A = -inf, where dt·A is NaN."""
    return exp(tl.where(dt == 0.0, 0.0, dt * A))


@triton.jit
def _delta(raw, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """δ from the raw input (fp32) and the per-channel bias (BLOCK_D,)."""
    if HAS_BIAS:
        raw = raw + bias[:, None]
    if SOFTPLUS:
        raw = softplus(raw)
    return raw


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------
@triton.jit
def _ssm_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, x0_ptr,
    out_ptr, last_ptr, cs_ptr,
    dim, L, N, n_chunks, seg_dim, n_split, GB, GC, B_SEG, C_SEG,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_X0: tl.constexpr,
    SOFTPLUS: tl.constexpr, B_VAR: tl.constexpr, C_VAR: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """One program: batch row b, BLOCK_D channels of one segment, all N states, all of L.

    grid   = (n_segments · n_split, batch), n_split = cdiv(seg_dim, BLOCK_D)
    shapes : u, delta, z, out (batch, dim, L) · A (dim, N) · B/C (batch, G, N, L) or (dim, N)
             x0, last (batch, dim, N) fp32 · chunk_states (batch, dim, n_chunks, N) fp32
    tile   : (BLOCK_D, BLOCK_N, BLOCK_L), scanned along L; the state (BLOCK_D, BLOCK_N) is carried
             in registers from chunk to chunk.
    traffic: reads u, delta, (z) once and a B/C (N, L) tile once per program (shared by its
             BLOCK_D channels); writes out once and N fp32 per channel per chunk (chunk_states).
    """
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    seg = pid_d // n_split
    d_in = (pid_d % n_split) * BLOCK_D + tl.arange(0, BLOCK_D)  # channel index inside the segment
    d_mask = d_in < seg_dim
    d = seg * seg_dim + d_in
    n = tl.arange(0, BLOCK_N)
    n_mask = n < N
    dn_mask = d_mask[:, None] & n_mask[None, :]
    l_idx = tl.arange(0, BLOCK_L)
    last_col = (l_idx == BLOCK_L - 1)[None, None, :]

    bd = b * dim + d  # (BLOCK_D,) int64: row of (batch, dim, ...) tensors
    row = bd[:, None] * L  # (BLOCK_D, 1)
    state_off = bd[:, None] * N + n[None, :]  # (BLOCK_D, BLOCK_N)
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=dn_mask, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0)
    else:
        bias = tl.zeros((BLOCK_D,), tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=d_mask, other=0.0)
    if B_VAR:
        B_base = B_ptr + (b * GB + seg // B_SEG) * N * L + n[:, None] * L
    else:
        Bc = tl.load(B_ptr + d[:, None] * N + n[None, :], mask=dn_mask, other=0.0)[:, :, None]
    if C_VAR:
        C_base = C_ptr + (b * GC + seg // C_SEG) * N * L + n[:, None] * L
    else:
        Cc = tl.load(C_ptr + d[:, None] * N + n[None, :], mask=dn_mask, other=0.0)[:, :, None]
    if HAS_X0:
        x = tl.load(x0_ptr + state_off, mask=dn_mask, other=0.0)
    else:
        x = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)

    for k in range(0, n_chunks):
        t, t_mask = range_mask(k * BLOCK_L, BLOCK_L, L)
        dl_mask = d_mask[:, None] & t_mask[None, :]
        nl_mask = n_mask[:, None] & t_mask[None, :]
        io = row + t[None, :]
        tl.store(cs_ptr + (bd[:, None] * n_chunks + k) * N + n[None, :], x, mask=dn_mask)

        uu = tl.load(u_ptr + io, mask=dl_mask, other=0.0).to(tl.float32)
        dt = _delta(tl.load(delta_ptr + io, mask=dl_mask, other=0.0).to(tl.float32), bias, HAS_BIAS, SOFTPLUS)
        dt = tl.where(dl_mask, dt, 0.0)  # padded steps: a = 1, β = 0, the state passes through
        if B_VAR:
            Bt = tl.load(B_base + t[None, :], mask=nl_mask, other=0.0).to(tl.float32)[None, :, :]
        else:
            Bt = Bc
        if C_VAR:
            Ct = tl.load(C_base + t[None, :], mask=nl_mask, other=0.0).to(tl.float32)[None, :, :]
        else:
            Ct = Cc

        a = _decay(dt[:, None, :], A[:, :, None])
        beta = (dt * uu)[:, None, :] * Bt
        a_cum, beta_cum = tl.associative_scan((a, beta), axis=2, combine_fn=affine_combine)
        xs = a_cum * x[:, :, None] + beta_cum  # (BLOCK_D, BLOCK_N, BLOCK_L): x_t in the chunk
        y = tl.sum(xs * Ct, axis=1)
        x = tl.sum(tl.where(last_col, xs, 0.0), axis=2)  # x at the chunk end (padded steps keep it)

        if HAS_D:
            y += Dv[:, None] * uu
        if HAS_Z:
            zz = tl.load(z_ptr + io, mask=dl_mask, other=0.0).to(tl.float32)
            y *= zz * sigmoid(zz)
        tl.store(out_ptr + io, y.to(out_ptr.dtype.element_ty), mask=dl_mask)

    tl.store(last_ptr + state_off, x, mask=dn_mask)


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------
@triton.jit
def _ssm_bwd_kernel(
    dout_ptr, u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, cs_ptr,
    du_ptr, ddelta_ptr, dz_ptr, g_ptr,
    dBv_ptr, dCv_ptr, dA_ptr, dBc_ptr, dCc_ptr, dD_ptr, dbias_ptr,
    batch, dim, L, N, n_chunks, seg_dim, n_split, n_sub, n_seg, GB, GC, B_SEG, C_SEG,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, B_VAR: tl.constexpr, C_VAR: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, REVERSE_FLIP: tl.constexpr,
):
    """One program: batch row b, n_sub·BLOCK_D channels of one segment, chunks from last to first.

    grid    = (n_seg · n_split, batch)
    per chunk k (reverse order), per channel sub-block j (BLOCK_D channels):
        recompute x_t from chunk_states[:, :, k] (forward scan), y_t, dy_t;
        reverse scan of (a_{t+1}, C_t·dy_t) from the carry g (g_ptr) -> g_t (reverse=True, or
        with REVERSE_FLIP a forward scan over time-reversed loads and one tl.flip);
        write du, ddelta, dz for the tile; per-chunk partials of dA, dD, dbias, constant dB/dC;
        sum variable dB/dC over the sub-block's channels into (BLOCK_N, BLOCK_L) accumulators,
        written once per chunk after the channel loop.
    buffers (fp32; each element has a single writer):
        g_ptr   (2, batch, dim, N): adjoint carry, double-buffered by chunk parity (chunk k
                reads slot (k+1)%2, writes slot k%2) so that no load and store of one iteration
                touch the same address; slot n_chunks%2 starts as dlast_state (or 0), slot 0
                ends as dinitial_state
        dBv/dCv (n_split, batch, n_seg, N, L): variable dB/dC partial per channel split
        dA, dBc, dCc (n_chunks, batch, dim, N); dD, dbias (n_chunks, batch, dim)
    traffic: reads u, delta, dout, (z) once (plus δ shifted by one step, mostly from cache),
             chunk_states once, a B/C tile once per program and chunk; writes du, ddelta, (dz)
             once, and the partials above: dA (and constant dB/dC) are chunk_states-sized.
    """
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    seg = pid_d // n_split
    split = pid_d % n_split
    n = tl.arange(0, BLOCK_N)
    n_mask = n < N
    l_idx = tl.arange(0, BLOCK_L)
    first_col = (l_idx == 0)[None, :]
    if B_VAR:
        B_base = B_ptr + (b * GB + seg // B_SEG) * N * L + n[:, None] * L
    if C_VAR:
        C_base = C_ptr + (b * GC + seg // C_SEG) * N * L + n[:, None] * L
    # partial row of this (split, b, segment) in the (n_split, batch, n_seg, N, L) buffers
    part_base = ((split * batch + b) * n_seg + seg) * N * L + n[:, None] * L

    g_half = tl.cast(batch, tl.int64) * dim * N  # one parity's carries; int64: batch·dim·N may pass 2^31
    for kk in range(0, n_chunks):
        k = n_chunks - 1 - kk
        # The carry written for chunk k+1 is read below, possibly by other threads.
        tl.debug_barrier()
        g_rd = g_ptr + ((k + 1) % 2) * g_half
        g_wr = g_ptr + (k % 2) * g_half
        t, t_mask = range_mask(k * BLOCK_L, BLOCK_L, L)
        nl_mask = n_mask[:, None] & t_mask[None, :]
        if B_VAR:
            Bt = tl.load(B_base + t[None, :], mask=nl_mask, other=0.0).to(tl.float32)[None, :, :]
            dB_acc = tl.zeros((BLOCK_N, BLOCK_L), tl.float32)
        if C_VAR:
            Ct = tl.load(C_base + t[None, :], mask=nl_mask, other=0.0).to(tl.float32)[None, :, :]
            dC_acc = tl.zeros((BLOCK_N, BLOCK_L), tl.float32)

        for j in range(0, n_sub):
            d_in = (split * n_sub + j) * BLOCK_D + tl.arange(0, BLOCK_D)
            d_mask = d_in < seg_dim
            d = seg * seg_dim + d_in
            dn_mask = d_mask[:, None] & n_mask[None, :]
            dl_mask = d_mask[:, None] & t_mask[None, :]
            bd = b * dim + d
            io = bd[:, None] * L + t[None, :]
            state_off = bd[:, None] * N + n[None, :]
            part_off = ((k * batch + b) * dim + d)  # (BLOCK_D,) row of the per-chunk partials

            A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=dn_mask, other=0.0)
            if HAS_BIAS:
                bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0)
            else:
                bias = tl.zeros((BLOCK_D,), tl.float32)
            if not B_VAR:
                Bt = tl.load(B_ptr + d[:, None] * N + n[None, :], mask=dn_mask, other=0.0)[:, :, None]
            if not C_VAR:
                Ct = tl.load(C_ptr + d[:, None] * N + n[None, :], mask=dn_mask, other=0.0)[:, :, None]

            uu = tl.load(u_ptr + io, mask=dl_mask, other=0.0).to(tl.float32)
            raw = tl.load(delta_ptr + io, mask=dl_mask, other=0.0).to(tl.float32)
            dt = tl.where(dl_mask, _delta(raw, bias, HAS_BIAS, SOFTPLUS), 0.0)
            dout = tl.load(dout_ptr + io, mask=dl_mask, other=0.0).to(tl.float32)

            # Recompute the chunk's states.
            x0 = tl.load(cs_ptr + (bd[:, None] * n_chunks + k) * N + n[None, :], mask=dn_mask, other=0.0)
            a = _decay(dt[:, None, :], A[:, :, None])
            du_scale = dt * uu
            beta = du_scale[:, None, :] * Bt
            a_cum, beta_cum = tl.associative_scan((a, beta), axis=2, combine_fn=affine_combine)
            xs = a_cum * x0[:, :, None] + beta_cum

            # Output gate.
            if HAS_D:
                Dv = tl.load(D_ptr + d, mask=d_mask, other=0.0)
            if HAS_Z:
                y = tl.sum(xs * Ct, axis=1)
                if HAS_D:
                    y += Dv[:, None] * uu
                zz = tl.load(z_ptr + io, mask=dl_mask, other=0.0).to(tl.float32)
                sz = sigmoid(zz)
                dz = dout * y * sz * (1.0 + zz * (1.0 - sz))
                tl.store(dz_ptr + io, dz.to(dz_ptr.dtype.element_ty), mask=dl_mask)
                dy = dout * zz * sz
            else:
                dy = dout

            # Adjoint: g_t = a_{t+1}·g_{t+1} + C_t·dy_t, a scan backwards in time from the carry g
            # at the first step of chunk k+1 (a = 1 and C·dy = 0 on padded steps).
            g_in = tl.load(g_rd + state_off, mask=dn_mask, other=0.0)
            if REVERSE_FLIP:
                # Time-reversed tiles (position l holds step k·BLOCK_L + BLOCK_L−1−l), loaded so:
                # a forward scan over them is the backward-in-time scan; one tl.flip brings g
                # back to time order. dy = dout·silu(z) needs no y, so it is recomputed here.
                t_rev, tr_mask = reversed_range_mask(k * BLOCK_L, BLOCK_L, L)
                io_rev = bd[:, None] * L + t_rev[None, :]
                dlr_mask = d_mask[:, None] & tr_mask[None, :]
                nx_mask = d_mask[:, None] & ((t_rev + 1) < L)[None, :]
                raw_next = tl.load(delta_ptr + io_rev + 1, mask=nx_mask, other=0.0).to(tl.float32)
                dt_next = tl.where(nx_mask, _delta(raw_next, bias, HAS_BIAS, SOFTPLUS), 0.0)
                dy_rev = tl.load(dout_ptr + io_rev, mask=dlr_mask, other=0.0).to(tl.float32)
                if HAS_Z:
                    z_rev = tl.load(z_ptr + io_rev, mask=dlr_mask, other=0.0).to(tl.float32)
                    dy_rev *= z_rev * sigmoid(z_rev)
                if C_VAR:  # loaded here, not once per chunk: a tile fewer live across the loop
                    C_rev = tl.load(C_base + t_rev[None, :], mask=n_mask[:, None] & tr_mask[None, :],
                                    other=0.0).to(tl.float32)[None, :, :]
                else:
                    C_rev = Ct  # constant in time
                a_next = _decay(dt_next[:, None, :], A[:, :, None])
                g_cum, c_cum = tl.associative_scan((a_next, C_rev * dy_rev[:, None, :]), axis=2,
                                                   combine_fn=affine_combine)
                g = tl.flip(g_cum * g_in[:, :, None] + c_cum, 2)
            else:
                nx_mask = d_mask[:, None] & ((t + 1) < L)[None, :]
                raw_next = tl.load(delta_ptr + io + 1, mask=nx_mask, other=0.0).to(tl.float32)
                dt_next = tl.where(nx_mask, _delta(raw_next, bias, HAS_BIAS, SOFTPLUS), 0.0)
                a_next = _decay(dt_next[:, None, :], A[:, :, None])
                g_cum, c_cum = tl.associative_scan((a_next, Ct * dy[:, None, :]), axis=2,
                                                   combine_fn=affine_combine, reverse=True)
                g = g_cum * g_in[:, :, None] + c_cum

            g_xa = g * (xs - beta)  # g_t · a_t·x_{t-1}
            gB = tl.sum(g * Bt, axis=1)
            du = dt * gB
            ddt = uu * gB + tl.sum(g_xa * A[:, :, None], axis=1)
            if HAS_D:
                du += dy * Dv[:, None]
                tl.store(dD_ptr + part_off, tl.sum(dy * uu, axis=1), mask=d_mask)
            if SOFTPLUS:
                ddt *= sigmoid(raw + bias[:, None])
            ddt = tl.where(dl_mask, ddt, 0.0)
            tl.store(du_ptr + io, du.to(du_ptr.dtype.element_ty), mask=dl_mask)
            tl.store(ddelta_ptr + io, ddt.to(ddelta_ptr.dtype.element_ty), mask=dl_mask)
            if HAS_BIAS:
                tl.store(dbias_ptr + part_off, tl.sum(ddt, axis=1), mask=d_mask)
            tl.store(dA_ptr + part_off[:, None] * N + n[None, :], tl.sum(g_xa * dt[:, None, :], axis=2),
                     mask=dn_mask)
            g_dbeta = g * du_scale[:, None, :]  # ∂/∂B_t
            x_dy = xs * dy[:, None, :]  # ∂/∂C_t
            if B_VAR:
                dB_acc += tl.sum(g_dbeta, axis=0)
            else:
                tl.store(dBc_ptr + part_off[:, None] * N + n[None, :], tl.sum(g_dbeta, axis=2), mask=dn_mask)
            if C_VAR:
                dC_acc += tl.sum(x_dy, axis=0)
            else:
                tl.store(dCc_ptr + part_off[:, None] * N + n[None, :], tl.sum(x_dy, axis=2), mask=dn_mask)

            # Carry for chunk k-1: g at this chunk's first step; after chunk 0 it becomes
            # dinitial_state = a_0·g_0.
            g_first = tl.sum(tl.where(first_col[None, :, :], g, 0.0), axis=2)
            dt_first = tl.sum(tl.where(first_col, dt, 0.0), axis=1)
            g_first *= tl.where(k == 0, _decay(dt_first[:, None], A), 1.0)
            tl.store(g_wr + state_off, g_first, mask=dn_mask)

        if B_VAR:
            tl.store(dBv_ptr + part_base + t[None, :], dB_acc, mask=nl_mask)
        if C_VAR:
            tl.store(dCv_ptr + part_base + t[None, :], dC_acc, mask=nl_mask)


# ----------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------
def supports(N: int, chunk_size: int, batch: int = 1) -> str | None:
    """None if the kernels can run state size N with this chunk_size, else why not (the registry
    asks before choosing this backend). Only the kernels' own launch-shape limits: BLOCK_L =
    chunk_size must be a power of two (tl.arange), BLOCK_N = next_power_of_2(N) ≤ MAX_N, and the
    batch fits the grid's second axis."""
    if not (MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE) or chunk_size & (chunk_size - 1):
        return (f"chunk_size must be a power of two in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}] for the "
                f"triton kernels, got {chunk_size}")
    if not 1 <= N <= MAX_N:
        return f"the triton kernels take N (A.shape[1]) in [1, {MAX_N}], got {N}"
    if batch > MAX_BATCH:
        return f"the triton kernels take a batch (u.shape[0]) of at most {MAX_BATCH}, got {batch}"
    return None


def _require_supported(N: int, chunk_size: int, batch: int) -> None:
    # The op checks this through supports() before launching; this guards direct callers from a
    # compile error deep inside Triton, or a launch the GPU refuses.
    reason = supports(N, chunk_size, batch)
    if reason is not None:
        raise ValueError(f"selective_scan (triton): {reason}")


def _reverse_flip() -> bool:
    if REVERSE_SCAN not in ("native", "flip"):
        raise ValueError(f"REVERSE_SCAN (PYNEURO_TRITON_REVERSE_SCAN) must be 'native' or 'flip', "
                         f"got {REVERSE_SCAN!r}")
    return REVERSE_SCAN == "flip"


def _layout(B, C, dim):
    """(B_var, C_var, GB, GC, n_seg, seg_dim, B_SEG, C_SEG): segments of channels sharing a B and a C group."""
    B_var, C_var = B.dim() == 4, C.dim() == 4
    GB = B.shape[1] if B_var else 1
    GC = C.shape[1] if C_var else 1
    n_seg = GB * GC // math.gcd(GB, GC)  # lcm: divides dim because GB and GC do
    return B_var, C_var, GB, GC, n_seg, dim // n_seg, n_seg // GB, n_seg // GC


def _launch_shape(seg_dim: int, block_n: int, block_l: int, tile: int, per_thread: int):
    """(BLOCK_D, num_warps) for a segment of seg_dim channels."""
    bd = max(1, tile // (block_n * block_l))
    bd = 1 << (bd.bit_length() - 1)  # power of two, rounded down
    bd = max(1, min(bd, _MAX_BLOCK_D, triton.next_power_of_2(seg_dim)))
    warps = (bd * block_n * block_l) // (32 * per_thread)
    return bd, max(4, min(16, triton.next_power_of_2(max(1, warps))))


def fwd_launch_shape(seg_dim: int, block_n: int, block_l: int):
    """(BLOCK_D, num_warps) of the forward kernel."""
    return _launch_shape(seg_dim, block_n, block_l, _FWD_TILE, _FWD_PER_THREAD)


def bwd_launch_shape(seg_dim: int, block_n: int, block_l: int):
    """(BLOCK_D, num_warps) of the backward kernel (see _BWD_TILE)."""
    bd, warps = _launch_shape(seg_dim, block_n, block_l, _BWD_TILE, _BWD_PER_THREAD)
    if block_n * block_l == 2 * _BWD_TILE:
        warps = 8  # one channel, 8 elements per thread in up to 255 registers
    return bd, warps


def default_chunk_size(N: int) -> int:
    """The chunk size to run state size N with: DEFAULT_CHUNK_SIZE while N·chunk ≤ 2048 (the
    backward's largest spill-free tile for one channel), smaller beyond (N = 64: 32, 128: 16)."""
    return max(MIN_CHUNK_SIZE, min(DEFAULT_CHUNK_SIZE, 2 * _BWD_TILE // triton.next_power_of_2(max(N, 1))))


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus: bool,
                       chunk_size: int):
    """Forward on normalised inputs (see the module docstring). Returns (out, last_state, chunk_states)."""
    batch, dim, L = u.shape
    N = A.shape[1]
    _require_supported(N, chunk_size, batch)
    n_chunks = triton.cdiv(L, chunk_size)
    out = torch.empty_like(u)
    last = torch.empty(batch, dim, N, device=u.device, dtype=torch.float32)
    chunk_states = torch.empty(batch, dim, n_chunks, N, device=u.device, dtype=torch.float32)
    if L == 0 or batch == 0 or dim == 0:
        if initial_state is not None:
            last.copy_(initial_state)
        else:
            last.zero_()
        return out, last, chunk_states

    B_var, C_var, GB, GC, n_seg, seg_dim, B_SEG, C_SEG = _layout(B, C, dim)
    BLOCK_N = triton.next_power_of_2(N)
    BLOCK_D, num_warps = fwd_launch_shape(seg_dim, BLOCK_N, chunk_size)
    n_split = triton.cdiv(seg_dim, BLOCK_D)
    dummy = A  # stands in for absent optional pointers (never dereferenced)
    _ssm_fwd_kernel[(n_seg * n_split, batch)](
        u, delta, A, B, C,
        D if D is not None else dummy, z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy,
        initial_state if initial_state is not None else dummy,
        out, last, chunk_states,
        dim, L, N, n_chunks, seg_dim, n_split, GB, GC, B_SEG, C_SEG,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        HAS_X0=initial_state is not None, SOFTPLUS=bool(delta_softplus), B_VAR=B_var, C_VAR=C_var,
        BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N, BLOCK_L=chunk_size, num_warps=num_warps,
    )
    return out, last, chunk_states


def selective_scan_bwd(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, initial_state,
                       chunk_states, delta_softplus: bool, chunk_size: int):
    """Backward on normalised inputs. Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias,
    dinitial_state); the gradient of an absent input is an empty fp32 tensor of shape (0,)."""
    batch, dim, L = u.shape
    N = A.shape[1]
    _require_supported(N, chunk_size, batch)
    n_chunks = triton.cdiv(L, chunk_size)
    dev, f32 = u.device, torch.float32
    B_var, C_var, GB, GC, n_seg, seg_dim, B_SEG, C_SEG = _layout(B, C, dim)

    du = torch.empty_like(u)
    ddelta = torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    # Adjoint carry, double-buffered (see the kernel); slot 0 holds dinitial_state at the end.
    g2 = torch.empty(2, batch, dim, N, device=dev, dtype=f32)
    if dlast_state is not None:
        g2[n_chunks % 2].copy_(dlast_state)
    else:
        g2[n_chunks % 2].zero_()
    g = g2[0]

    if L == 0 or batch == 0 or dim == 0:
        du.zero_()
        ddelta.zero_()
        if dz is not None:
            dz.zero_()
        dA = torch.zeros_like(A)
        dB, dC = torch.zeros_like(B), torch.zeros_like(C)
        dD = torch.zeros_like(D) if D is not None else None
        dbias = torch.zeros_like(delta_bias) if delta_bias is not None else None
    else:
        BLOCK_N = triton.next_power_of_2(N)
        BLOCK_D, num_warps = bwd_launch_shape(seg_dim, BLOCK_N, chunk_size)
        n_blocks = triton.cdiv(seg_dim, BLOCK_D)
        if B_var or C_var:
            # Enough programs to fill the GPU, but at most _MAX_SPLITS dB/dC partials.
            want = max(1, triton.cdiv(_BWD_TARGET_PROGRAMS, batch * n_seg))
            n_split = max(1, min(n_blocks, _MAX_SPLITS, want))
        else:
            n_split = n_blocks  # nothing is summed over channels: one sub-block per program
        n_sub = triton.cdiv(n_blocks, n_split)
        n_split = triton.cdiv(n_blocks, n_sub)  # drop programs that would have no channel

        dummy = A  # stands in for absent optional pointers (never dereferenced)

        def part(*shape):
            return torch.empty(*shape, device=dev, dtype=f32)

        dBv = part(n_split, batch, n_seg, N, L) if B_var else dummy
        dCv = part(n_split, batch, n_seg, N, L) if C_var else dummy
        dA_p = part(n_chunks, batch, dim, N)
        dBc = part(n_chunks, batch, dim, N) if not B_var else dummy
        dCc = part(n_chunks, batch, dim, N) if not C_var else dummy
        dD_p = part(n_chunks, batch, dim) if D is not None else dummy
        dbias_p = part(n_chunks, batch, dim) if delta_bias is not None else dummy
        _ssm_bwd_kernel[(n_seg * n_split, batch)](
            dout, u, delta, A, B, C,
            D if D is not None else dummy, z if z is not None else dummy,
            delta_bias if delta_bias is not None else dummy, chunk_states,
            du, ddelta, dz if dz is not None else dummy, g2,
            dBv, dCv, dA_p, dBc, dCc, dD_p, dbias_p,
            batch, dim, L, N, n_chunks, seg_dim, n_split, n_sub, n_seg, GB, GC, B_SEG, C_SEG,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), B_VAR=B_var, C_VAR=C_var,
            BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N, BLOCK_L=chunk_size, REVERSE_FLIP=_reverse_flip(),
            num_warps=num_warps,
        )
        # Fixed-order reductions of the partials (deterministic).
        dA = dA_p.sum((0, 1))
        if B_var:  # splits, then the segments of each B group
            dB = dBv.sum(0).view(batch, GB, B_SEG, N, L).sum(2).to(B.dtype)
        else:
            dB = dBc.sum((0, 1))
        if C_var:
            dC = dCv.sum(0).view(batch, GC, C_SEG, N, L).sum(2).to(C.dtype)
        else:
            dC = dCc.sum((0, 1))
        dD = dD_p.sum((0, 1)) if D is not None else None
        dbias = dbias_p.sum((0, 1)) if delta_bias is not None else None

    def or_empty(t):
        return t if t is not None else torch.empty(0, device=dev, dtype=f32)

    return (du, ddelta, dA, dB, dC, or_empty(dD), or_empty(dz), or_empty(dbias),
            or_empty(g if initial_state is not None else None))
