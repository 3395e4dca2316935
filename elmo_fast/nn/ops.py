"""Reference implementations of the backend ops (registered as backend ``reference``).

Op signatures (every backend implements the same):

* ``token_encoder(encoder: CharCNNTokenEncoder, char_ids (N, 50)) -> (N, P)``
* ``bilstm(lstm: BiLSTM, x (B, T, P), lengths (B,), state (h (L,B,2P), c (L,B,2C)), dropout: float)
  -> (list of L outputs (B, T, 2P), (h, c))``
* ``bilstm_streams`` (training streams, see :meth:`elmo_fast.nn.bilm.BiLM.forward_streams`)
* ``sampled_softmax_loss`` and ``full_softmax_loss``: signatures of :mod:`elmo_fast.nn.softmax`
"""
from __future__ import annotations

import torch

from ..backend import register
from .lstm import BiLSTM
from .softmax import full_softmax_loss, sampled_softmax_loss
from .token_encoder import CharCNNTokenEncoder


@register("reference", "token_encoder")
def token_encoder(encoder: CharCNNTokenEncoder, char_ids: torch.Tensor) -> torch.Tensor:
    return encoder(char_ids)


@register("reference", "bilstm")
def bilstm(lstm: BiLSTM, x: torch.Tensor, lengths: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
           dropout: float = 0.0) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    return lstm(x, lengths, state, dropout=dropout)


register("reference", "sampled_softmax_loss")(sampled_softmax_loss)
register("reference", "full_softmax_loss")(full_softmax_loss)
