"""The biLM: token encoder + stateful biLSTM, returning ELMo's three layers (docs/numerics.md (character ids, token
encoder, biLSTM))."""
from __future__ import annotations

import os
from typing import Any, ContextManager

import numpy as np
import torch
from torch import nn

from .. import backend as backends
from .. import numerics
from ..chars import BOS_IDS, EOS_IDS
from ..options import ElmoOptions, load_options
from ..weights import lstm_prefix, read_weights, write_weights
from .lstm import BiLSTM, StateSlots
from .token_encoder import CharCNNTokenEncoder

__all__ = ["BiLM", "add_sentence_boundaries", "remove_sentence_boundaries", "token_mask"]


def token_mask(char_ids: torch.Tensor) -> torch.Tensor:
    """``(B, T, 50)`` -> ``(B, T)`` bool: a position is a token iff any of its ids is > 0."""
    return (char_ids > 0).any(dim=-1)


def add_sentence_boundaries(values: torch.Tensor, mask: torch.Tensor, bos: torch.Tensor,
                            eos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Insert BOS before and EOS after each row's tokens, as AllenNLP does.

    Args:
        values: ``(B, T, ...)`` per-position values (char ids or embeddings), right-padded.
        mask: ``(B, T)`` token mask; row b has ``n_b = mask[b].sum()`` tokens, taken as its first n_b slots.
        bos, eos: the value for the markers, shape ``values.shape[2:]``.

    Returns:
        ``(B, T + 2, ...)`` values with BOS at 0, tokens at 1..n_b, EOS at n_b + 1, zeros after; and the new
        ``(B, T + 2)`` bool mask (an empty row still has length 2).
    """
    batch, steps = mask.shape
    n = mask.long().sum(dim=1)
    pos = torch.arange(steps + 2, device=values.device)
    out = values.new_zeros(batch, steps + 2, *values.shape[2:])
    body = (pos[None, 1:steps + 1] <= n[:, None])  # slot t+1 holds token t for t < n
    shape = (batch, steps) + (1,) * (values.dim() - 2)
    out[:, 1:steps + 1] = values * body.view(shape).to(values.dtype)
    out[:, 0] = bos
    out[torch.arange(batch, device=values.device), n + 1] = eos.to(values.dtype)
    new_mask = pos[None, :] < (n + 2)[:, None]
    return out, new_mask


def remove_sentence_boundaries(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`add_sentence_boundaries`: ``(B, T + 2, ...)`` -> ``(B, T, ...)``.

    A row of L valid positions gets ``out[:L-2] = values[1:L-1]``, zeros after (AllenNLP semantics).
    """
    batch, steps2 = mask.shape
    lengths = mask.long().sum(dim=1)
    steps = max(steps2 - 2, 0)
    keep = torch.arange(steps, device=values.device)[None, :] < (lengths - 2)[:, None]
    out = values[:, 1:steps + 1] * keep.view(batch, steps, *([1] * (values.dim() - 2))).to(values.dtype)
    return out, keep


class BiLM(nn.Module):
    """ELMo's bidirectional language model (reference path): char ids -> three ``(B, T+2, 2P)`` layers.

    Args:
        options: the model's :class:`ElmoOptions`.
        stateful: carry per-row LSTM states across calls (AllenNLP's behaviour, the default). With
            ``False`` every call starts from zero state, so a sentence's output does not depend on the
            rest of its batch or on earlier calls (not bit-compatible with AllenNLP).
        has_projection: whether the token encoder has ``CNN_proj`` (only optional when F == P).
        backend: ``"reference"``, ``"fast"`` or ``"triton"``; None picks by device and the
            ``ELMO_FAST_BACKEND`` environment variable (see :mod:`elmo_fast.backend`).
        precision: ``"fp32"`` or ``"bf16"`` products on the fast path; order: ``"fast"`` or ``"allennlp"``
            floating-point order (see :mod:`elmo_fast.numerics`). None keeps the caller's setting
            (process default: fp32, fast). The reference backend is always float32 in AllenNLP's order.
    """

    def __init__(self, options: ElmoOptions, stateful: bool = True, has_projection: bool = True,
                 backend: str | None = None, *, precision: str | None = None, order: str | None = None) -> None:
        super().__init__()
        self.backend = backend
        self.precision = precision
        self.order = order
        numerics.check(precision, order)  # validates the names now, not at the first call
        if options.char_cnn is None:
            raise ValueError("word-input models (options without 'char_cnn') are not supported")
        self.options = options
        self.stateful = stateful
        self.token_encoder = CharCNNTokenEncoder(options.char_cnn, options.lstm.projection_dim, has_projection)
        self.lstm = BiLSTM(options.lstm)
        self.states = StateSlots()
        self.register_buffer("bos_ids", torch.tensor(BOS_IDS, dtype=torch.long), persistent=False)
        self.register_buffer("eos_ids", torch.tensor(EOS_IDS, dtype=torch.long), persistent=False)

    # ------------------------------------------------------------------ weights
    @classmethod
    def from_files(cls, options_file: str | os.PathLike, weight_file: str | os.PathLike, *,
                   stateful: bool = True, requires_grad: bool = False, backend: str | None = None,
                   precision: str | None = None, order: str | None = None) -> "BiLM":
        """Load ``options.json`` + bilm-tf ``weights.hdf5`` (every dataset shape is validated). Each may also be
        an ``http(s)://`` URL or a public model name, downloaded once into the cache (:mod:`elmo_fast.hub`).
        Files of one folder with an elmo-fast manifest (an export or a conversion) are checked against it first."""
        from ..hub import resolve_files
        options_file, weight_file = resolve_files(options_file, weight_file)
        folder = os.path.dirname(os.path.abspath(weight_file))
        if os.path.dirname(os.path.abspath(options_file)) == folder:
            from ..publish import verify_folder
            verify_folder(folder, (os.path.basename(options_file), os.path.basename(weight_file)))
        options = load_options(options_file)
        weights = read_weights(weight_file, options)
        model = cls(options, stateful=stateful, has_projection="CNN_proj/W_proj" in weights, backend=backend,
                    precision=precision, order=order)
        model.load_bilm_tf_weights(weights)
        model.requires_grad_(requires_grad)
        return model

    def bilm_tf_parameters(self) -> dict[str, nn.Parameter]:
        """Weight-file dataset name -> parameter (identical shape and orientation)."""
        out = dict(self.token_encoder.bilm_tf_parameters())
        for direction in (0, 1):
            for layer, cell in enumerate(self.lstm.cells[direction]):
                p = lstm_prefix(direction, layer)
                out[f"{p}/W_0"], out[f"{p}/B"], out[f"{p}/W_P_0"] = cell.W_0, cell.B, cell.W_P_0
        return out

    def load_bilm_tf_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Copy arrays (as returned by :func:`elmo_fast.weights.read_weights`) into the parameters."""
        params = self.bilm_tf_parameters()
        missing = sorted(set(params) - set(weights))
        if missing:
            raise KeyError(f"weights lack datasets {missing}")
        with torch.no_grad():
            for name, param in params.items():
                value = torch.from_numpy(np.ascontiguousarray(weights[name]))
                if tuple(value.shape) != tuple(param.shape):
                    raise ValueError(f"dataset '{name}' expected shape {tuple(param.shape)}, "
                                     f"found {tuple(value.shape)}")
                param.copy_(value)

    def bilm_tf_weights(self) -> dict[str, np.ndarray]:
        """Parameters as dataset name -> float32 numpy array (bilm-tf layout)."""
        return {name: p.detach().cpu().float().numpy().copy() for name, p in self.bilm_tf_parameters().items()}

    def save(self, options_file: str | os.PathLike, weight_file: str | os.PathLike) -> None:
        """Write ``options.json`` and a bilm-tf ``weights.hdf5`` (both atomically)."""
        self.options.save(options_file)
        write_weights(weight_file, self.bilm_tf_weights())

    # ------------------------------------------------------------------ state
    def reset_states(self) -> None:
        """Forget the carried LSTM states (every row starts from zero on the next call)."""
        self.states.reset()

    # ------------------------------------------------------------------ forward
    def backend_name(self, device: torch.device, op: str) -> str:
        """The backend this model uses for ``op`` on tensors on ``device``."""
        return backends.resolve(self.backend, device, op)

    def numerics_context(self) -> ContextManager[numerics.Numerics]:
        """Context of this model's ``precision`` / ``order`` (entered around each op call)."""
        return numerics.use(getattr(self, "precision", None), getattr(self, "order", None))

    def encode_tokens(self, char_ids: torch.Tensor) -> torch.Tensor:
        """Token encoder on the selected backend: ``(..., 50)`` -> ``(..., P)``."""
        op = backends.get_op(self.backend_name(char_ids.device, "token_encoder"), "token_encoder")
        lead = char_ids.shape[:-1]
        with self.numerics_context():
            out = op(self.token_encoder, char_ids.reshape(-1, char_ids.shape[-1]))
        return out.reshape(*lead, out.shape[-1])

    def embed_tokens(self, char_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, 50)`` char ids -> token embeddings ``(B, T+2, P)`` with BOS/EOS, and mask ``(B, T+2)``."""
        ids, mask = add_sentence_boundaries(char_ids, token_mask(char_ids), self.bos_ids, self.eos_ids)
        return self.encode_tokens(ids), mask

    def forward(self, char_ids: torch.Tensor) -> dict[str, Any]:
        """Run the biLM.

        Args:
            char_ids: ``(B, T, 50)`` int64 from :func:`elmo_fast.batch_to_ids` (no BOS/EOS).

        Returns:
            ``{"activations": [layer0, layer1, layer2], "mask": (B, T+2) bool}``, each layer ``(B, T+2, 2P)``
            with BOS/EOS, zeros at padding; layer 0 is the token embedding duplicated.
        """
        if char_ids.dim() != 3 or char_ids.shape[-1] != 50:
            raise ValueError(f"char_ids: expected shape (B, T, 50), found {tuple(char_ids.shape)}")
        embeddings, mask = self.embed_tokens(char_ids)
        return self.forward_embeddings(embeddings, mask)

    def forward_embeddings(self, embeddings: torch.Tensor, mask: torch.Tensor,
                           dropout: float = 0.0) -> dict[str, Any]:
        """The biLSTM part: token embeddings ``(B, T+2, P)`` with BOS/EOS and mask ``(B, T+2)`` -> layers."""
        lengths = mask.long().sum(dim=1)
        batch = embeddings.shape[0]
        zero = self.lstm.zero_state(batch, embeddings)
        initial = self.states.initial(batch, zero) if self.stateful else zero
        op = backends.get_op(self.backend_name(embeddings.device, "bilstm"), "bilstm")
        with self.numerics_context():
            outputs, (h, c) = op(self.lstm, embeddings, lengths, initial, dropout)
        if self.stateful:
            self.states.update(h, c)
        fmask = mask.unsqueeze(-1).to(embeddings.dtype)
        layer0 = torch.cat([embeddings, embeddings], dim=-1) * fmask
        return {"activations": [layer0] + outputs, "mask": mask}

    # ------------------------------------------------------------------ training (two independent streams)
    def forward_streams(self, fw_embeddings: torch.Tensor, bw_embeddings: torch.Tensor,
                        state: tuple[torch.Tensor, torch.Tensor] | None = None,
                        dropout: float = 0.0) -> tuple[list[torch.Tensor], list[torch.Tensor],
                                                       tuple[torch.Tensor, torch.Tensor]]:
        """The biLSTM on bilm-tf training batches: independent forward and reverse token streams.

        Unlike :meth:`forward_embeddings` there is no padding and no BOS/EOS insertion: every row is ``T``
        tokens of an endless stream. The forward LSTMs read ``fw_embeddings`` left to right; the backward
        LSTMs read ``bw_embeddings`` (the reverse stream, already reversed in time) left to right too.
        The carried state is neither read from nor written to :attr:`states`; the caller carries it.

        Args:
            fw_embeddings: ``(B, T, P)`` token embeddings of the forward stream.
            bw_embeddings: ``(B, T, P)`` token embeddings of the reverse stream.
            state: ``(h (L, B, 2P), c (L, B, 2C))``, forward stream in the first half of the last axis,
                reverse stream in the second; zeros when None.
            dropout: probability on every LSTM layer's input (bilm-tf: residual adds the dropped input).

        Returns:
            per layer the forward outputs ``(B, T, P)``, per layer the backward outputs ``(B, T, P)`` (time
            in the reverse stream's order) and the final state (same layout as ``state``).

        Backends implement op ``bilstm_streams`` with this signature; a backend without it runs its
        ``bilstm`` op on a ``2B``-row stack (correct, twice the LSTM work).
        """
        name = self.backend_name(fw_embeddings.device, "bilstm_streams")
        if state is None:
            state = self.lstm.zero_state(fw_embeddings.shape[0], fw_embeddings)
        with self.numerics_context():
            if backends.available(name, "bilstm_streams"):
                return backends.get_op(name, "bilstm_streams")(self.lstm, fw_embeddings, bw_embeddings, state, dropout)
            return _bilstm_streams_stacked(backends.get_op(name, "bilstm"), self.lstm, fw_embeddings,
                                           bw_embeddings, state, dropout)


def _bilstm_streams_stacked(bilstm_op: Any, lstm: BiLSTM, fw: torch.Tensor, bw: torch.Tensor,
                            state: tuple[torch.Tensor, torch.Tensor], dropout: float
                            ) -> tuple[list[torch.Tensor], list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``bilstm_streams`` through a plain ``bilstm`` op: rows ``[:B]`` feed the forward direction, rows
    ``[B:]`` (the reverse stream flipped back in time, which the backward direction reads right to left)
    the backward direction; the unused half of each row's work is discarded."""
    batch, steps = fw.shape[0], fw.shape[1]
    P, C = lstm.options.projection_dim, lstm.options.dim
    h, c = state
    zh, zc = torch.zeros_like(h), torch.zeros_like(c)
    h2 = torch.cat([torch.cat([h[..., :P], zh[..., P:]], -1), torch.cat([zh[..., :P], h[..., P:]], -1)], dim=1)
    c2 = torch.cat([torch.cat([c[..., :C], zc[..., C:]], -1), torch.cat([zc[..., :C], c[..., C:]], -1)], dim=1)
    x = torch.cat([fw, bw.flip(1)], dim=0)
    lengths = torch.full((2 * batch,), steps, dtype=torch.long, device=fw.device)
    outputs, (h_new, c_new) = bilstm_op(lstm, x, lengths, (h2, c2), dropout)
    fw_out = [y[:batch, :, :P] for y in outputs]
    bw_out = [y[batch:, :, P:].flip(1) for y in outputs]
    new_h = torch.cat([h_new[:, :batch, :P], h_new[:, batch:, P:]], dim=-1)
    new_c = torch.cat([c_new[:, :batch, :C], c_new[:, batch:, C:]], dim=-1)
    return fw_out, bw_out, (new_h, new_c)
