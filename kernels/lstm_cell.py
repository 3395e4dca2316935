"""Fused LSTM-with-projection layer (docs/numerics.md#bilstm): both directions in every launch, per-row lengths,
cell clip, projection clip, residual add; backward through time; a persistent variant.

Math per direction d and step (bilm-tf gate order i, j, f, o; TF weight layout kept)::

    z   = gx[t] + h_{t-1} @ W_h + B,     gx = x @ W_x precomputed for all t by one matmul
    c_t = clip(σ(f + 1) c_{t-1} + σ(i) tanh(j), ±cell_clip)
    h_t = clip((σ(o) tanh(c_t)) @ W_P, ±proj_clip)
    y_t = h_t (+ x_t when residual)

**Step kernels** (any shape): per time step two launches (the T-step loop, forward and backward, is
replayed from a CUDA graph when it repeats with the same tensors: :func:`elmo_fast.kernels.launch.run_launches`),
grid ``(batch blocks, column blocks, 2)``
with the direction as the last grid axis. The cell kernel does the recurrent matmul for the four gate
column blocks of its cell tile, adds ``gx`` and the bias (bilm-tf's +1 forget bias folded in by the host), applies
the nonlinearities,
the cell update and clip, and writes ``u = σ(o) tanh(c)``; the projection kernel does ``u @ W_P``, the
clip, the masked state update and the output write (+ residual). Step s of row b of length L_b touches
time ``t = s`` (forward) or ``t = L_b - 1 - s`` (backward) and only while ``s < L_b``; other rows keep
their state, so the final state is the state after each row's last valid position.

**Persistent kernel** (small shapes): one program per (batch block of 16 rows, direction) runs all steps
with ``W_h`` and ``W_P`` held on chip (registers, and shared memory for the layout conversions between its
two dots) and ``h``, ``c`` never leaving the chip; used automatically within the budget that the compile
check proves (see :func:`persistent_fits`: the tiny test models, IEEE/bf16 products only: with three-pass TF32
it spills), and for the forward only.

**Backward through time**: per step (reversed) one kernel forms ``dh_pre`` (zero where the projection
clip was active), ``du = dh_pre @ W_Pᵀ``, the cell backward (zero where the cell clip was active) and
writes ``dz`` (B, 4C); a second kernel carries ``dh_{t-1} = dz @ W_hᵀ``. Weight gradients are then one
matmul each over all (row, time) pairs: ``dW_h = Hprevᵀ dZ``, ``dW_x = Xᵀ dZ``, ``dW_P = Uᵀ dH_pre``,
``dB = Σ dZ`` and ``dX = dZ W_xᵀ (+ dy)``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import check_device, colsum, gpu_tiles, launch, matmul, mm, precision_code
from .launch import run_launches

__all__ = ["lstm_bidirectional_layer", "LSTMLayerFunction", "persistent_fits"]

#: step-kernel tiles (batch rows, cell columns per gate, projection columns, reduction chunk); tl.dot needs
#: >= 16. The interpreter pays ~1 ms of Python per tensor op and program, so it runs fewer, larger
#: programs (same kernels, other tile sizes). Tests may set TILES to exercise multi-block paths.
#: GPU: 64 batch rows per program, so each W_h / W_P slice is read by only ceil(B / 64) programs per step
#: (B = 128: twice) - the step kernels are bound by streaming the recurrent weights (cost model).
GPU_TILES = (64, 32, 32, 32)
INTERPRETER_TILES = (16, 64, 64, 128)
TILES: tuple[int, int, int, int] | None = None
PERSISTENT_MAX = (64, 128, 2048)  # padded P, padded C, P_pad * C_pad of the persistent kernel (see persistent_fits)
PERSISTENT_BB = 16        # batch rows per program of the persistent kernel (GPU)
PERSISTENT_WARPS = 8
#: the cell kernel's reduction chunk with three-pass TF32 products on the GPU tiles: BK 32 spills 56-128 B per
#: thread on sm_80 at odd P (compile check, P 19); 16 spills nothing on sm_80 and sm_90 (159-234 registers)
TF32X3_CELL_BK = 16


@triton.jit
def _row_time(len_ptr, rb, B, s, d, REV: tl.constexpr):
    n = tl.load(len_ptr + rb, mask=rb < B, other=0)
    valid = (rb < B) & (s < n)
    if REV:
        t = tl.where(d == 0, s, n - 1 - s)
    else:
        t = n * 0 + s
    t = tl.where(valid, t, 0)
    return valid, t


@triton.jit
def _split_gates(acc, BB: tl.constexpr, BC: tl.constexpr):
    """``(BB, 4*BC)`` with gate-interleaved columns (r = 4c + g) -> the four ``(BB, BC)`` gate blocks."""
    lo, hi = tl.split(tl.reshape(acc, (BB, BC, 2, 2)))  # lo: gates 0, 2; hi: gates 1, 3
    g_i, g_f = tl.split(lo)
    g_j, g_o = tl.split(hi)
    return g_i, g_j, g_f, g_o


@triton.jit(do_not_specialize=["s", "B", "T"])
def _cell_step(gx_ptr, bias_ptr, wh_ptr, len_ptr, h_ptr, c_ptr, u_ptr,
               g_sv, cpre_sv, cprev_sv, u_sv, hprev_sv, s, B, T, P, C, cell_clip,
               HAS_CLIP: tl.constexpr, SAVE: tl.constexpr, PREC: tl.constexpr, REV: tl.constexpr,
               BB: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_c = tl.program_id(1)
    d = tl.program_id(2)
    rb = (pid_b * BB + tl.arange(0, BB)).to(tl.int64)  # 64-bit offsets: B*T*4C may pass 2^31
    rc = pid_c * BC + tl.arange(0, BC)
    valid, t = _row_time(len_ptr, rb, B, s, d, REV)
    cmask = rc < C
    G4 = 4 * C
    # one dot for all four gates: column r of the tile is gate r % 4 of cell column r // 4
    r4 = tl.arange(0, 4 * BC)
    c4 = pid_c * BC + r4 // 4
    wcol = (r4 % 4) * C + c4
    acc = tl.zeros((BB, 4 * BC), dtype=tl.float32)
    wh = wh_ptr + d * P * G4
    for k0 in range(0, P, BK):
        rk = k0 + tl.arange(0, BK)
        hm = valid[:, None] & (rk[None, :] < P)
        h = tl.load(h_ptr + (d * B + rb[:, None]) * P + rk[None, :], mask=hm, other=0.0)
        if SAVE:
            if pid_c == 0:  # h_{t-1} for dW_h; the state is only written by the projection launch
                tl.store(hprev_sv + ((d * B + rb[:, None]) * T + t[:, None]) * P + rk[None, :], h, mask=hm)
        w = tl.load(wh + rk[:, None] * G4 + wcol[None, :], mask=(rk[:, None] < P) & (c4[None, :] < C), other=0.0)
        acc += mm(h, w, PREC)
    acc_i, acc_j, acc_f, acc_o = _split_gates(acc, BB, BC)
    m2 = valid[:, None] & cmask[None, :]
    gx_row = gx_ptr + ((d * B + rb[:, None]) * T + t[:, None]) * G4 + rc[None, :]
    bias = bias_ptr + d * G4 + rc
    zi = acc_i + tl.load(gx_row, mask=m2, other=0.0) + tl.load(bias, mask=cmask, other=0.0)[None, :]
    zj = acc_j + tl.load(gx_row + C, mask=m2, other=0.0) + tl.load(bias + C, mask=cmask, other=0.0)[None, :]
    zf = acc_f + tl.load(gx_row + 2 * C, mask=m2, other=0.0) + tl.load(bias + 2 * C, mask=cmask, other=0.0)[None, :]
    zo = acc_o + tl.load(gx_row + 3 * C, mask=m2, other=0.0) + tl.load(bias + 3 * C, mask=cmask, other=0.0)[None, :]
    gi = tl.sigmoid(zi)
    gj = 2.0 * tl.sigmoid(2.0 * zj) - 1.0  # tanh, inline
    gf = tl.sigmoid(zf)  # the bias arrives with bilm-tf's +1 forget bias folded in (host)
    go = tl.sigmoid(zo)
    c_off = (d * B + rb[:, None]) * C + rc[None, :]
    c_prev = tl.load(c_ptr + c_off, mask=m2, other=0.0)
    c_pre = gf * c_prev + gi * gj
    if HAS_CLIP:
        c_new = tl.minimum(tl.maximum(c_pre, -cell_clip), cell_clip)
    else:
        c_new = c_pre
    u = go * (2.0 * tl.sigmoid(2.0 * c_new) - 1.0)
    tl.store(c_ptr + c_off, c_new, mask=m2)
    tl.store(u_ptr + c_off, u, mask=m2)
    if SAVE:
        sv = ((d * B + rb[:, None]) * T + t[:, None])
        g_row = g_sv + sv * G4 + rc[None, :]
        tl.store(g_row, gi, mask=m2)
        tl.store(g_row + C, gj, mask=m2)
        tl.store(g_row + 2 * C, gf, mask=m2)
        tl.store(g_row + 3 * C, go, mask=m2)
        tl.store(cpre_sv + sv * C + rc[None, :], c_pre, mask=m2)
        tl.store(cprev_sv + sv * C + rc[None, :], c_prev, mask=m2)
        tl.store(u_sv + sv * C + rc[None, :], u, mask=m2)


@triton.jit(do_not_specialize=["s", "B", "T"])
def _proj_step(u_ptr, wp_ptr, len_ptr, h_ptr, x_ptr, y_ptr, hpre_sv, s, B, T, P, C, proj_clip,
               HAS_CLIP: tl.constexpr, RESIDUAL: tl.constexpr, SAVE: tl.constexpr, PREC: tl.constexpr,
               REV: tl.constexpr, BB: tl.constexpr, BP: tl.constexpr, BK: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_p = tl.program_id(1)
    d = tl.program_id(2)
    rb = (pid_b * BB + tl.arange(0, BB)).to(tl.int64)  # 64-bit offsets: B*T*4C may pass 2^31
    rp = pid_p * BP + tl.arange(0, BP)
    valid, t = _row_time(len_ptr, rb, B, s, d, REV)
    pmask = rp < P
    acc = tl.zeros((BB, BP), dtype=tl.float32)
    wp = wp_ptr + d * C * P
    for k0 in range(0, C, BK):
        rk = k0 + tl.arange(0, BK)
        u = tl.load(u_ptr + (d * B + rb[:, None]) * C + rk[None, :], mask=valid[:, None] & (rk[None, :] < C),
                    other=0.0)
        w = tl.load(wp + rk[:, None] * P + rp[None, :], mask=(rk[:, None] < C) & pmask[None, :], other=0.0)
        acc += mm(u, w, PREC)
    if HAS_CLIP:
        h_new = tl.minimum(tl.maximum(acc, -proj_clip), proj_clip)
    else:
        h_new = acc
    m2 = valid[:, None] & pmask[None, :]
    h_off = (d * B + rb[:, None]) * P + rp[None, :]
    sv = ((d * B + rb[:, None]) * T + t[:, None]) * P + rp[None, :]
    if SAVE:
        tl.store(hpre_sv + sv, acc, mask=m2)
    tl.store(h_ptr + h_off, h_new, mask=m2)
    out = h_new
    if RESIDUAL:
        out += tl.load(x_ptr + sv, mask=m2, other=0.0)
    tl.store(y_ptr + sv, out, mask=m2)


@triton.jit(do_not_specialize=["B", "T"])
def _persistent_fwd(gx_ptr, bias_ptr, wh_ptr, wp_ptr, len_ptr, h_ptr, c_ptr, x_ptr, y_ptr,
                    g_sv, cpre_sv, cprev_sv, u_sv, hprev_sv, hpre_sv, B, T, P, C, cell_clip, proj_clip,
                    HAS_CCLIP: tl.constexpr, HAS_PCLIP: tl.constexpr, RESIDUAL: tl.constexpr,
                    SAVE: tl.constexpr, PREC: tl.constexpr, REV: tl.constexpr, BB: tl.constexpr,
                    PP: tl.constexpr, CC: tl.constexpr):
    pid_b = tl.program_id(0)
    d = tl.program_id(1)
    rb = (pid_b * BB + tl.arange(0, BB)).to(tl.int64)  # 64-bit offsets: B*T*4C may pass 2^31
    rp = tl.arange(0, PP)
    rc = tl.arange(0, CC)
    G4 = 4 * C
    pm = rp < P
    cm = rc < C
    # weights stay on chip for the whole sequence
    r4 = tl.arange(0, 4 * CC)  # gate-interleaved columns: r = 4c + g
    c4 = r4 // 4
    w_h = tl.load(wh_ptr + d * P * G4 + rp[:, None] * G4 + ((r4 % 4) * C + c4)[None, :],
                  mask=pm[:, None] & (c4 < C)[None, :], other=0.0)
    w_p = tl.load(wp_ptr + d * C * P + rc[:, None] * P + rp[None, :], mask=cm[:, None] & pm[None, :], other=0.0)
    bias = bias_ptr + d * G4 + rc
    b_i = tl.load(bias, mask=cm, other=0.0)[None, :]
    b_j = tl.load(bias + C, mask=cm, other=0.0)[None, :]
    b_f = tl.load(bias + 2 * C, mask=cm, other=0.0)[None, :]  # +1 folded in on the host
    b_o = tl.load(bias + 3 * C, mask=cm, other=0.0)[None, :]
    rows = rb < B
    hm = rows[:, None] & pm[None, :]
    cmm = rows[:, None] & cm[None, :]
    h = tl.load(h_ptr + (d * B + rb[:, None]) * P + rp[None, :], mask=hm, other=0.0)
    c = tl.load(c_ptr + (d * B + rb[:, None]) * C + rc[None, :], mask=cmm, other=0.0)
    n = tl.load(len_ptr + rb, mask=rows, other=0)
    for s in range(0, T):
        valid = rows & (s < n)
        if REV:
            t = tl.where(valid, tl.where(d == 0, s, n - 1 - s), 0)
        else:
            t = tl.where(valid, s, 0)
        vc = valid[:, None] & cm[None, :]
        vp = valid[:, None] & pm[None, :]
        row_t = (d * B + rb[:, None]) * T + t[:, None]
        gx = gx_ptr + row_t * G4 + rc[None, :]
        z_i, z_j, z_f, z_o = _split_gates(mm(h, w_h, PREC), BB, CC)
        gi = tl.sigmoid(z_i + tl.load(gx, mask=vc, other=0.0) + b_i)
        gj = 2.0 * tl.sigmoid(2.0 * (z_j + tl.load(gx + C, mask=vc, other=0.0) + b_j)) - 1.0
        gf = tl.sigmoid(z_f + tl.load(gx + 2 * C, mask=vc, other=0.0) + b_f)
        go = tl.sigmoid(z_o + tl.load(gx + 3 * C, mask=vc, other=0.0) + b_o)
        c_pre = gf * c + gi * gj
        if HAS_CCLIP:
            c_new = tl.minimum(tl.maximum(c_pre, -cell_clip), cell_clip)
        else:
            c_new = c_pre
        u = go * (2.0 * tl.sigmoid(2.0 * c_new) - 1.0)
        h_pre = mm(u, w_p, PREC)
        if HAS_PCLIP:
            h_new = tl.minimum(tl.maximum(h_pre, -proj_clip), proj_clip)
        else:
            h_new = h_pre
        if SAVE:
            g_row = g_sv + row_t * G4 + rc[None, :]
            tl.store(g_row, gi, mask=vc)
            tl.store(g_row + C, gj, mask=vc)
            tl.store(g_row + 2 * C, gf, mask=vc)
            tl.store(g_row + 3 * C, go, mask=vc)
            tl.store(cpre_sv + row_t * C + rc[None, :], c_pre, mask=vc)
            tl.store(cprev_sv + row_t * C + rc[None, :], c, mask=vc)
            tl.store(u_sv + row_t * C + rc[None, :], u, mask=vc)
            tl.store(hprev_sv + row_t * P + rp[None, :], h, mask=vp)
            tl.store(hpre_sv + row_t * P + rp[None, :], h_pre, mask=vp)
        out = h_new
        if RESIDUAL:
            out += tl.load(x_ptr + row_t * P + rp[None, :], mask=vp, other=0.0)
        tl.store(y_ptr + row_t * P + rp[None, :], out, mask=vp)
        h = tl.where(vp, h_new, h)
        c = tl.where(vc, c_new, c)
    tl.store(h_ptr + (d * B + rb[:, None]) * P + rp[None, :], h, mask=hm)
    tl.store(c_ptr + (d * B + rb[:, None]) * C + rc[None, :], c, mask=cmm)


@triton.jit(do_not_specialize=["s", "B", "T"])
def _cell_step_bwd(dy_ptr, dh_ptr, dc_ptr, wp_ptr, len_ptr, g_sv, cpre_sv, cprev_sv, hpre_sv, dz_ptr, dhpre_ptr,
                   s, B, T, P, C, cell_clip, proj_clip,
                   HAS_CCLIP: tl.constexpr, HAS_PCLIP: tl.constexpr, PREC: tl.constexpr, REV: tl.constexpr,
                   BB: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_c = tl.program_id(1)
    d = tl.program_id(2)
    rb = (pid_b * BB + tl.arange(0, BB)).to(tl.int64)  # 64-bit offsets: B*T*4C may pass 2^31
    rc = pid_c * BC + tl.arange(0, BC)
    valid, t = _row_time(len_ptr, rb, B, s, d, REV)
    cmask = rc < C
    G4 = 4 * C
    row_t = (d * B + rb[:, None]) * T + t[:, None]
    du = tl.zeros((BB, BC), dtype=tl.float32)
    wp = wp_ptr + d * C * P
    for k0 in range(0, P, BK):
        rk = k0 + tl.arange(0, BK)
        km = valid[:, None] & (rk[None, :] < P)
        dh_tot = tl.load(dh_ptr + (d * B + rb[:, None]) * P + rk[None, :], mask=km, other=0.0) \
            + tl.load(dy_ptr + row_t * P + rk[None, :], mask=km, other=0.0)
        if HAS_PCLIP:
            h_pre = tl.load(hpre_sv + row_t * P + rk[None, :], mask=km, other=0.0)
            # torch.clamp passes the gradient where min <= x <= max; zero where the clip was active
            dh_pre = tl.where((h_pre >= -proj_clip) & (h_pre <= proj_clip), dh_tot, 0.0)
        else:
            dh_pre = dh_tot
        if pid_c == 0:
            tl.store(dhpre_ptr + row_t * P + rk[None, :], dh_pre, mask=km)
        # W_P[rc, rk]^T as (BK, BC)
        wt = tl.load(wp + rc[None, :] * P + rk[:, None], mask=(rk[:, None] < P) & cmask[None, :], other=0.0)
        du += mm(dh_pre, wt, PREC)
    m2 = valid[:, None] & cmask[None, :]
    g_row = g_sv + row_t * G4 + rc[None, :]
    gi = tl.load(g_row, mask=m2, other=0.0)
    gj = tl.load(g_row + C, mask=m2, other=0.0)
    gf = tl.load(g_row + 2 * C, mask=m2, other=0.0)
    go = tl.load(g_row + 3 * C, mask=m2, other=0.0)
    c_pre = tl.load(cpre_sv + row_t * C + rc[None, :], mask=m2, other=0.0)
    c_prev = tl.load(cprev_sv + row_t * C + rc[None, :], mask=m2, other=0.0)
    if HAS_CCLIP:
        c_new = tl.minimum(tl.maximum(c_pre, -cell_clip), cell_clip)
    else:
        c_new = c_pre
    tc = 2.0 * tl.sigmoid(2.0 * c_new) - 1.0
    c_off = (d * B + rb[:, None]) * C + rc[None, :]
    dc_t = tl.load(dc_ptr + c_off, mask=m2, other=0.0) + du * go * (1.0 - tc * tc)
    if HAS_CCLIP:
        dc_t = tl.where((c_pre >= -cell_clip) & (c_pre <= cell_clip), dc_t, 0.0)
    dz_row = dz_ptr + row_t * G4 + rc[None, :]
    tl.store(dz_row, dc_t * gj * gi * (1.0 - gi), mask=m2)
    tl.store(dz_row + C, dc_t * gi * (1.0 - gj * gj), mask=m2)
    tl.store(dz_row + 2 * C, dc_t * c_prev * gf * (1.0 - gf), mask=m2)
    tl.store(dz_row + 3 * C, du * tc * go * (1.0 - go), mask=m2)
    tl.store(dc_ptr + c_off, dc_t * gf, mask=m2)


@triton.jit(do_not_specialize=["s", "B", "T"])
def _hidden_step_bwd(dz_ptr, wh_ptr, len_ptr, dh_ptr, s, B, T, P, C, PREC: tl.constexpr, REV: tl.constexpr,
                     BB: tl.constexpr, BP: tl.constexpr, BK: tl.constexpr):
    """dh_{t-1}[rows, rp] = dz_t @ W_h[rp, :]ᵀ for valid rows (others carry dh unchanged)."""
    pid_b = tl.program_id(0)
    pid_p = tl.program_id(1)
    d = tl.program_id(2)
    rb = (pid_b * BB + tl.arange(0, BB)).to(tl.int64)  # 64-bit offsets: B*T*4C may pass 2^31
    rp = pid_p * BP + tl.arange(0, BP)
    valid, t = _row_time(len_ptr, rb, B, s, d, REV)
    G4 = 4 * C
    row_t = (d * B + rb[:, None]) * T + t[:, None]
    acc = tl.zeros((BB, BP), dtype=tl.float32)
    wh = wh_ptr + d * P * G4
    for k0 in range(0, G4, BK):
        rk = k0 + tl.arange(0, BK)
        dz = tl.load(dz_ptr + row_t * G4 + rk[None, :], mask=valid[:, None] & (rk[None, :] < G4), other=0.0)
        wt = tl.load(wh + rp[None, :] * G4 + rk[:, None], mask=(rk[:, None] < G4) & (rp[None, :] < P), other=0.0)
        acc += mm(dz, wt, PREC)
    tl.store(dh_ptr + (d * B + rb[:, None]) * P + rp[None, :], acc, mask=valid[:, None] & (rp[None, :] < P))


def persistent_fits(P: int, C: int, precision: str | None = None) -> bool:
    """Whether the automatic choice may run ``(P, C)`` on the persistent kernel in ``precision`` (default: the
    active mode): IEEE (and bf16) products within padded ``P <= 64``, ``C <= 128``, ``P * C <= 2048``; in the
    TF32 modes no shape.

    The budget is what the compile check (``tests/test_gpu_compile.py``) proves for sm_80 and sm_90 at
    ``PERSISTENT_BB`` rows and ``PERSISTENT_WARPS`` warps, training mode included: the compiled kernel fits
    the shared memory of a block (up to ~160 KB: layout conversions between its two dots go through shared
    memory) and does not spill. At (64, 64) and (32, 128) the training form (SAVE) spills; a product-only
    budget is not enough either: (16, 256) spills and needs 230 KB where (64, 64) needs 120 KB. With
    three-pass TF32 products (the default mode) the kernel spills already at the tiny preset's (16, 64)
    (356-544 B per thread) and 9 KB at (16, 128), so the step kernels run instead (a forced persistent
    launch, ``persistent=True``, still runs within the IEEE budget: correct, slower).
    """
    from .common import precision as active
    if (precision or active()) in ("tf32x3", "tf32"):
        return False
    pp = max(16, triton.next_power_of_2(P))
    cc = max(16, triton.next_power_of_2(C))
    return pp <= PERSISTENT_MAX[0] and cc <= PERSISTENT_MAX[1] and pp * cc <= PERSISTENT_MAX[2]


def persistent_edges() -> list[tuple[int, int]]:
    """The largest padded ``(P, C)`` pairs :func:`persistent_fits` accepts in the IEEE mode (doubling either
    leaves the budget)."""
    sizes = [16 << i for i in range(10)]
    fits = lambda p, c: persistent_fits(p, c, "ieee")  # noqa: E731
    return [(p, c) for p in sizes for c in sizes if fits(p, c) and not fits(2 * p, c) and not fits(p, 2 * c)]


def _tiles() -> tuple[int, int, int, int]:
    if TILES is not None:
        return TILES
    return GPU_TILES if gpu_tiles() else INTERPRETER_TILES


class LSTMLayerFunction(torch.autograd.Function):
    """One biLM layer for both directions; see :func:`lstm_bidirectional_layer`."""

    @staticmethod
    def forward(ctx, x, W_x, W_h, bias, W_P, h0, c0, lengths, cell_clip, proj_clip, residual,
                persistent, reverse):  # type: ignore[override]
        _, B, T, I = x.shape
        P, C = W_P.shape[2], W_P.shape[1]
        dev = x.device
        prec = precision_code()
        save = ctx.needs_input_grad is not None and any(ctx.needs_input_grad[:7])
        shared_x = x.stride(0) == 0  # layer 0: both directions read the same embeddings
        x_in = x[0].contiguous().view(B * T, I) if shared_x else x.contiguous().view(2, B * T, I)
        W_h, W_P = W_h.contiguous(), W_P.contiguous()
        # bilm-tf's +1 forget bias folded into the f block once, in float32 (as AllenNLP stores it and the
        # reference computes it), not added to each pre-activation; the bias gradient is unchanged
        bias = bias.detach().clone().contiguous()
        bias[:, 2 * C:3 * C] += 1.0
        lengths = lengths.to(device=dev, dtype=torch.int32).contiguous()
        # input gates for every (row, time) of both directions: one batched matmul
        gx = matmul(x_in, W_x, prec=prec)
        x = x.contiguous() if residual else x_in  # the residual kernel reads x as (2, B, T, P)
        gx = gx.view(2, B, T, 4 * C)
        h = h0.detach().clone().contiguous()
        c = c0.detach().clone().contiguous()
        y = x.detach().clone() if residual else torch.zeros(2, B, T, P, device=dev)
        if save:
            G = torch.zeros(2, B, T, 4 * C, device=dev)
            Cpre, Cprev, U = (torch.zeros(2, B, T, C, device=dev) for _ in range(3))
            Hprev, Hpre = torch.zeros(2, B, T, P, device=dev), torch.zeros(2, B, T, P, device=dev)
        else:
            G = Cpre = Cprev = U = Hprev = Hpre = y  # unused pointers
        has_cc, has_pc = cell_clip is not None, proj_clip is not None
        cc, pc = float(cell_clip or 0.0), float(proj_clip or 0.0)
        BB, BC, BP, BK = _tiles()
        if persistent is None:
            persistent = persistent_fits(P, C)
        if B > 0 and T > 0:
            if persistent:
                if not persistent_fits(P, C, "ieee"):
                    from elmo_fast.backend import BackendError
                    raise BackendError(f"persistent LSTM kernel: P={P}, C={C} do not fit the register budget")
                pp = max(16, triton.next_power_of_2(P))
                cpad = max(16, triton.next_power_of_2(C))
                pbb = PERSISTENT_BB if gpu_tiles() else BB
                launch(_persistent_fwd, (triton.cdiv(B, pbb), 2),
                       (gx, bias, W_h, W_P, lengths, h, c, x, y, G, Cpre, Cprev, U, Hprev, Hpre, B, T, P, C, cc, pc),
                       dict(HAS_CCLIP=has_cc, HAS_PCLIP=has_pc, RESIDUAL=residual, SAVE=save, PREC=prec, REV=reverse,
                            BB=pbb, PP=pp, CC=cpad), num_warps=PERSISTENT_WARPS, num_stages=2, wide=True)
            else:
                u = torch.zeros(2, B, C, device=dev)
                grid_c = (triton.cdiv(B, BB), triton.cdiv(C, BC), 2)
                grid_p = (triton.cdiv(B, BB), triton.cdiv(P, BP), 2)

                bk_cell = min(BK, TF32X3_CELL_BK) if prec in (4, 5) and gpu_tiles() and TILES is None else BK

                def steps() -> None:  # allocation-free: replayed from a CUDA graph when repeated (launch.py)
                    for s in range(T):
                        launch(_cell_step, grid_c,
                               (gx, bias, W_h, lengths, h, c, u, G, Cpre, Cprev, U, Hprev, s, B, T, P, C, cc),
                               dict(HAS_CLIP=has_cc, SAVE=save, PREC=prec, REV=reverse, BB=BB, BC=BC, BK=bk_cell),
                               num_warps=8, num_stages=1, wide=True)  # pipelined loads spill on sm_80 (compile check)
                        launch(_proj_step, grid_p, (u, W_P, lengths, h, x, y, Hpre, s, B, T, P, C, pc),
                               dict(HAS_CLIP=has_pc, RESIDUAL=residual, SAVE=save, PREC=prec, REV=reverse, BB=BB,
                                    BP=BP, BK=BK), num_warps=8, wide=True)
                run_launches(steps)
        if save:
            ctx.save_for_backward(x_in, W_x, W_h, W_P, lengths, G, Cpre, Cprev, U, Hprev, Hpre)
        ctx.meta = (has_cc, has_pc, cc, pc, residual, prec, shared_x, (B, T, I), reverse)
        return y, h, c

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n):  # type: ignore[override]
        x_in, W_x, W_h, W_P, lengths, G, Cpre, Cprev, U, Hprev, Hpre = ctx.saved_tensors
        has_cc, has_pc, cc, pc, residual, prec, shared_x, (B, T, I), reverse = ctx.meta
        P, C = W_P.shape[2], W_P.shape[1]
        dev = x_in.device
        dy = torch.zeros(2, B, T, P, device=dev) if dy is None else dy.contiguous()
        dh = torch.zeros(2, B, P, device=dev) if dh_n is None else dh_n.clone().contiguous()
        dc = torch.zeros(2, B, C, device=dev) if dc_n is None else dc_n.clone().contiguous()
        dZ = torch.zeros(2, B, T, 4 * C, device=dev)
        dHpre = torch.zeros(2, B, T, P, device=dev)
        BB, BC, BP, BK = _tiles()
        if B > 0 and T > 0:
            grid_c = (triton.cdiv(B, BB), triton.cdiv(C, BC), 2)
            grid_p = (triton.cdiv(B, BB), triton.cdiv(P, BP), 2)

            def steps() -> None:  # allocation-free: replayed from a CUDA graph when repeated (launch.py)
                for s in range(T - 1, -1, -1):
                    launch(_cell_step_bwd, grid_c,
                           (dy, dh, dc, W_P, lengths, G, Cpre, Cprev, Hpre, dZ, dHpre, s, B, T, P, C, cc, pc),
                           dict(HAS_CCLIP=has_cc, HAS_PCLIP=has_pc, PREC=prec, REV=reverse, BB=BB, BC=BC, BK=BK),
                           num_warps=8, wide=True)
                    launch(_hidden_step_bwd, grid_p, (dZ, W_h, lengths, dh, s, B, T, P, C),
                           dict(PREC=prec, REV=reverse, BB=BB, BP=BP, BK=BK), num_warps=8, wide=True)
            run_launches(steps)
        BT = B * T
        dZ2 = dZ.view(2, BT, 4 * C)
        dW_h = matmul(Hprev.view(2, BT, P).transpose(1, 2), dZ2, prec=prec)
        dW_P = matmul(U.view(2, BT, C).transpose(1, 2), dHpre.view(2, BT, P), prec=prec)
        dbias = torch.stack([colsum(dZ2[0]), colsum(dZ2[1])])
        xv = x_in.unsqueeze(0).expand(2, BT, I) if shared_x else x_in
        dW_x = matmul(xv.transpose(1, 2), dZ2, prec=prec)
        dx = matmul(dZ2, W_x.transpose(1, 2), add=dy.view(2, BT, P) if residual else None, prec=prec)
        return dx.view(2, B, T, I), dW_x, dW_h, dbias, dW_P, dh, dc, None, None, None, None, None, None


def lstm_bidirectional_layer(x: torch.Tensor, W_0: torch.Tensor, B: torch.Tensor, W_P_0: torch.Tensor,
                             h0: torch.Tensor, c0: torch.Tensor, lengths: torch.Tensor,
                             cell_clip: float | None, proj_clip: float | None, residual: bool,
                             persistent: bool | None = None,
                             reverse: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both directions of one biLM layer in fused kernels (differentiable).

    Args:
        x: ``(2, B, T, I)`` per-direction inputs (an ``expand`` of one ``(B, T, I)`` tensor is fine).
        W_0: ``(2, I + P, 4C)`` stacked bilm-tf kernels (gate blocks i, j, f, o); B: ``(2, 4C)`` biases
            without the forget bias; W_P_0: ``(2, C, P)``.
        h0, c0: ``(2, B, P)``, ``(2, B, C)`` initial states.
        lengths: ``(B,)`` valid lengths; direction 1 runs each row's valid prefix in reverse.
        residual: add the input to the output (``I == P`` required).
        persistent: force (True) or forbid (False) the persistent kernel; None picks by shape.
        reverse: direction 1 processes each row's valid prefix last-to-first (the biLM); False runs both
            directions forward in time (training streams, where the reverse stream is already reversed).

    Returns:
        ``y`` ``(2, B, T, P)`` (zeros, or ``x`` when residual, at padding), final ``h`` ``(2, B, P)`` and
        ``c`` ``(2, B, C)``.
    """
    check_device("bilstm", x, W_0, B, W_P_0, h0, c0)
    I = x.shape[-1]
    if residual and I != W_P_0.shape[-1]:
        raise ValueError(f"residual connection needs input dim {I} == projection dim {W_P_0.shape[-1]}")
    return LSTMLayerFunction.apply(x, W_0[:, :I], W_0[:, I:], B, W_P_0, h0, c0, lengths, cell_clip, proj_clip,
                                   residual, persistent, reverse)
