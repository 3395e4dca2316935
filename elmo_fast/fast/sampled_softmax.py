"""Fast CPU sampled softmax loss: the same function as :func:`elmo_fast.nn.softmax.sampled_softmax_loss`.

The reference composes it from autograd ops, each a pass over the ``(N, S)`` logit matrix (``N`` = B x T hidden
vectors, ``S`` = 8192 negatives: 21 MB at the small model's 640 rows): bias add, ``- ln q``, the accidental-hit
comparison and ``masked_fill``, ``cat`` with the true logit, ``logsumexp`` (max, subtract, exp, sum) and as many
again in the backward. This :class:`torch.autograd.Function` keeps one ``(N, S)`` buffer and touches it

* forward: the product ``h Wₛᵀ`` (:func:`elmo_fast.fast.packing.matmul`), one add of ``b - ln q`` per column,
  the row max, one in-place ``exp(x - max)`` (two passes) and the row sum; accidental hits are found per row
  with a binary search over the sorted samples (a row has at most one: the samples are distinct) and written
  as single elements, not through an ``(N, S)`` mask;
* backward: one in-place scaling into the logit gradient, then the two products ``dL Wₛ`` and ``dLᵀ h`` and the
  column sum for the bias.

With the native kernels (:mod:`elmo_fast.fast.native`, ``sampled_softmax.c``; the torch ops above are the fallback
and the path for duplicate samples) the forward's passes after the product are one kernel that owns each row
(shift, hit, max, ``exp`` and sum while the row is in cache; a bf16 product is read as it is, not widened first),
and the backward's scaling, bias column sums and (bf16 setting) bf16 copy of the logit gradient are one pass.
Operands of two products (``h``, the sample rows, the logit gradient) are converted to bf16 once in that setting.

Differences to the reference are float32 rounding (``b - ln q`` is formed per column before it is added; the
exponentials are shifted by the same row max as ``logsumexp``'s; the kernel's ``exp`` is within 2 ulp of torch's,
and 0 where the argument is below -87.3).
"""
from __future__ import annotations

import torch

from .. import numerics
from . import native
from .packing import bf16_products, matmul, operand

__all__ = ["sampled_softmax_loss_fast"]


