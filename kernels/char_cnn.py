"""Fused char-CNN: char embedding gather + every filter's convolution + bias + max over positions +
activation in one kernel (docs/numerics.md#char-cnn), forward and backward.

Nothing of size (tokens x filters x positions) is ever written: a program's (tokens x positions x
channels) block lives in registers only and is reduced by the max at once; the kernel writes the features
``(N, F)`` and the argmax position ``(N, F)`` int32 that the backward needs (the gradient of a max flows
to its argmax, the first maximal position). Ties are almost always between identical windows (runs of
padding characters), whose gradients are identical; a coincidental tie between different windows
could route a gradient differently from torch's ``max``.

Layout: the per-filter weights ``(1, w_i, d, n_i)`` are packed into one ``(w_max, d, F)`` tensor (zero
rows for k >= w_i), and the output columns are cut into blocks that never straddle two filters; a small
int32 table gives each block its filter's column range and width. One launch covers all filters.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import check_device, gpu_tiles, launch, mm, precision_code, tanh

__all__ = ["char_cnn", "CharCNNFunction", "pack_filters"]

BLOCK_N = 8   # tokens per program (x 64 padded window positions = 512 dot rows, 64 fp32 registers/thread)
# The interpreter pays ~1 ms of Python per tensor op and program, so it runs fewer, larger programs: a
# different (still valid, just register-hungry on a GPU) tile size for the same kernel.
INTERPRETER_BLOCK_N = 32
BLOCK_O = 32  # output channels per program


@triton.jit(do_not_specialize=["N", "L", "D", "F"])
def _char_cnn_fwd(ids_ptr, emb_ptr, w_ptr, b_ptr, blk_ptr, out_ptr, arg_ptr, N, L, D, F,
                  ACT: tl.constexpr, PREC: tl.constexpr, DPAD: tl.constexpr, NPOS: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr):
    """One program: BLOCK_N tokens x BLOCK_O channels of one filter, all NPOS window positions at once.

    The (token, position) pairs form the M axis of a tensor-core dot: for each window offset k,
    ``acc[(n, p), o] += emb[ids[n, p + k]] @ W[k, :, o]`` (M = BLOCK_N * NPOS, K = DPAD, N = BLOCK_O); the
    (tokens x positions x channels) block lives in registers only and is reduced by the max right away.
    """
    pid_n = tl.program_id(0)
    blk = tl.program_id(1)
    col0 = tl.load(blk_ptr + blk * 3)
    col_end = tl.load(blk_ptr + blk * 3 + 1)
    width = tl.load(blk_ptr + blk * 3 + 2)
    r = tl.arange(0, BLOCK_N * NPOS)
    rn = pid_n * BLOCK_N + r // NPOS  # token of each (token, position) row
    rpos = r % NPOS                   # window start position of each row
    ro = col0 + tl.arange(0, BLOCK_O)
    rd = tl.arange(0, DPAD)
    omask = ro < col_end
    acc = tl.zeros((BLOCK_N * NPOS, BLOCK_O), dtype=tl.float32)
    for k in range(0, width):
        pos = rpos + k
        cid = tl.load(ids_ptr + rn * L + pos, mask=(rn < N) & (pos < L), other=0)
        x = tl.load(emb_ptr + (cid[:, None] - 1) * D + rd[None, :], mask=(cid[:, None] > 0) & (rd[None, :] < D),
                    other=0.0)
        w = tl.load(w_ptr + k * D * F + rd[:, None] * F + ro[None, :], mask=(rd[:, None] < D) & omask[None, :],
                    other=0.0)
        acc += mm(x, w, PREC)
    acc3 = tl.reshape(acc, (BLOCK_N, NPOS, BLOCK_O))
    p3 = tl.reshape(rpos, (BLOCK_N, NPOS))
    acc3 = tl.where((p3 <= L - width)[:, :, None], acc3, float("-inf"))  # only the 51 - w valid windows
    best = tl.max(acc3, axis=1)
    arg = tl.argmax(acc3, axis=1, tie_break_left=True)  # the first maximal position wins (as a strict >)
    best += tl.load(b_ptr + ro, mask=omask, other=0.0)[None, :]
    if ACT == 0:
        y = tl.maximum(best, 0.0)
    else:
        y = tanh(best)
    rt = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m2 = (rt[:, None] < N) & omask[None, :]
    tl.store(out_ptr + rt[:, None] * F + ro[None, :], y, mask=m2)
    tl.store(arg_ptr + rt[:, None] * F + ro[None, :], arg.to(tl.int32), mask=m2)


@triton.jit
def _dpre_tile(y_ptr, gy_ptr, n0, N, F, ro, omask, ACT: tl.constexpr, BLOCK_N: tl.constexpr):
    """Rows ``n0 : n0 + BLOCK_N`` x columns ``ro`` of the activation's input gradient ``dy * act'(y)`` (recomputed
    from ``y`` and ``dy``); also returns the rows, mask and offsets of the tile."""
    rn = n0 + tl.arange(0, BLOCK_N)
    m2 = (rn[:, None] < N) & omask[None, :]
    offs = rn[:, None] * F + ro[None, :]
    y = tl.load(y_ptr + offs, mask=m2, other=0.0)
    gy = tl.load(gy_ptr + offs, mask=m2, other=0.0)
    if ACT == 0:
        dpre = tl.where(y > 0, gy, 0.0)
    else:
        dpre = gy * (1.0 - y * y)
    return rn, m2, offs, dpre


@triton.jit(do_not_specialize=["N", "L", "D", "F", "W_MAX", "TOK_CHUNK"])
def _char_cnn_bwd_w(ids_ptr, emb_ptr, blk_ptr, y_ptr, arg_ptr, gy_ptr, dpre_ptr, dw_ptr, db_ptr,
                    N, L, D, F, W_MAX, TOK_CHUNK,
                    ACT: tl.constexpr, DPAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr):
    """Per (column block, token chunk): dpre = dy * act'; partial ``dW[k, c, o] = Σ_n x[n, argmax + k, c] dpre``
    (only the argmax window of each (token, channel) gets a gradient) and partial db."""
    blk = tl.program_id(0)
    chunk = tl.program_id(1)
    col0 = tl.load(blk_ptr + blk * 3)
    col_end = tl.load(blk_ptr + blk * 3 + 1)
    width = tl.load(blk_ptr + blk * 3 + 2)
    ro = col0 + tl.arange(0, BLOCK_O)
    rd = tl.arange(0, DPAD)
    omask = ro < col_end
    n_start = chunk * TOK_CHUNK
    n_end = tl.minimum(n_start + TOK_CHUNK, N)
    # pass 1: dpre for the bx kernel, and db. (This program never reads back what it wrote: on a GPU a
    # store followed by a load of the same address from another warp would race.)
    db = tl.zeros((BLOCK_O,), dtype=tl.float32)
    for n0 in range(n_start, n_end, BLOCK_N):
        rn, m2, offs, dpre = _dpre_tile(y_ptr, gy_ptr, n0, N, F, ro, omask, ACT, BLOCK_N)
        tl.store(dpre_ptr + offs, dpre, mask=m2)
        db += tl.sum(dpre, axis=0)
    # pass 2, per window offset k: dW[k] accumulated in registers over the chunk's tokens, stored once
    dmask = omask[:, None] & (rd[None, :] < D)
    for k in range(0, width):
        acc = tl.zeros((BLOCK_O, DPAD), dtype=tl.float32)
        for n0 in range(n_start, n_end, BLOCK_N):
            rn, m2, offs, dpre = _dpre_tile(y_ptr, gy_ptr, n0, N, F, ro, omask, ACT, BLOCK_N)
            am = tl.load(arg_ptr + offs, mask=m2, other=0)
            cid = tl.load(ids_ptr + rn[:, None] * L + am + k, mask=m2, other=0)  # (BLOCK_N, BLOCK_O)
            e = tl.load(emb_ptr + (cid[:, :, None] - 1) * D + rd[None, None, :],
                        mask=(m2 & (cid > 0))[:, :, None] & (rd[None, None, :] < D), other=0.0)
            acc += tl.sum(e * dpre[:, :, None], axis=0)  # (BLOCK_O, DPAD)
        tl.store(dw_ptr + chunk * (W_MAX * D * F) + k * D * F + rd[None, :] * F + ro[:, None], acc, mask=dmask)
    tl.store(db_ptr + chunk * F + ro, db, mask=omask)


@triton.jit(do_not_specialize=["n_blocks", "N", "L", "D", "F"])
def _char_cnn_bwd_x(blk_ptr, n_blocks, w_ptr, arg_ptr, dpre_ptr, dx_ptr, N, L, D, F,
                    PREC: tl.constexpr, DPAD: tl.constexpr, NPOS: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr):
    """Per token block: ``dX[n, q, :] = Σ_(o, k: argmax[n, o] + k == q) dpre[n, o] W[k, :, o]`` for all char
    positions q at once, as dots of the position-selected dpre ``(BLOCK_N * NPOS, BLOCK_O)`` with ``W[k]ᵀ``."""
    pid_n = tl.program_id(0)
    rt = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rq = tl.arange(0, NPOS)
    rd = tl.arange(0, DPAD)
    acc = tl.zeros((BLOCK_N * NPOS, DPAD), dtype=tl.float32)
    for blk in range(0, n_blocks):
        col0 = tl.load(blk_ptr + blk * 3)
        col_end = tl.load(blk_ptr + blk * 3 + 1)
        width = tl.load(blk_ptr + blk * 3 + 2)
        ro = col0 + tl.arange(0, BLOCK_O)
        m2 = (rt[:, None] < N) & (ro[None, :] < col_end)
        offs = rt[:, None] * F + ro[None, :]
        dpre = tl.load(dpre_ptr + offs, mask=m2, other=0.0)
        am = tl.load(arg_ptr + offs, mask=m2, other=-1000)
        for k in range(0, width):
            sel = tl.where((am[:, None, :] + k) == rq[None, :, None], dpre[:, None, :], 0.0)  # (BN, NPOS, BO)
            wt = tl.load(w_ptr + k * D * F + rd[None, :] * F + ro[:, None],
                         mask=(ro[:, None] < col_end) & (rd[None, :] < D), other=0.0)  # W[k]^T (BO, DPAD)
            acc += mm(tl.reshape(sel, (BLOCK_N * NPOS, BLOCK_O)), wt, PREC)
    r = tl.arange(0, BLOCK_N * NPOS)
    rn = pid_n * BLOCK_N + r // NPOS
    q = r % NPOS
    tl.store(dx_ptr + rn[:, None] * (L * D) + q[:, None] * D + rd[None, :], acc,
             mask=(rn[:, None] < N) & (q[:, None] < L) & (rd[None, :] < D))


def _gpu_block_n(dpad: int) -> int:
    """Tokens per program on the GPU: 8 at the public models' 16-dim char embeddings, fewer for wider ones
    (the (tokens x 64 positions, DPAD) embedding tile must stay in registers: 8 tokens at DPAD 32 spill)."""
    return max(2, BLOCK_N * 16 // max(16, dpad))


def pack_filters(conv_weights: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Pack per-filter ``(1, w, d, n)`` weights into ``(w_max, d, F)`` and build the block table.

    Returns:
        packed weights, block table ``(n_blocks, 3)`` int32 rows ``(col_start, filter_col_end, width)``
        and the filter shapes ``[(w, n), ...]``.
    """
    shapes = [(int(W.shape[1]), int(W.shape[3])) for W in conv_weights]
    d = int(conv_weights[0].shape[2])
    w_max = max(w for w, _ in shapes)
    F_ = sum(n for _, n in shapes)
    packed = conv_weights[0].new_zeros(w_max, d, F_)
    rows = []
    col = 0
    for W, (w, n) in zip(conv_weights, shapes):
        packed[:w, :, col:col + n] = W[0]
        for c0 in range(col, col + n, BLOCK_O):
            rows.append((c0, col + n, w))
        col += n
    table = torch.tensor(rows, dtype=torch.int32, device=packed.device)
    return packed, table, shapes


