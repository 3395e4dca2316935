"""Reference implementations of the backend ops (registered as backend ``reference``).

Op signatures (every backend implements the same):

* ``token_encoder(encoder: CharCNNTokenEncoder, char_ids (N, 50)) -> (N, P)``
* ``bilstm(lstm: BiLSTM, x (B, T, P), lengths (B,), state (h (L,B,2P), c (L,B,2C)), dropout: float)
  -> (list of L outputs (B, T, 2P), (h, c))``
"""
from __future__ import annotations

import torch

from ..backend import register
from .lstm import BiLSTM
from .token_encoder import CharCNNTokenEncoder


@register("reference", "token_encoder")
def token_encoder(encoder: CharCNNTokenEncoder, char_ids: torch.Tensor) -> torch.Tensor:
    return encoder(char_ids)


@register("reference", "bilstm")
def bilstm(lstm: BiLSTM, x: torch.Tensor, lengths: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
           dropout: float = 0.0) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    return lstm(x, lengths, state, dropout=dropout)
