"""Sampled softmax loss (TensorFlow recipe, docs/numerics.md#training-recipe) and a chunked full-softmax evaluation,
fused.

**Sampled softmax, forward** (grid: blocks of target rows): the hidden rows stay in registers; the true
logit is a gathered row dot product; then one pass over tiles of the shared negatives gathers the
sampled rows of W and b, computes the logits with one dot per tile, subtracts ``ln q``, masks accidental
hits (sample == the row's target -> -FLT_MAX, as TF) and folds the tile into an online log-sum-exp.
Only the loss and the log-sum-exp ``(N,)`` are written: never the (targets x samples) logits.

**Backward**: two kernels recompute the logits tile by tile from the saved log-sum-exp.
``_sampled_bwd_h`` (grid: row blocks) gives ``dh = d_true * W[target] + Σ_s g p_s W[s]`` and the rows
``d_true * h`` destined for ``W[target]``; ``_sampled_bwd_w`` (grid: sample tiles) gives, for every
sampled row, ``dW[s] = Σ_n g_n p_ns h_n`` and ``db[s]``. :func:`sampled_softmax_grads` returns these
touched-row gradients (for sparse updates); the autograd wrapper scatters them into dense ``(V, P)``
gradients like the reference does.

**Full softmax** (evaluation, e.g. perplexity over a 793k-word vocabulary): grid (blocks of 64 rows,
vocabulary splits); each program runs an online log-sum-exp over its vocabulary slice, tile by tile;
the few partial (max, sum) pairs per row are combined at the end. Memory is O(N * splits), never
O(N * V). Forward only (evaluation); asking for its gradient raises.

No kernel holds a whole hidden row: the logits' dot runs over P in chunks of 64, and the backward programs
each own 256 columns of P (grid axis 1; the logits are recomputed per column chunk, twice at P = 512).
``P <= 1024`` is the compile-checked range (public models: P <= 512).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from elmo_fast.backend import BackendError

from .common import check_device, launch, mm, precision_code

__all__ = ["sampled_softmax_loss", "sampled_softmax_grads", "full_softmax_loss", "SampledSoftmaxFunction"]

BN = 16          # target rows per program
BS = 32          # samples per tile
BK_SAMPLED = 64  # P chunk of the sampled logits' dot
BPD_SAMPLED = 256  # P columns per backward program (grid axis 1)
BV = 32          # vocabulary rows per tile (full softmax; 64 spills on sm_80 at odd P)
BN_FULL = 64     # rows per program of the full softmax: W is streamed once per 64 rows
BK_FULL = 32     # P chunk of the full softmax (64 spills at odd P)
FULL_STAGES = 1
BPD_W = 256      # P columns per program of _sampled_bwd_w
MAX_P = 1024
NEG_FLT_MAX = tl.constexpr(-3.4028234663852886e38)  # what TF gives an accidental hit


@triton.jit
def _sample_rows(b_ptr, ids_ptr, qs_ptr, s0, S, BS: tl.constexpr):
    """Ids, mask and logit correction ``b - ln q`` of one sample tile (loop-invariant where rows vary)."""
    rs = s0 + tl.arange(0, BS)
    sm = rs < S
    sid = tl.load(ids_ptr + rs, mask=sm, other=0)
    corr = tl.load(b_ptr + sid, mask=sm, other=0.0) - tl.log(tl.load(qs_ptr + rs, mask=sm, other=1.0))
    return sid, sm, corr


@triton.jit
def _tile_logits(h_ptr, rn, nm, tgt, w_ptr, sid, sm, corr, P,
                 REMOVE_HITS: tl.constexpr, PREC: tl.constexpr, BN: tl.constexpr, BS: tl.constexpr,
                 BK: tl.constexpr):
    """Logits ``(BN, BS)`` of rows ``rn`` against one sample tile, corrected by -ln q, hits masked, padding
    -inf; the dot runs over P in chunks of BK (no full hidden row is held)."""
    acc = tl.zeros((BN, BS), dtype=tl.float32)
    for k0 in range(0, P, BK):
        rk = k0 + tl.arange(0, BK)
        km = rk < P
        h = tl.load(h_ptr + rn[:, None] * P + rk[None, :], mask=nm[:, None] & km[None, :], other=0.0)
        ws = tl.load(w_ptr + sid[:, None] * P + rk[None, :], mask=sm[:, None] & km[None, :], other=0.0)
        acc += mm(h, tl.trans(ws), PREC)
    logits = acc + corr[None, :]
    if REMOVE_HITS:
        logits = tl.where(tgt[:, None] == sid[None, :], NEG_FLT_MAX, logits)
    return tl.where(sm[None, :], logits, float("-inf"))


@triton.jit
def _true_logit(h_ptr, rn, nm, tgt, w_ptr, b_ptr, qt_ptr, P, BK: tl.constexpr):
    acc = tl.load(b_ptr + tgt, mask=nm, other=0.0) - tl.log(tl.load(qt_ptr + rn, mask=nm, other=1.0))
    for k0 in range(0, P, BK):
        rk = k0 + tl.arange(0, BK)
        m2 = nm[:, None] & (rk[None, :] < P)
        h = tl.load(h_ptr + rn[:, None] * P + rk[None, :], mask=m2, other=0.0)
        wt = tl.load(w_ptr + tgt[:, None] * P + rk[None, :], mask=m2, other=0.0)
        acc += tl.sum(h * wt, axis=1)
    return acc


@triton.jit(do_not_specialize=["N", "S"])
def _sampled_fwd(h_ptr, tgt_ptr, w_ptr, b_ptr, ids_ptr, qt_ptr, qs_ptr, loss_ptr, lse_ptr, N, S, P,
                 REMOVE_HITS: tl.constexpr, PREC: tl.constexpr, BN: tl.constexpr, BS: tl.constexpr,
                 BK: tl.constexpr):
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    nm = rn < N
    tgt = tl.load(tgt_ptr + rn, mask=nm, other=0)
    true = _true_logit(h_ptr, rn, nm, tgt, w_ptr, b_ptr, qt_ptr, P, BK)
    m = true
    l = tl.full((BN,), 1.0, dtype=tl.float32)
    for s0 in range(0, S, BS):
        sid, sm, corr = _sample_rows(b_ptr, ids_ptr, qs_ptr, s0, S, BS)
        logits = _tile_logits(h_ptr, rn, nm, tgt, w_ptr, sid, sm, corr, P, REMOVE_HITS, PREC, BN, BS, BK)
        m_new = tl.maximum(m, tl.max(logits, axis=1))
        l = l * tl.exp(m - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), axis=1)
        m = m_new
    lse = m + tl.log(l)
    tl.store(loss_ptr + rn, lse - true, mask=nm)
    tl.store(lse_ptr + rn, lse, mask=nm)


@triton.jit(do_not_specialize=["N", "S"])
def _sampled_bwd_h(h_ptr, tgt_ptr, w_ptr, b_ptr, ids_ptr, qt_ptr, qs_ptr, lse_ptr, g_ptr, dh_ptr, dwt_ptr, dtrue_ptr,
                   N, S, P, REMOVE_HITS: tl.constexpr, PREC: tl.constexpr, BN: tl.constexpr, BS: tl.constexpr,
                   BK: tl.constexpr, BPD: tl.constexpr):
    """Grid (row blocks, P chunks of BPD): ``dh[rows, chunk]`` (the logits are recomputed per chunk)."""
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    rp = tl.program_id(1) * BPD + tl.arange(0, BPD)
    nm = rn < N
    pm = rp < P
    m2 = nm[:, None] & pm[None, :]
    tgt = tl.load(tgt_ptr + rn, mask=nm, other=0)
    lse = tl.load(lse_ptr + rn, mask=nm, other=0.0)
    g = tl.load(g_ptr + rn, mask=nm, other=0.0)
    true = _true_logit(h_ptr, rn, nm, tgt, w_ptr, b_ptr, qt_ptr, P, BK)
    d_true = g * (tl.exp(true - lse) - 1.0)
    dh = d_true[:, None] * tl.load(w_ptr + tgt[:, None] * P + rp[None, :], mask=m2, other=0.0)
    for s0 in range(0, S, BS):
        sid, sm, corr = _sample_rows(b_ptr, ids_ptr, qs_ptr, s0, S, BS)
        logits = _tile_logits(h_ptr, rn, nm, tgt, w_ptr, sid, sm, corr, P, REMOVE_HITS, PREC, BN, BS, BK)
        ds = g[:, None] * tl.exp(logits - lse[:, None])
        ws = tl.load(w_ptr + sid[:, None] * P + rp[None, :], mask=sm[:, None] & pm[None, :], other=0.0)
        dh += mm(ds, ws, PREC)
    tl.store(dh_ptr + rn[:, None] * P + rp[None, :], dh, mask=m2)
    h = tl.load(h_ptr + rn[:, None] * P + rp[None, :], mask=m2, other=0.0)
    tl.store(dwt_ptr + rn[:, None] * P + rp[None, :], d_true[:, None] * h, mask=m2)
    if tl.program_id(1) == 0:
        tl.store(dtrue_ptr + rn, d_true, mask=nm)


@triton.jit(do_not_specialize=["N", "S"])
def _sampled_bwd_w(h_ptr, tgt_ptr, w_ptr, b_ptr, ids_ptr, qs_ptr, lse_ptr, g_ptr, dws_ptr, dbs_ptr,
                   N, S, P, REMOVE_HITS: tl.constexpr, PREC: tl.constexpr, BN: tl.constexpr, BS: tl.constexpr,
                   BK: tl.constexpr, BPD: tl.constexpr):
    """Grid (sample tiles, P chunks of BPD): ``dW[samples, chunk]`` and (chunk 0) ``db[samples]``."""
    s0 = tl.program_id(0) * BS
    rp = tl.program_id(1) * BPD + tl.arange(0, BPD)
    pm = rp < P
    sid, sm, corr = _sample_rows(b_ptr, ids_ptr, qs_ptr, s0, S, BS)  # loop-invariant: hoisted
    dws = tl.zeros((BS, BPD), dtype=tl.float32)
    dbs = tl.zeros((BS,), dtype=tl.float32)
    for n0 in range(0, N, BN):
        rn = n0 + tl.arange(0, BN)
        nm = rn < N
        tgt = tl.load(tgt_ptr + rn, mask=nm, other=0)
        lse = tl.load(lse_ptr + rn, mask=nm, other=0.0)
        g = tl.load(g_ptr + rn, mask=nm, other=0.0)
        logits = _tile_logits(h_ptr, rn, nm, tgt, w_ptr, sid, sm, corr, P, REMOVE_HITS, PREC, BN, BS, BK)
        ds = g[:, None] * tl.exp(logits - lse[:, None])  # (BN, BS); padding rows have g = 0
        h = tl.load(h_ptr + rn[:, None] * P + rp[None, :], mask=nm[:, None] & pm[None, :], other=0.0)
        dws += mm(tl.trans(ds), h, PREC)
        dbs += tl.sum(ds, axis=0)
    rs = s0 + tl.arange(0, BS)
    tl.store(dws_ptr + rs[:, None] * P + rp[None, :], dws, mask=sm[:, None] & pm[None, :])
    if tl.program_id(1) == 0:
        tl.store(dbs_ptr + rs, dbs, mask=sm)


def _check(hidden: torch.Tensor, weight: torch.Tensor) -> tuple[int, int]:
    """Validate shapes; returns the P tiles ``(BK, BPD)``: the logits' reduction chunk and the backward's
    gradient chunk (each backward program recomputes the logits for its ``BPD`` columns: ``P / BPD`` times)."""
    P = hidden.shape[1]
    if hidden.dim() != 2 or weight.dim() != 2 or weight.shape[1] != P:
        raise ValueError(f"hidden (N, P) and weight (V, P) expected, found {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if P > MAX_P:
        raise BackendError(f"triton sampled-softmax kernels: P = {P} > {MAX_P} (compile-checked limit)")
    pp = max(16, triton.next_power_of_2(P))
    return min(pp, BK_SAMPLED), min(pp, BPD_SAMPLED)


def _prep(hidden, targets, weight, bias, sampled_ids, q_t, q_s):
    return (hidden.contiguous(), targets.to(torch.int64).contiguous(), weight.contiguous(), bias.contiguous(),
            sampled_ids.to(torch.int64).contiguous(), q_t.to(torch.float32).contiguous(),
            q_s.to(torch.float32).contiguous())


def sampled_softmax_grads(hidden, targets, weight, bias, sampled_ids, q_t, q_s, lse, grad_loss,
                          remove_accidental_hits: bool = True, prec: int | None = None):
    """Gradients of ``Σ grad_loss * loss`` restricted to what the loss touches.

    Returns:
        ``dh`` ``(N, P)``; for the true rows ``d_true_rows`` ``(N, P)`` (add into ``W[targets]``) and
        ``d_true`` ``(N,)`` (add into ``b[targets]``); for the samples ``dW_sampled`` ``(S, P)`` and
        ``db_sampled`` ``(S,)`` (add into ``W[sampled_ids]``, ``b[sampled_ids]``).
    """
    hidden, targets, weight, bias, sampled_ids, q_t, q_s = _prep(hidden, targets, weight, bias, sampled_ids, q_t, q_s)
    bk, bpd = _check(hidden, weight)
    prec = precision_code() if prec is None else prec
    N, P = hidden.shape
    S = sampled_ids.shape[0]
    dev = hidden.device
    g = grad_loss.to(torch.float32).contiguous()
    dh = torch.empty(N, P, device=dev)
    dwt = torch.empty(N, P, device=dev)
    dtrue = torch.empty(N, device=dev)
    dws = torch.empty(S, P, device=dev)
    dbs = torch.empty(S, device=dev)
    if N > 0:
        launch(_sampled_bwd_h, (triton.cdiv(N, BN), triton.cdiv(P, bpd)),
               (hidden, targets, weight, bias, sampled_ids, q_t, q_s, lse, g, dh, dwt, dtrue, N, S, P),
               dict(REMOVE_HITS=remove_accidental_hits, PREC=prec, BN=BN, BS=BS, BK=bk, BPD=bpd), num_warps=8,
               num_stages=1)
    if S > 0:
        bpd_w = min(bpd, BPD_W)
        launch(_sampled_bwd_w, (triton.cdiv(S, BS), triton.cdiv(P, bpd_w)),
               (hidden, targets, weight, bias, sampled_ids, q_s, lse, g, dws, dbs, N, S, P),
               dict(REMOVE_HITS=remove_accidental_hits, PREC=prec, BN=BN, BS=BS, BK=bk, BPD=bpd_w),
               num_warps=8 if prec in (4, 5) else 4, num_stages=1)  # tf32x3 at 4 warps: 32 B spill, sm_80, P 513
    return dh, dwt, dtrue, dws, dbs


class SampledSoftmaxFunction(torch.autograd.Function):
    """autograd wrapper; the backward scatters the touched rows into dense ``(V, P)``/``(V,)`` gradients."""

    @staticmethod
    def forward(ctx, hidden, targets, weight, bias, sampled_ids, q_t, q_s, remove_hits):  # type: ignore[override]
        hidden, targets, weight, bias, sampled_ids, q_t, q_s = _prep(hidden, targets, weight, bias, sampled_ids,
                                                                     q_t, q_s)
        bk, _ = _check(hidden, weight)
        prec = precision_code()
        N, P = hidden.shape
        S = sampled_ids.shape[0]
        loss = torch.empty(N, device=hidden.device)
        lse = torch.empty(N, device=hidden.device)
        if N > 0:
            launch(_sampled_fwd, (triton.cdiv(N, BN),),
                   (hidden, targets, weight, bias, sampled_ids, q_t, q_s, loss, lse, N, S, P),
                   dict(REMOVE_HITS=remove_hits, PREC=prec, BN=BN, BS=BS, BK=bk), num_warps=8)
        ctx.save_for_backward(hidden, targets, weight, bias, sampled_ids, q_t, q_s, lse)
        ctx.meta = (remove_hits, prec)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        hidden, targets, weight, bias, sampled_ids, q_t, q_s, lse = ctx.saved_tensors
        remove_hits, prec = ctx.meta
        dh, dwt, dtrue, dws, dbs = sampled_softmax_grads(hidden, targets, weight, bias, sampled_ids, q_t, q_s, lse,
                                                         grad_loss, remove_hits, prec)
        dW = torch.zeros_like(weight)
        dW.index_add_(0, targets, dwt).index_add_(0, sampled_ids, dws)
        db = torch.zeros_like(bias)
        db.index_add_(0, targets, dtrue).index_add_(0, sampled_ids, dbs)
        return dh, None, dW, db, None, None, None, None


def sampled_softmax_loss(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                         sampled_ids: torch.Tensor, target_expected_count: torch.Tensor,
                         sampled_expected_count: torch.Tensor, remove_accidental_hits: bool = True) -> torch.Tensor:
    """Fused equivalent of :func:`elmo_fast.nn.softmax.sampled_softmax_loss` (same arguments and result):
    hidden ``(N, P)``, targets ``(N,)``, weight ``(V, P)``, bias ``(V,)``, sampled_ids ``(S,)``, expected
    counts ``(N,)`` and ``(S,)`` -> per-target losses ``(N,)``, differentiable in hidden, weight and bias."""
    check_device("sampled_softmax_loss", hidden, weight, bias, targets, sampled_ids)
    return SampledSoftmaxFunction.apply(hidden, targets, weight, bias, sampled_ids, target_expected_count,
                                        sampled_expected_count, bool(remove_accidental_hits))


@triton.jit(do_not_specialize=["N", "V", "V_PER_SPLIT", "SPLITS"])
def _full_partial(h_ptr, w_ptr, b_ptr, m_ptr, l_ptr, N, V, P, V_PER_SPLIT, SPLITS,
                  PREC: tl.constexpr, BN: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr):
    """Online log-sum-exp of rows ``rn`` over the vocabulary slice of this split. ``BN`` is large (64) so
    that W, the dominant traffic, is streamed once per 64 rows; h is re-read per P chunk (from L1/L2)."""
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    split = tl.program_id(1)
    nm = rn < N
    m = tl.full((BN,), float("-inf"), dtype=tl.float32)
    l = tl.zeros((BN,), dtype=tl.float32)
    v_start = split * V_PER_SPLIT
    v_end = tl.minimum(v_start + V_PER_SPLIT, V)
    for v0 in range(v_start, v_end, BV):
        rv = v0 + tl.arange(0, BV)
        vm = rv < v_end
        acc = tl.zeros((BN, BV), dtype=tl.float32)
        for k0 in range(0, P, BK):
            rk = k0 + tl.arange(0, BK)
            km = rk < P
            h = tl.load(h_ptr + rn[:, None] * P + rk[None, :], mask=nm[:, None] & km[None, :], other=0.0)
            wt = tl.load(w_ptr + rv[None, :] * P + rk[:, None], mask=km[:, None] & vm[None, :], other=0.0)
            acc += mm(h, wt, PREC)
        logits = acc + tl.load(b_ptr + rv, mask=vm, other=0.0)[None, :]
        logits = tl.where(vm[None, :], logits, float("-inf"))
        m_new = tl.maximum(m, tl.max(logits, axis=1))
        l = l * tl.exp(m - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), axis=1)
        m = m_new
    tl.store(m_ptr + rn * SPLITS + split, m, mask=nm)
    tl.store(l_ptr + rn * SPLITS + split, l, mask=nm)


def full_softmax_loss(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      chunk_size: int = 16384) -> torch.Tensor:
    """``-log softmax(h Wᵀ + b)[target]`` per row, ``(N,)``, chunked over the vocabulary (evaluation only).

    Args:
        hidden: ``(N, P)``; targets: ``(N,)``; weight: ``(V, P)``; bias: ``(V,)``.
        chunk_size: vocabulary rows per program (each program runs an online log-sum-exp over its chunk).
    """
    check_device("full_softmax_loss", hidden, weight, bias, targets)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad or bias.requires_grad):
        raise BackendError("triton full_softmax_loss is an evaluation kernel (no backward); run it under "
                           "torch.no_grad() or use the reference for training with the full softmax")
    if hidden.dim() != 2 or weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"hidden (N, P) and weight (V, P) expected, found {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    hidden, targets = hidden.contiguous(), targets.to(torch.int64).contiguous()
    weight, bias = weight.contiguous(), bias.contiguous()
    N, P = hidden.shape
    V = weight.shape[0]
    per_split = max(BV, triton.cdiv(chunk_size, BV) * BV)
    splits = max(1, triton.cdiv(V, per_split))
    dev = hidden.device
    m = torch.empty(N, splits, device=dev)
    l = torch.empty(N, splits, device=dev)
    if N == 0:
        return torch.empty(N, device=dev)
    launch(_full_partial, (triton.cdiv(N, BN_FULL), splits), (hidden, weight, bias, m, l, N, V, P, per_split, splits),
           dict(PREC=precision_code(), BN=BN_FULL, BV=BV, BK=BK_FULL), num_warps=8, num_stages=FULL_STAGES)
    # the true logits: one gathered row dot product per target (N x P, negligible next to N x V x P)
    true = (hidden * weight.index_select(0, targets)).sum(dim=1) + bias.index_select(0, targets)
    m_max = m.max(dim=1).values
    lse = m_max + torch.log((l * torch.exp(m - m_max[:, None])).sum(dim=1))
    return lse - true