class CharCNNFunction(torch.autograd.Function):
    """autograd wrapper: ``(char_ids, char_embed, packed W, bias) -> (N, F)``."""

    @staticmethod
    def forward(ctx, char_ids, char_embed, packed, bias, table, activation: str):  # type: ignore[override]
        N, L = char_ids.shape
        w_max, D, F_ = packed.shape
        if L < w_max:
            raise ValueError(f"char_cnn: {L} characters per token is fewer than the widest filter ({w_max})")
        ids = char_ids.to(torch.int32).contiguous()
        emb = char_embed.contiguous()
        packed = packed.contiguous()
        out = torch.empty(N, F_, device=emb.device, dtype=torch.float32)
        arg = torch.empty(N, F_, device=emb.device, dtype=torch.int32)
        act = 0 if activation == "relu" else 1
        prec = precision_code()
        dpad = max(16, triton.next_power_of_2(D))
        npos = triton.next_power_of_2(L)
        if N > 0:
            block_n = _gpu_block_n(dpad) if gpu_tiles() else INTERPRETER_BLOCK_N
            grid = (triton.cdiv(N, block_n), table.shape[0])
            launch(_char_cnn_fwd, grid, (ids, emb, packed, bias.contiguous(), table, out, arg, N, L, D, F_),
                   dict(ACT=act, PREC=prec, DPAD=dpad, NPOS=npos, BLOCK_N=block_n, BLOCK_O=BLOCK_O), num_warps=8)
        ctx.save_for_backward(ids, emb, packed, table, out, arg)
        ctx.meta = (act, prec, dpad, npos)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        ids, emb, packed, table, out, arg = ctx.saved_tensors
        act, prec, dpad, npos = ctx.meta
        N, L = ids.shape
        w_max, D, F_ = packed.shape
        grad_out = grad_out.contiguous()
        tok_chunk = 256
        n_chunks = max(1, triton.cdiv(N, tok_chunk))
        dw_parts = torch.zeros(n_chunks, w_max, D, F_, device=emb.device, dtype=torch.float32)
        db_parts = torch.zeros(n_chunks, F_, device=emb.device, dtype=torch.float32)
        dpre = torch.empty(N, F_, device=emb.device, dtype=torch.float32)
        dx = torch.zeros(N, L, D, device=emb.device, dtype=torch.float32)
        if N > 0:
            launch(_char_cnn_bwd_w, (table.shape[0], n_chunks),
                   (ids, emb, table, out, arg, grad_out, dpre, dw_parts, db_parts, N, L, D, F_, w_max, tok_chunk),
                   dict(ACT=act, DPAD=dpad, BLOCK_N=32, BLOCK_O=BLOCK_O), num_warps=8)  # 4 warps spill
            block_n = _gpu_block_n(dpad) if gpu_tiles() else INTERPRETER_BLOCK_N
            launch(_char_cnn_bwd_x, (triton.cdiv(N, block_n),),
                   (table, table.shape[0], packed, arg, dpre, dx, N, L, D, F_),
                   dict(PREC=prec, DPAD=dpad, NPOS=npos, BLOCK_N=block_n, BLOCK_O=BLOCK_O), num_warps=8)
        d_packed = dw_parts.sum(0)
        d_bias = db_parts.sum(0)
        # scatter char-position gradients to the (tiny, 261-row) table; id 0 is the fixed zero row
        d_table = torch.zeros(emb.shape[0] + 1, D, device=emb.device, dtype=torch.float32)
        d_table.index_add_(0, ids.reshape(-1).long(), dx.reshape(-1, D))
        return None, d_table[1:], d_packed, d_bias, None, None


def char_cnn(char_ids: torch.Tensor, char_embed: torch.Tensor, conv_weights: list[torch.Tensor],
             conv_biases: list[torch.Tensor], activation: str) -> torch.Tensor:
    """Fused equivalent of :func:`elmo_fast.nn.token_encoder.char_cnn_features` (differentiable).

    Args:
        char_ids: ``(N, L)`` int64 ids in 0..261 (0 = padding token, embeds to zeros).
        char_embed: ``(261, d)``; conv_weights: per filter ``(1, w, d, n)``; conv_biases: per filter ``(n,)``.
        activation: ``"relu"`` or ``"tanh"``.

    Returns:
        ``(N, F)`` float32 features in filter order.
    """
    if activation not in ("relu", "tanh"):
        raise ValueError(f"char_cnn: activation {activation!r}: expected 'relu' or 'tanh'")
    check_device("token_encoder", char_ids, char_embed, *conv_weights, *conv_biases)
    packed, table, _ = pack_filters(list(conv_weights))  # differentiable packing (cat of slices)
    bias = torch.cat(list(conv_biases))
    return CharCNNFunction.apply(char_ids, char_embed, packed, bias, table, activation)
