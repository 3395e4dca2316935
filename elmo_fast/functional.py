"""Public functional ops that dispatch through :mod:`elmo_fast.backend`, like the modules do.

``elmo_fast.sampled_softmax_loss`` and ``elmo_fast.full_softmax_loss`` are these functions: the backend is an
explicit ``backend=`` argument, else ``$ELMO_FAST_BACKEND``, else chosen by the tensors' device (CUDA ->
``triton``, CPU -> the best CPU path). A backend that cannot run the op raises
:class:`elmo_fast.backend.BackendError`; nothing falls back silently. The pure-PyTorch definitions (the spec)
stay in :mod:`elmo_fast.nn.softmax`.
"""
from __future__ import annotations

import torch

from . import backend as backends

__all__ = ["sampled_softmax_loss", "full_softmax_loss"]


def sampled_softmax_loss(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                         sampled_ids: torch.Tensor, target_expected_count: torch.Tensor,
                         sampled_expected_count: torch.Tensor, remove_accidental_hits: bool = True, *,
                         backend: str | None = None) -> torch.Tensor:
    """TensorFlow's sampled softmax loss on the selected backend (arguments as
    :func:`elmo_fast.nn.softmax.sampled_softmax_loss`): hidden ``(N, P)``, targets ``(N,)``, weight ``(V, P)``,
    bias ``(V,)``, sampled_ids ``(S,)``, expected counts ``(N,)`` and ``(S,)`` -> per-target losses ``(N,)``.

    Args:
        backend: ``reference`` | ``fast`` | ``triton``; default ``$ELMO_FAST_BACKEND`` or by ``hidden``'s device.
    """
    op = "sampled_softmax_loss"
    fn = backends.get_op(backends.resolve(backend, hidden.device, op), op)
    return fn(hidden, targets, weight, bias, sampled_ids, target_expected_count, sampled_expected_count,
              remove_accidental_hits)


def full_softmax_loss(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      chunk_size: int = 16384, *, backend: str | None = None) -> torch.Tensor:
    """``-log softmax(h Wᵀ + b)[target]`` per row ``(N,)`` on the selected backend (arguments as
    :func:`elmo_fast.nn.softmax.full_softmax_loss`). The ``triton`` kernel is forward-only (evaluation)."""
    op = "full_softmax_loss"
    fn = backends.get_op(backends.resolve(backend, hidden.device, op), op)
    return fn(hidden, targets, weight, bias, chunk_size)
