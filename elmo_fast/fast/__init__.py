"""The fast pure-PyTorch CPU path (backend ``"fast"``): numerically the reference's function, much less work.

Importing this package registers, for backend ``"fast"`` (same signatures as :mod:`elmo_fast.nn.ops`):

* ``token_encoder``, ``bilstm`` and ``bilstm_streams`` (training streams, see
  :meth:`elmo_fast.nn.bilm.BiLM.forward_streams`): :mod:`elmo_fast.fast.token_encoder`, :mod:`elmo_fast.fast.lstm`;
* ``sampled_softmax_loss``: the fused op of :mod:`elmo_fast.fast.sampled_softmax` (one logit buffer; what
  training, evaluation and ``elmo_fast.sampled_softmax_loss`` run on this backend);
* ``full_softmax_loss`` and ``projection``: the reference functions themselves (one batched product per chunk,
  resp. one ``addmm``, is already what the CPU does best).

:func:`elmo_fast.backend.resolve` then picks this backend on CPU.
"""
from __future__ import annotations

import torch

from ..backend import register
from ..nn.lstm import BiLSTM
from ..nn.ops import projection
from ..nn.softmax import full_softmax_loss
from ..nn.token_encoder import CharCNNTokenEncoder
from .lstm import bilstm_fast, bilstm_streams_fast
from .packing import clear_cache
from .sampled_softmax import sampled_softmax_loss_fast
from .token_encoder import TokenCache, enable_token_cache, token_encoder_fast

__all__ = ["token_encoder", "bilstm", "bilstm_streams", "clear_cache", "TokenCache", "enable_token_cache"]


@register("fast", "token_encoder")
def token_encoder(encoder: CharCNNTokenEncoder, char_ids: torch.Tensor) -> torch.Tensor:
    """``(N, 50)`` char ids -> ``(N, P)`` (see :func:`elmo_fast.fast.token_encoder.token_encoder_fast`)."""
    return token_encoder_fast(encoder, char_ids)


@register("fast", "bilstm")
def bilstm(lstm: BiLSTM, x: torch.Tensor, lengths: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
           dropout: float = 0.0) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Both biLSTM directions, all layers (see :func:`elmo_fast.fast.lstm.bilstm_fast`)."""
    return bilstm_fast(lstm, x, lengths, state, dropout)


@register("fast", "bilstm_streams")
def bilstm_streams(lstm: BiLSTM, fw: torch.Tensor, bw: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
                   dropout: float = 0.0
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Training streams (see :func:`elmo_fast.fast.lstm.bilstm_streams_fast`)."""
    return bilstm_streams_fast(lstm, fw, bw, state, dropout)


register("fast", "sampled_softmax_loss")(sampled_softmax_loss_fast)
register("fast", "full_softmax_loss")(full_softmax_loss)
register("fast", "projection")(projection)
