"""Reference implementations of the backend ops (registered as backend ``reference``).

Op signatures (every backend implements the same):

* ``token_encoder(encoder: CharCNNTokenEncoder, char_ids (N, 50)) -> (N, P)``
* ``bilstm(lstm: BiLSTM, x (B, T, P), lengths (B,), state (h (L,B,2P), c (L,B,2C)), dropout: float)
  -> (list of L outputs (B, T, 2P), (h, c))``
* ``bilstm_streams`` (training streams, see :meth:`elmo_fast.nn.bilm.BiLM.forward_streams`)
* ``sampled_softmax_loss`` and ``full_softmax_loss``: signatures of :mod:`elmo_fast.nn.softmax`
* ``projection(x (N, F), W (F, P), b (P,)) -> (N, P)``: ``x @ W + b`` (a model's own projection layer, e.g. the
  ELMoForManyLangs ``[word; char]`` projection; the bilm-tf token encoder's projection is part of
  ``token_encoder``)
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


@register("reference", "bilstm_streams")
def bilstm_streams(lstm: BiLSTM, fw: torch.Tensor, bw: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
                   dropout: float = 0.0
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Training streams (see :meth:`elmo_fast.nn.bilm.BiLM.forward_streams`): each direction's stack reads its
    own stream left to right (the reverse stream is already reversed in time), every row full length."""
    lengths = torch.full((fw.shape[0],), fw.shape[1], dtype=torch.long, device=fw.device)
    fw_out, fw_h, fw_c = lstm.run_direction(0, fw, lengths, state, dropout, reverse=False)
    bw_out, bw_h, bw_c = lstm.run_direction(1, bw, lengths, state, dropout, reverse=False)
    return fw_out, bw_out, lstm.join_states((fw_h, bw_h), (fw_c, bw_c))


@register("reference", "projection")
def projection(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``x (N, F) @ W (F, P) + b (P,)`` -> ``(N, P)`` float32, the bias added inside the BLAS product
    (``addmm``), differentiable."""
    return torch.addmm(b, x, W)


register("reference", "sampled_softmax_loss")(sampled_softmax_loss)
register("reference", "full_softmax_loss")(full_softmax_loss)