def _hit_positions(sampled_ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Rows and sample positions where a sample equals the row's target, or None if ``sampled_ids`` has
    duplicates (then a row may have several hits: the caller falls back to the dense comparison)."""
    sorted_ids, order = torch.sort(sampled_ids)
    if sorted_ids.numel() > 1 and bool((sorted_ids[1:] == sorted_ids[:-1]).any()):
        return None
    at = torch.searchsorted(sorted_ids, targets).clamp_(max=max(sorted_ids.numel() - 1, 0))
    hit = sorted_ids.index_select(0, at) == targets
    rows = hit.nonzero().squeeze(1)
    return rows, order.index_select(0, at.index_select(0, rows))


class _SampledSoftmax(torch.autograd.Function):
    """Per-target loss ``logsumexp([t, s]) - t`` with one ``(N, S)`` buffer (see the module docstring)."""

    @staticmethod
    def forward(ctx, hidden, targets, weight, bias, sampled_ids, target_expected_count, sampled_expected_count,
                remove_accidental_hits):  # type: ignore[override]
        true_w = weight.index_select(0, targets)                                          # (N, P)
        true_logits = (hidden * true_w).sum(dim=1) + bias.index_select(0, targets)
        true_logits = true_logits - torch.log(target_expected_count.to(hidden.dtype))      # (N,)
        sampled_w = weight.index_select(0, sampled_ids)                                   # (S, P)
        shift = bias.index_select(0, sampled_ids) - torch.log(sampled_expected_count.to(hidden.dtype))
        hidden_p, sampled_wp = operand(hidden), operand(sampled_w)   # bf16: converted once (backward products too)
        hits = _hit_positions(sampled_ids, targets) if remove_accidental_hits and sampled_ids.numel() else False
        if hits is not None and native.softmax_available(hidden, shift, true_logits):
            # the row passes in one kernel (elmo_fast.fast.native), reading a bf16 product as it comes
            raw = matmul(hidden_p, sampled_wp.t(), widen=False).contiguous()              # (N, S)
            logits = raw if raw.dtype == torch.float32 else torch.empty(raw.shape, dtype=torch.float32)
            hit_cols = None
            if hits:
                hit_cols = torch.full((raw.shape[0],), -1, dtype=torch.int64)
                hit_cols.index_copy_(0, hits[0], hits[1])
            row_max, true_exp, total = native.softmax_forward(raw, shift.contiguous(), true_logits.contiguous(),
                                                              hit_cols, logits)
        else:
            logits = matmul(hidden_p, sampled_wp.t())                                     # (N, S)
            logits.add_(shift)
            if hits is None:  # duplicate samples: a row may have several hits
                logits.masked_fill_(sampled_ids.unsqueeze(0) == targets.unsqueeze(1), torch.finfo(logits.dtype).min)
            elif hits:
                logits.index_put_(hits, logits.new_tensor(torch.finfo(logits.dtype).min))
            row_max = logits.amax(dim=1) if logits.shape[1] else torch.full_like(true_logits, -torch.inf)
            row_max = torch.maximum(row_max, true_logits)
            logits.sub_(row_max.unsqueeze(1)).exp_()                                      # exp(l - max), in place
            true_exp = torch.exp(true_logits - row_max)
            total = logits.sum(dim=1) + true_exp
        loss = torch.log(total) + row_max - true_logits
        ctx.save_for_backward(hidden, hidden_p, targets, weight, sampled_ids, true_w, sampled_wp, logits, true_exp,
                              total)
        ctx.numerics = numerics.current()  # the backward multiplies as this forward did (elmo_fast.numerics)
        return loss

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        with numerics.use(ctx.numerics.precision, ctx.numerics.order):
            return _SampledSoftmax._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad):  # type: ignore[no-untyped-def]
        hidden, hidden_p, targets, weight, sampled_ids, true_w, sampled_wp, expd, true_exp, total = ctx.saved_tensors
        need_h, _, need_w, need_b = ctx.needs_input_grad[:4]
        scale = grad / total                                                   # (N,)
        d_true = scale * true_exp - grad                                       # d loss / d true logit
        grad_h = grad_w = grad_b = None
        colsum = None
        if native.softmax_available(expd, scale):
            # one pass: the saved buffer becomes d loss / d sampled logits, its bf16 copy for the products (bf16
            # setting) and its column sums (the bias gradient) come out of the same pass
            colsum = expd.new_empty(expd.shape[1]) if need_b else None
            d16 = torch.empty(expd.shape, dtype=torch.bfloat16) if bf16_products() and (need_h or need_w) else None
            native.softmax_backward(expd, scale.contiguous(), d16, colsum)
            d_logits = expd
            d_logits_p = d_logits if d16 is None else d16
        else:
            d_logits = expd.mul_(scale.unsqueeze(1))    # the saved buffer becomes d loss / d sampled logits (once)
            d_logits_p = operand(d_logits) if need_h or need_w else d_logits  # bf16: converted once for both
        if need_h:
            grad_h = matmul(d_logits_p, sampled_wp)
            grad_h.addcmul_(d_true.unsqueeze(1), true_w)
        if need_w:
            grad_w = weight.new_zeros(weight.shape)
            grad_w.index_add_(0, sampled_ids, matmul(d_logits_p.t(), hidden_p))
            grad_w.index_add_(0, targets, d_true.unsqueeze(1) * hidden)
        if need_b:
            grad_b = weight.new_zeros(weight.shape[0])
            grad_b.index_add_(0, sampled_ids, d_logits.sum(dim=0) if colsum is None else colsum)
            grad_b.index_add_(0, targets, d_true)
        return grad_h, None, grad_w, grad_b, None, None, None, None


def sampled_softmax_loss_fast(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                              sampled_ids: torch.Tensor, target_expected_count: torch.Tensor,
                              sampled_expected_count: torch.Tensor, remove_accidental_hits: bool = True
                              ) -> torch.Tensor:
    """TensorFlow's ``sampled_softmax_loss`` (``subtract_log_q=True``); arguments and result as
    :func:`elmo_fast.nn.softmax.sampled_softmax_loss`: hidden ``(N, P)``, targets ``(N,)``, weight ``(V, P)``,
    bias ``(V,)``, sampled_ids ``(S,)``, expected counts ``(N,)`` and ``(S,)`` -> ``(N,)`` losses.

    The backward may be run once (its buffer is reused in place): ``retain_graph=True`` raises.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden (N, P) and weight (V, P) expected, found {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    return _SampledSoftmax.apply(hidden, targets, weight, bias, sampled_ids, target_expected_count,
                                 sampled_expected_count, bool(remove_accidental_hits))
