"""The language model that training optimises: :class:`LanguageModel` (biLM + shared softmax) and
:func:`init_weights` (bilm-tf's from-scratch initialisation)."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import backend as backends
from ..data import Batch
from ..errors import UserError
from ..nn.bilm import BiLM
from ..nn.softmax import full_softmax_loss, log_uniform_expected_count
from ..options import ElmoOptions
from ..weights import read_softmax_weights, read_weights

__all__ = ["LanguageModel", "init_weights"]


def init_weights(bilm: BiLM, softmax_weight: torch.Tensor, softmax_bias: torch.Tensor,
                 generator: torch.Generator) -> None:
    """bilm-tf's from-scratch initialisation (docs/numerics.md#training-recipe), deterministic given ``generator``."""
    enc = bilm.token_encoder
    opts = enc.options
    F_ = opts.n_filters
    P = bilm.options.lstm.projection_dim
    with torch.no_grad():
        enc.char_embed.uniform_(-1.0, 1.0, generator=generator)
        for (w, _), W, b in zip(opts.filters, enc.conv_weights, enc.conv_biases):
            if opts.activation == "relu":
                W.uniform_(-0.05, 0.05, generator=generator)
            else:
                W.normal_(0.0, math.sqrt(1.0 / (w * opts.embedding_dim)), generator=generator)
            b.zero_()
        for hw in enc.highways:
            hw.W_carry.normal_(0.0, math.sqrt(1.0 / F_), generator=generator)
            hw.W_transform.normal_(0.0, math.sqrt(1.0 / F_), generator=generator)
            hw.b_carry.fill_(-2.0)
            hw.b_transform.zero_()
        if enc.W_proj is not None:
            enc.W_proj.normal_(0.0, math.sqrt(1.0 / F_), generator=generator)
            enc.b_proj.zero_()
        for direction in bilm.lstm.cells:
            for cell in direction:
                for W in (cell.W_0, cell.W_P_0):  # Glorot uniform (TF's default kernel initializer)
                    limit = math.sqrt(6.0 / (W.shape[0] + W.shape[1]))
                    W.uniform_(-limit, limit, generator=generator)
                cell.B.zero_()
        softmax_weight.normal_(0.0, 1.0 / math.sqrt(P), generator=generator)
        softmax_bias.zero_()


