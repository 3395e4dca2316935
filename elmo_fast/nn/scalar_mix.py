"""ScalarMix, AllenNLP's learned mix of the biLM layers (docs/numerics.md#downstream-use); state-dict compatible.

The downstream ``Elmo`` module that uses it is in :mod:`elmo_fast.nn.elmo`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["ScalarMix", "LAYER_NORM_EPS"]

#: AllenNLP's ``tiny_value_of_dtype(torch.float32)``, the layer-norm epsilon
LAYER_NORM_EPS = 1e-13


class ScalarMix(nn.Module):
    """``gamma * sum_j softmax(w)_j * h_j`` over ``mixture_size`` tensors of the same shape.

    Args:
        mixture_size: number of layers mixed (3 for ELMo).
        do_layer_norm: normalise each layer with one mean/variance over all unmasked elements of the batch.
        initial_scalar_parameters: pre-softmax weights (default zeros -> equal weights).
        trainable: whether ``scalar_parameters`` and ``gamma`` get gradients.
    """

    def __init__(self, mixture_size: int, do_layer_norm: bool = False,
                 initial_scalar_parameters: Sequence[float] | None = None, trainable: bool = True) -> None:
        super().__init__()
        self.mixture_size = mixture_size
        self.do_layer_norm = do_layer_norm
        if initial_scalar_parameters is None:
            initial_scalar_parameters = [0.0] * mixture_size
        if len(initial_scalar_parameters) != mixture_size:
            raise ValueError(f"initial_scalar_parameters: expected {mixture_size} values, "
                             f"found {len(initial_scalar_parameters)}")
        self.scalar_parameters = nn.ParameterList(
            [nn.Parameter(torch.tensor([float(v)]), requires_grad=trainable) for v in initial_scalar_parameters])
        self.gamma = nn.Parameter(torch.tensor([1.0]), requires_grad=trainable)

    @staticmethod
    def _layer_norm(x: torch.Tensor, mask: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        masked = x * mask
        mean = masked.sum() / count
        var = (((masked - mean) * mask) ** 2).sum() / count
        return (x - mean) / torch.sqrt(var + LAYER_NORM_EPS)

    def forward(self, tensors: Sequence[torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mix ``tensors`` (each ``(B, T, D)``); ``mask`` ``(B, T)`` is required with layer norm."""
        if len(tensors) != self.mixture_size:
            raise ValueError(f"expected {self.mixture_size} tensors, found {len(tensors)}")
        weights = torch.softmax(torch.cat(list(self.scalar_parameters)), dim=0)
        if not self.do_layer_norm:
            return self.gamma * sum(w * t for w, t in zip(weights, tensors))
        if mask is None:
            raise ValueError("ScalarMix with do_layer_norm=True needs a mask")
        fmask = mask.unsqueeze(-1).to(tensors[0].dtype)
        count = fmask.sum() * tensors[0].shape[-1]
        return self.gamma * sum(w * self._layer_norm(t, fmask, count) for w, t in zip(weights, tensors))
