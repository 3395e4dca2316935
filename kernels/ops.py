"""The ``triton`` backend ops (same signatures as :mod:`elmo_fast.nn.ops`).

* ``token_encoder(encoder, char_ids (N, 50)) -> (N, P)``: fused char-CNN, fused highway layers,
  projection (matmul with the bias in the epilogue).
* ``bilstm(lstm, x (B, T, P), lengths (B,), state (h (L,B,2P), c (L,B,2C)), dropout) -> (outputs, state)``:
  per layer one fused bidirectional layer (both directions in every launch).
* ``bilstm_streams(lstm, fw (B,T,P), bw (B,T,P), state, dropout)``: the training form (see
  :meth:`elmo_fast.nn.bilm.BiLM.forward_streams`), both streams run forward in time.
* ``sampled_softmax_loss`` / ``full_softmax_loss``: the fused softmax kernels, with the signatures of
  :func:`elmo_fast.nn.softmax.sampled_softmax_loss` and :func:`elmo_fast.nn.softmax.full_softmax_loss`
  (the latter forward-only: evaluation).
* ``projection(x (N, F), W (F, P), b (P,)) -> (N, P)``: one matmul with the bias in its epilogue
  (:func:`elmo_fast.kernels.highway.projection`), differentiable.

Every op raises :class:`elmo_fast.backend.BackendError` when its tensors cannot run on Triton (CPU tensors
without ``TRITON_INTERPRET=1``, non-float32 parameters); it never falls back to another backend.

Dropout masks are drawn in the reference's order (direction-major, then layer) and with the same
shapes, so under a fixed seed the triton and reference backends drop the same units.

Environment (read through :mod:`elmo_fast.settings`): ``ELMO_FAST_TRITON_PRECISION=tf32x3|ieee|fp32|tf32|bf16``
(the matmul input mode of :mod:`elmo_fast.kernels.common`, default tf32x3; fp32 = ieee),
``ELMO_FAST_TRITON_LSTM=auto|step|persistent`` (LSTM kernel choice, default auto: persistent within the
compile-checked budget of :func:`elmo_fast.kernels.lstm_cell.persistent_fits`), ``ELMO_FAST_TRITON_MATMUL=
cublas|triton`` (plain fp32 matmuls on cuBLAS, default) and ``ELMO_FAST_TRITON_TILES=auto|gpu`` (under the
interpreter: run the GPU path's tile sizes). Every launch goes through :func:`elmo_fast.kernels.launch.launch`
(device guard: the tensors' CUDA device, not the current one).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from elmo_fast import settings
from elmo_fast.backend import register
from elmo_fast.nn.lstm import BiLSTM
from elmo_fast.nn.token_encoder import CharCNNTokenEncoder

from .char_cnn import char_cnn
from .common import check_device
from .launch import read_setting
from .highway import highway, projection
from .lstm_cell import lstm_bidirectional_layer
from .sampled_softmax import full_softmax_loss, sampled_softmax_loss

__all__ = ["token_encoder", "bilstm", "bilstm_streams", "lstm_kernel_choice"]

register("triton", "sampled_softmax_loss")(sampled_softmax_loss)
register("triton", "full_softmax_loss")(full_softmax_loss)
register("triton", "projection")(projection)

LSTM_ENV = "ELMO_FAST_TRITON_LSTM"


def lstm_kernel_choice() -> bool | None:
    """``ELMO_FAST_TRITON_LSTM``: None (auto), True (persistent), False (step kernels)."""
    return {"auto": None, "persistent": True, "step": False}[read_setting(settings.triton_lstm)]


@register("triton", "token_encoder")
def token_encoder(encoder: CharCNNTokenEncoder, char_ids: torch.Tensor) -> torch.Tensor:
    """``(N, L)`` char ids -> ``(N, P)`` token vectors through the fused kernels."""
    check_device("token_encoder", char_ids, *encoder.parameters())
    x = char_cnn(char_ids, encoder.char_embed, list(encoder.conv_weights), list(encoder.conv_biases),
                 encoder.options.activation)
    for hw in encoder.highways:
        x = highway(x, hw.W_carry, hw.b_carry, hw.W_transform, hw.b_transform)
    if encoder.W_proj is not None:
        x = projection(x, encoder.W_proj, encoder.b_proj)
    return x


def _dropout_masks(lstm: BiLSTM, shape: tuple[int, ...], dropout: float, like: torch.Tensor
                   ) -> list[list[torch.Tensor]] | None:
    """masks[direction][layer], drawn in the reference's order so that seeds reproduce its units."""
    if dropout <= 0.0:
        return None
    ones = like.new_ones(shape)
    return [[F.dropout(ones, dropout, training=True) for _ in range(lstm.options.n_layers)] for _ in range(2)]


