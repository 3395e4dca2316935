"""The biLM's output softmax, pure PyTorch (the reference the Triton kernels are tested against).

docs/numerics.md#training-recipe. One softmax ``(W (V, P), b (V,))`` is shared by both directions; the logit of word
v for a
hidden vector h is ``h · W[v] + b[v]``. Training uses TensorFlow's ``sampled_softmax_loss`` recipe:

* negatives from the **log-uniform (Zipfian) unique sampler** over ``[0, V)``:
  ``P(k) = (ln(k + 2) - ln(k + 1)) / ln(V + 1)``; draws are repeated until ``S`` distinct ids were seen,
  ``T`` (``num_tries``) counts every draw;
* the **expected count** ``q(k) = 1 - (1 - P(k))^T`` (``P(k) * S`` when ``T == S``, as TF does), and
  ``ln q`` is subtracted from the true logit and from every sampled logit;
* **accidental hits** (a sample equal to the row's target) get the most negative float;
* loss = ``-log_softmax([true, samples])[0]`` per target.

Evaluation uses :func:`full_softmax_loss`, which walks the vocabulary in chunks so that a 793k-word
vocabulary never materializes a ``(tokens, V)`` logit matrix (also in the backward pass).
"""
from __future__ import annotations

import math

import torch

__all__ = ["log_uniform_probability", "log_uniform_draw", "log_uniform_sample", "log_uniform_expected_count",
           "sampled_softmax_loss", "full_softmax_loss", "full_softmax_loss_reference"]


def log_uniform_probability(ids: torch.Tensor, num_words: int) -> torch.Tensor:
    """``P(k) = (ln(k+2) - ln(k+1)) / ln(V+1)`` for every id, float64, same shape as ``ids``."""
    k = ids.to(torch.float64)
    return (torch.log(k + 2.0) - torch.log(k + 1.0)) / math.log(num_words + 1.0)


