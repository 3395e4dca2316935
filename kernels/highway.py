"""Highway layer as one matmul with the gate/ReLU/blend fused into the epilogue, plus the projection
(docs/numerics.md#highway), forward and backward.

Forward, per output tile: ``acc_g = x @ W_carry[:, tile]`` and ``acc_t = x @ W_transform[:, tile]`` share
every loaded ``x`` tile; the epilogue computes ``g = σ(acc_g + b_carry)``, ``t = relu(acc_t + b_transform)``
and ``y = g*t + (1-g)*x[:, tile]`` and writes ``y``, ``g`` and ``t`` (the latter two for the backward).

Backward: one elementwise kernel turns ``dy`` into the pre-activation gradients ``[dg_pre | dt_pre]``
``(N, 2F)`` and the carry term ``dy*(1-g)``; then ``dx = [dg_pre | dt_pre] @ [W_carry | W_transform]ᵀ +
dy*(1-g)`` (one matmul with the add in its epilogue), ``[dW_carry | dW_transform] = xᵀ @ [dg_pre | dt_pre]``,
and the bias gradients are column sums.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import check_device, colsum, gpu_tiles, launch, matmul, mm, precision_code

__all__ = ["highway", "projection", "HighwayFunction", "ProjectionFunction"]

#: GPU tiles of the fused highway forward (rows, columns, K chunk), 8 warps, 2 stages: the compile check
#: finds spills on sm_80 with a K chunk of 32 or 3 stages (two float32 accumulators per program)
HIGHWAY_TILES = (64, 64, 16)


@triton.jit(do_not_specialize=["N"])
def _highway_fwd(x_ptr, wc_ptr, bc_ptr, wt_ptr, bt_ptr, y_ptr, g_ptr, t_ptr, N, F,
                 PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc_g = tl.zeros((BM, BN), dtype=tl.float32)
    acc_t = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, F, BK):
        ka = k0 + rk
        x = tl.load(x_ptr + rm[:, None] * F + ka[None, :], mask=(rm[:, None] < N) & (ka[None, :] < F), other=0.0)
        wmask = (ka[:, None] < F) & (rn[None, :] < F)
        wc = tl.load(wc_ptr + ka[:, None] * F + rn[None, :], mask=wmask, other=0.0)
        wt = tl.load(wt_ptr + ka[:, None] * F + rn[None, :], mask=wmask, other=0.0)
        acc_g += mm(x, wc, PREC)
        acc_t += mm(x, wt, PREC)
    nmask = rn < F
    g = tl.sigmoid(acc_g + tl.load(bc_ptr + rn, mask=nmask, other=0.0)[None, :])
    t = tl.maximum(acc_t + tl.load(bt_ptr + rn, mask=nmask, other=0.0)[None, :], 0.0)
    m2 = (rm[:, None] < N) & nmask[None, :]
    offs = rm[:, None] * F + rn[None, :]
    x_tile = tl.load(x_ptr + offs, mask=m2, other=0.0)
    y = g * t + (1.0 - g) * x_tile
    tl.store(y_ptr + offs, y, mask=m2)
    tl.store(g_ptr + offs, g, mask=m2)
    tl.store(t_ptr + offs, t, mask=m2)


@triton.jit(do_not_specialize=["numel"])
def _highway_bwd_elementwise(x_ptr, g_ptr, t_ptr, dy_ptr, dpre_ptr, dcarry_ptr, numel, F, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < numel
    x = tl.load(x_ptr + offs, mask=m, other=0.0)
    g = tl.load(g_ptr + offs, mask=m, other=0.0)
    t = tl.load(t_ptr + offs, mask=m, other=0.0)
    dy = tl.load(dy_ptr + offs, mask=m, other=0.0)
    row = offs // F
    col = offs % F
    dg_pre = dy * (t - x) * g * (1.0 - g)
    dt_pre = tl.where(t > 0, dy * g, 0.0)
    tl.store(dpre_ptr + row * (2 * F) + col, dg_pre, mask=m)
    tl.store(dpre_ptr + row * (2 * F) + F + col, dt_pre, mask=m)
    tl.store(dcarry_ptr + offs, dy * (1.0 - g), mask=m)


class HighwayFunction(torch.autograd.Function):
    """``(x (N, F), W_carry, b_carry, W_transform, b_transform) -> (N, F)``."""

    @staticmethod
    def forward(ctx, x, W_carry, b_carry, W_transform, b_transform):  # type: ignore[override]
        x = x.contiguous()
        N, F_ = x.shape
        y = torch.empty_like(x)
        g = torch.empty_like(x)
        t = torch.empty_like(x)
        prec = precision_code()
        if N > 0:
            BM, BN, BK = HIGHWAY_TILES if gpu_tiles() else (128, 128, 64)  # interpreter: fewer programs
            launch(_highway_fwd, (triton.cdiv(N, BM), triton.cdiv(F_, BN)),
                   (x, W_carry.contiguous(), b_carry.contiguous(), W_transform.contiguous(), b_transform.contiguous(),
                    y, g, t, N, F_), dict(PREC=prec, BM=BM, BN=BN, BK=BK), num_warps=8,
                   num_stages=2)
        ctx.save_for_backward(x, W_carry, W_transform, g, t)
        ctx.prec = prec
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, W_carry, W_transform, g, t = ctx.saved_tensors
        N, F_ = x.shape
        dy = dy.contiguous()
        dpre = torch.empty(N, 2 * F_, device=x.device, dtype=torch.float32)
        dcarry = torch.empty_like(x)
        if N > 0:
            BLOCK = 1024
            launch(_highway_bwd_elementwise, (triton.cdiv(N * F_, BLOCK),), (x, g, t, dy, dpre, dcarry, N * F_, F_),
                   dict(BLOCK=BLOCK), num_warps=4)
        W_cat = torch.cat([W_carry, W_transform], dim=1)  # (F, 2F)
        dx = matmul(dpre, W_cat.t(), add=dcarry, prec=ctx.prec)
        dW = matmul(x.t(), dpre, prec=ctx.prec)  # (F, 2F)
        db = colsum(dpre)
        return dx, dW[:, :F_], db[:F_], dW[:, F_:], db[F_:]


class ProjectionFunction(torch.autograd.Function):
    """``x (N, F) @ W (F, P) + b (P,)`` with the bias in the matmul epilogue."""

    @staticmethod
    def forward(ctx, x, W, b):  # type: ignore[override]
        prec = precision_code()
        ctx.save_for_backward(x, W)
        ctx.prec = prec
        return matmul(x, W, bias=b, prec=prec)

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, W = ctx.saved_tensors
        dy = dy.contiguous()
        return matmul(dy, W.t(), prec=ctx.prec), matmul(x.t(), dy, prec=ctx.prec), colsum(dy)


def highway(x: torch.Tensor, W_carry: torch.Tensor, b_carry: torch.Tensor, W_transform: torch.Tensor,
            b_transform: torch.Tensor) -> torch.Tensor:
    """Fused equivalent of :func:`elmo_fast.nn.token_encoder.highway_reference`; x ``(N, F)`` -> ``(N, F)``."""
    check_device("token_encoder", x, W_carry, b_carry, W_transform, b_transform)
    return HighwayFunction.apply(x, W_carry, b_carry, W_transform, b_transform)


def projection(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``x (N, F) @ W (F, P) + b`` -> ``(N, P)`` (differentiable)."""
    check_device("token_encoder", x, W, b)
    return ProjectionFunction.apply(x, W, b)