class LanguageModel(nn.Module):
    """The biLM with its shared softmax: what training optimises.

    Args:
        options: model options (``char_cnn`` required).
        vocab_size: V, rows of the softmax.
        backend: op backend of the biLM (see :mod:`elmo_fast.backend`).
        has_projection: whether the token encoder has ``CNN_proj``.
    """

    def __init__(self, options: ElmoOptions, vocab_size: int, backend: str | None = None,
                 has_projection: bool = True) -> None:
        super().__init__()
        self.bilm = BiLM(options, stateful=False, has_projection=has_projection, backend=backend)
        P = options.lstm.projection_dim
        self.softmax_weight = nn.Parameter(torch.empty(vocab_size, P))
        self.softmax_bias = nn.Parameter(torch.empty(vocab_size))
        self.vocab_size = vocab_size
        #: sampled-softmax steps give ``softmax_weight`` a sparse gradient of the touched rows (see
        #: :meth:`_softmax_rows`); the Trainer turns it off under DistributedDataParallel (dense all-reduce)
        self.sparse_softmax_grad = True

    def zero_state(self, batch: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Zero LSTM state ``(h (L, B, 2P), c (L, B, 2C))`` (forward stream | reverse stream halves)."""
        return self.bilm.lstm.zero_state(batch, self.softmax_weight.new_empty(0).to(device))

    def hidden(self, batch: Batch, state: tuple[torch.Tensor, torch.Tensor] | None,
               dropout: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Top-layer outputs of both streams (before output dropout).

        Returns:
            forward ``(B, T, P)``, backward ``(B, T, P)`` (reverse-stream order), final state (detached).
        """
        emb = self.bilm.encode_tokens(batch.token_chars)          # (U, P): each distinct spelling once
        fw_out, bw_out, (h, c) = self.bilm.forward_streams(emb[batch.fw_inputs], emb[batch.bw_inputs], state, dropout)
        return fw_out[-1], bw_out[-1], (h.detach(), c.detach())

    def forward(self, batch: Batch, state: tuple[torch.Tensor, torch.Tensor] | None, dropout: float = 0.0,
                samples: tuple[torch.Tensor, int, torch.Tensor, int] | None = None,
                softmax_chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                     tuple[torch.Tensor, torch.Tensor]]:
        """Loss of one batch: ``0.5 * (mean forward loss + mean backward loss)``.

        Args:
            batch: a :class:`~elmo_fast.data.Batch` on the model's device.
            state: carried LSTM state (or None for zeros).
            dropout: on every LSTM input and on the top output before the softmax.
            samples: ``(fw_ids (S,), fw_tries, bw_ids (S,), bw_tries)`` for the sampled softmax, or None
                for the full softmax.

        Returns:
            ``(loss, forward loss, backward loss, new state)``; losses are scalars.
        """
        fw_top, bw_top, new_state = self.hidden(batch, state, dropout)
        streams = ((fw_top, batch.fw_targets.reshape(-1)), (bw_top, batch.bw_targets.reshape(-1)))
        if samples is not None:
            weight, bias, local = self._softmax_rows([t for _, t in streams]
                                                     + [samples[0].to(fw_top.device), samples[2].to(fw_top.device)])
        losses = []
        for d, (top, t) in enumerate(streams):
            if dropout > 0.0:
                top = F.dropout(top, dropout, training=True)
            h = top.reshape(-1, top.shape[-1])
            if samples is None:
                losses.append(full_softmax_loss(h, t, self.softmax_weight, self.softmax_bias, softmax_chunk).mean())
            else:
                ids, tries = samples[2 * d], int(samples[2 * d + 1])
                V, S = self.vocab_size, ids.numel()
                q_t = log_uniform_expected_count(t, tries, V, S).to(h.device)
                q_s = log_uniform_expected_count(ids, tries, V, S).to(h.device)
                losses.append(self.softmax_op("sampled_softmax_loss", h)(
                    h, local[d], weight, bias, local[2 + d], q_t, q_s).mean())
        return 0.5 * (losses[0] + losses[1]), losses[0].detach(), losses[1].detach(), new_state

    def _softmax_rows(self, id_sets: list[torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The softmax rows a sampled step touches, gathered once.

        Args:
            id_sets: int64 vocabulary ids (targets and samples of both directions).

        Returns:
            ``weight`` ``(R, P)`` and ``bias`` ``(R,)`` of the ``R`` distinct ids, and each id set mapped to
            row indices into them. With :attr:`sparse_softmax_grad` the weight rows come from a sparse
            embedding lookup, so ``softmax_weight.grad`` is a sparse ``(V, P)`` tensor with ``R`` rows
            instead of a dense one (bilm-tf's ``IndexedSlices``); Adagrad then updates only those rows,
            which is exactly the dense update (untouched rows get a zero gradient: no change).
        """
        rows, inverse = torch.unique(torch.cat(id_sets), return_inverse=True)
        local = list(inverse.split([t.numel() for t in id_sets]))
        if self.sparse_softmax_grad:
            weight = F.embedding(rows, self.softmax_weight, sparse=True)
        else:
            weight = self.softmax_weight.index_select(0, rows)
        return weight, self.softmax_bias.index_select(0, rows), local

    def softmax_op(self, op: str, like: torch.Tensor) -> Any:
        """The backend implementation of ``sampled_softmax_loss`` or ``full_softmax_loss`` (evaluation) for
        tensors like ``like``, from :mod:`elmo_fast.backend` (what ``bilm.backend`` / ``ELMO_FAST_BACKEND`` asks
        for, else by device): the same function ``elmo_fast.sampled_softmax_loss`` runs on that backend. Training
        with the *full* softmax always uses the reference's chunked autograd function (the Triton full-softmax
        kernel is forward-only)."""
        return backends.get_op(self.bilm.backend_name(like.device, op), op)

    # ---- ELMo files
    def load_elmo_files(self, weight_file: str, softmax_file: str | None = None) -> None:
        """Copy a bilm-tf ``weights.hdf5`` (and optionally softmax weights) into the model."""
        self.bilm.load_bilm_tf_weights(read_weights(weight_file, self.bilm.options))
        if softmax_file is not None:
            W, b = read_softmax_weights(softmax_file, self.bilm.options.lstm.projection_dim)
            if W.shape[0] != self.vocab_size:
                raise UserError(f"{softmax_file}: dataset 'softmax/W' has {W.shape[0]} rows, the vocabulary has "
                                 f"{self.vocab_size} tokens")
            with torch.no_grad():
                self.softmax_weight.copy_(torch.from_numpy(W))
                self.softmax_bias.copy_(torch.from_numpy(b))