def log_uniform_draw(num_words: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` independent draws (with replacement) from the log-uniform law over ``[0, num_words)``.

    ``floor(exp(u * ln(V + 1))) - 1`` with ``u ~ U[0, 1)`` in float64 (TF's ``LogUniformSampler``).
    Returns int64 ``(n,)``.
    """
    if num_words < 1:
        raise ValueError(f"num_words: expected >= 1, found {num_words}")
    u = torch.rand(n, dtype=torch.float64, generator=generator)
    ids = torch.floor(torch.exp(u * math.log(num_words + 1.0))).long() - 1
    return ids.clamp_(0, num_words - 1)


def log_uniform_sample(num_words: int, num_samples: int,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """Unique log-uniform sampling: draw until ``num_samples`` distinct ids were seen.

    Args:
        num_words: V, the vocabulary size (ids must be ranked by descending frequency).
        num_samples: S distinct ids wanted (``1 <= S <= V``).
        generator: optional ``torch.Generator`` (CPU) to make the draws reproducible.

    Returns:
        ``(sampled_ids, num_tries)``: int64 ``(S,)`` distinct ids in the order they were first drawn, and the
        number of draws T it took (T >= S), which :func:`log_uniform_expected_count` needs.
    """
    if not 1 <= num_samples <= num_words:
        raise ValueError(f"num_samples: expected 1 <= num_samples <= num_words ({num_words}), found {num_samples}")
    draws = torch.empty(0, dtype=torch.long)
    block = num_samples
    while True:
        draws = torch.cat([draws, log_uniform_draw(num_words, block, generator)])
        values, inverse = torch.unique(draws, return_inverse=True)
        if values.numel() >= num_samples:
            break
        # rare words need many draws: grow the block geometrically (the law makes the tail expensive)
        block = max(block, num_samples - values.numel()) * 2
    # position of the first draw of every distinct value, then the S earliest of them
    positions = torch.arange(draws.numel())
    first = torch.full((values.numel(),), draws.numel(), dtype=torch.long)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    first_sorted = torch.sort(first).values[:num_samples]
    return draws[first_sorted].clone(), int(first_sorted[-1].item()) + 1


def log_uniform_expected_count(ids: torch.Tensor, num_tries: int, num_words: int, num_samples: int) -> torch.Tensor:
    """Expected number of times each id appears in a unique draw that took ``num_tries`` tries.

    ``q(k) = -expm1(T * log1p(-P(k)))`` (= ``1 - (1 - P(k))^T``), or ``P(k) * S`` when ``T == S`` (TF's
    special case: no draw was rejected). Computed in float64, returned as float32, shape of ``ids``.
    """
    p = log_uniform_probability(ids, num_words)
    if num_tries == num_samples:
        q = p * num_samples
    else:
        q = -torch.expm1(num_tries * torch.log1p(-p))
    return q.to(torch.float32)


def sampled_softmax_loss(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                         sampled_ids: torch.Tensor, target_expected_count: torch.Tensor,
                         sampled_expected_count: torch.Tensor, remove_accidental_hits: bool = True) -> torch.Tensor:
    """TensorFlow's ``sampled_softmax_loss`` (``subtract_log_q=True``) with injected samples.

    Args:
        hidden: ``(N, P)`` top-layer outputs.
        targets: ``(N,)`` int64 target ids in ``[0, V)``.
        weight: ``(V, P)`` softmax weights; bias: ``(V,)``.
        sampled_ids: ``(S,)`` int64 negatives shared by all N rows (e.g. from :func:`log_uniform_sample`).
        target_expected_count: ``(N,)`` expected count of each target under the sampler.
        sampled_expected_count: ``(S,)`` expected count of each sample.
        remove_accidental_hits: give a sample equal to the row's target the most negative float.

    Returns:
        ``(N,)`` per-target losses ``-log softmax([true - ln q_t, samples - ln q_s])[0]``, differentiable in
        ``hidden``, ``weight`` and ``bias``.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden (N, P) and weight (V, P) expected, found {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    true_w = weight.index_select(0, targets)                                    # (N, P)
    true_logits = (hidden * true_w).sum(dim=1) + bias.index_select(0, targets)  # (N,)
    true_logits = true_logits - torch.log(target_expected_count.to(hidden.dtype))
    sampled_w = weight.index_select(0, sampled_ids)                             # (S, P)
    sampled_logits = hidden @ sampled_w.t() + bias.index_select(0, sampled_ids)  # (N, S)
    sampled_logits = sampled_logits - torch.log(sampled_expected_count.to(hidden.dtype))
    if remove_accidental_hits:
        hits = sampled_ids.unsqueeze(0) == targets.unsqueeze(1)                 # (N, S)
        sampled_logits = sampled_logits.masked_fill(hits, torch.finfo(hidden.dtype).min)
    logits = torch.cat([true_logits.unsqueeze(1), sampled_logits], dim=1)      # (N, 1 + S)
    return torch.logsumexp(logits, dim=1) - true_logits


def full_softmax_loss_reference(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                                bias: torch.Tensor) -> torch.Tensor:
    """Unchunked ``-log softmax(h W^T + b)[target]``: ``(N,)``. Materializes ``(N, V)``; small vocabularies only."""
    logits = hidden @ weight.t() + bias
    return torch.logsumexp(logits, dim=1) - logits.gather(1, targets.unsqueeze(1)).squeeze(1)


class _ChunkedSoftmaxLoss(torch.autograd.Function):
    """Full softmax cross-entropy over vocabulary chunks; the backward recomputes each chunk's logits."""

    @staticmethod
    def forward(ctx, hidden, targets, weight, bias, chunk_size):  # type: ignore[override]
        lse: torch.Tensor | None = None
        for start in range(0, weight.shape[0], chunk_size):
            logits = torch.addmm(bias[start:start + chunk_size], hidden, weight[start:start + chunk_size].t())
            chunk_lse = torch.logsumexp(logits, dim=1)                          # (N,)
            lse = chunk_lse if lse is None else torch.logaddexp(lse, chunk_lse)
        assert lse is not None
        true_logits = (hidden * weight.index_select(0, targets)).sum(dim=1) + bias.index_select(0, targets)
        ctx.save_for_backward(hidden, targets, weight, bias, lse)
        ctx.chunk_size = chunk_size
        return lse - true_logits

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        hidden, targets, weight, bias, lse = ctx.saved_tensors
        chunk = ctx.chunk_size
        need_h, _, need_w, need_b, _ = ctx.needs_input_grad
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b else None
        g = grad_out.unsqueeze(1)
        for start in range(0, weight.shape[0], chunk):
            w, b = weight[start:start + chunk], bias[start:start + chunk]
            d_logits = torch.exp(torch.addmm(b, hidden, w.t()) - lse.unsqueeze(1)) * g  # softmax part, (N, chunk)
            if grad_h is not None:
                grad_h += d_logits @ w
            if grad_w is not None:
                grad_w[start:start + chunk] += d_logits.t() @ hidden
            if grad_b is not None:
                grad_b[start:start + chunk] += d_logits.sum(dim=0)
        # the -true_logit part
        if grad_h is not None:
            grad_h -= grad_out.unsqueeze(1) * weight.index_select(0, targets)
        if grad_w is not None:
            grad_w.index_add_(0, targets, -grad_out.unsqueeze(1) * hidden)
        if grad_b is not None:
            grad_b.index_add_(0, targets, -grad_out)
        return grad_h, None, grad_w, grad_b, None


def full_softmax_loss(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      chunk_size: int = 16384) -> torch.Tensor:
    """Full softmax cross-entropy ``-log softmax(h W^T + b)[target]`` without a ``(N, V)`` matrix.

    Args:
        hidden: ``(N, P)``; targets: ``(N,)`` int64; weight: ``(V, P)``; bias: ``(V,)``.
        chunk_size: vocabulary rows per chunk; peak extra memory is ``N x chunk_size`` floats.

    Returns:
        ``(N,)`` losses, differentiable in ``hidden``, ``weight`` and ``bias`` (the backward walks the chunks
        again instead of storing the logits).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected >= 1, found {chunk_size}")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden (N, P) and weight (V, P) expected, found {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    return _ChunkedSoftmaxLoss.apply(hidden, targets, weight, bias, int(chunk_size))