def _run_layers(lstm: BiLSTM, x2: torch.Tensor, lengths: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
                dropout: float, reverse: bool) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """x2: ``(2, B, T, P)`` per-direction inputs (may be an expand). Returns per layer ``(2, B, T, P)``."""
    o = lstm.options
    P, C = o.projection_dim, o.dim
    h_all, c_all = state
    batch, steps = x2.shape[1], x2.shape[2]
    masks = _dropout_masks(lstm, (batch, steps, P), dropout, x2)
    persistent = lstm_kernel_choice()
    inputs = x2
    outs: list[torch.Tensor] = []
    hs, cs = [], []
    for layer in range(o.n_layers):
        if masks is not None:
            inputs = inputs * torch.stack([masks[0][layer], masks[1][layer]])
        W_0 = torch.stack([lstm.cells[0][layer].W_0, lstm.cells[1][layer].W_0])
        B = torch.stack([lstm.cells[0][layer].B, lstm.cells[1][layer].B])
        W_P = torch.stack([lstm.cells[0][layer].W_P_0, lstm.cells[1][layer].W_P_0])
        h0 = torch.stack([h_all[layer, :, :P], h_all[layer, :, P:]])
        c0 = torch.stack([c_all[layer, :, :C], c_all[layer, :, C:]])
        y, h, c = lstm_bidirectional_layer(inputs, W_0, B, W_P, h0, c0, lengths, o.cell_clip, o.proj_clip,
                                           residual=layer > 0 and o.use_skip_connections,
                                           persistent=persistent, reverse=reverse)
        outs.append(y)
        hs.append(torch.cat([h[0], h[1]], dim=-1))
        cs.append(torch.cat([c[0], c[1]], dim=-1))
        inputs = y
    return outs, (torch.stack(hs), torch.stack(cs))


@register("triton", "bilstm")
def bilstm(lstm: BiLSTM, x: torch.Tensor, lengths: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
           dropout: float = 0.0) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Both LSTM stacks over a padded batch: x ``(B, T, P)`` -> per layer ``(B, T, 2P)`` and the final state."""
    check_device("bilstm", x, state[0], state[1], *lstm.parameters())
    batch, steps, P = x.shape
    outs, new_state = _run_layers(lstm, x.unsqueeze(0).expand(2, batch, steps, P), lengths, state, dropout,
                                  reverse=True)
    return [torch.cat([y[0], y[1]], dim=-1) for y in outs], new_state


@register("triton", "bilstm_streams")
def bilstm_streams(lstm: BiLSTM, fw: torch.Tensor, bw: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
                   dropout: float = 0.0) -> tuple[list[torch.Tensor], list[torch.Tensor],
                                                  tuple[torch.Tensor, torch.Tensor]]:
    """Training form: forward stack on ``fw`` ``(B, T, P)``, backward stack on the (already reversed) ``bw``."""
    check_device("bilstm_streams", fw, bw, state[0], state[1], *lstm.parameters())
    batch, steps = fw.shape[0], fw.shape[1]
    lengths = torch.full((batch,), steps, dtype=torch.int32, device=fw.device)
    outs, new_state = _run_layers(lstm, torch.stack([fw, bw]), lengths, state, dropout, reverse=False)
    return [y[0] for y in outs], [y[1] for y in outs], new_state
