"""Reference biLSTM with projection, cell/projection clipping and residual connections (docs/numerics.md#bilstm).

Weights keep the bilm-tf layout: ``W_0`` ``(in + P, 4C)`` with gate blocks (i, j, f, o), ``B`` ``(4C)``
without the +1 forget bias, ``W_P_0`` ``(C, P)``.

Order of the floating-point operations (AllenNLP's ``LstmCellWithProjection`` on bilm-tf weights, so that
long sequences do not drift from AllenNLP's numbers; ``benchmarks/allennlp_parity.py`` measures it):

* the +1 forget bias is folded into the bias once, ``b = B + [0, 0, 1, 0]`` in float32 (AllenNLP does it
  when loading the weight file), never added to the pre-activation at run time;
* per step, the input product (no bias) and the state product *with* the bias (``addmm``) are separate
  products of the active rows only, added last: ``z = x_t W_x + (h W_h + b)``;
* ``c = i*g + f*c_prev`` as two rounded products and one sum (no fused multiply-add), then the cell clip;
  ``h = (o * tanh(c)) W_P``, then the projection clip; the residual is ``y + x``.

State layout (as AllenNLP's ``ElmoLstm``): ``h`` ``(L, B, 2P)`` and ``c`` ``(L, B, 2C)``, forward
direction in the first half of the last axis, backward in the second.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..modes import normal_tensors
from ..options import LSTMOptions

__all__ = ["LSTMCellWeights", "folded_bias", "lstm_layer_reference", "BiLSTM", "StateSlots", "FORGET_BIAS"]

FORGET_BIAS = 1.0


def folded_bias(B: torch.Tensor) -> torch.Tensor:
    """bilm-tf's stored bias ``(4C)`` (gate blocks i, j, f, o) with the +1 forget bias added to the f block,
    in the bias's dtype (what AllenNLP stores after loading); differentiable in ``B``."""
    C = B.shape[-1] // 4
    offset = torch.zeros_like(B)
    offset[..., 2 * C:3 * C] = FORGET_BIAS
    return B + offset


def lstm_layer_reference(x: torch.Tensor, lengths: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor,
                         W_0: torch.Tensor, B: torch.Tensor, W_P_0: torch.Tensor,
                         cell_clip: float | None, proj_clip: float | None,
                         reverse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run one LSTM-with-projection layer over a padded batch, one time step at a time.

    Args:
        x: ``(B, T, in)`` inputs; positions ``t >= lengths[b]`` are padding.
        lengths: ``(B,)`` valid lengths.
        h0, c0: ``(B, P)``, ``(B, C)`` initial states.
        W_0, B, W_P_0: the cell's weights in bilm-tf layout.
        reverse: process each row's valid prefix from its last position to position 0.

    Returns:
        ``y`` ``(B, T, P)`` (the pre-residual projected output, zeros at padding), final ``h`` ``(B, P)``
        and ``c`` ``(B, C)`` (after the last processed position of each row; initial state for
        rows of length 0).
    """
    batch, steps, in_dim = x.shape
    C = W_P_0.shape[0]
    # AllenNLP's Linear layout (out, in): x W_x is F.linear(x, W_x^T), as its input/state linearities compute it
    W_x_t, W_h_t, W_p_t = W_0[:in_dim].t().contiguous(), W_0[in_dim:].t().contiguous(), W_P_0.t().contiguous()
    b = folded_bias(B)
    h, c = h0, c0
    outputs: list[torch.Tensor] = [x.new_zeros(())] * steps
    zeros = h0.new_zeros(batch, h0.shape[1])
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    lengths = lengths.to(x.device)
    for t in order:
        # only the rows still active at t enter the products (AllenNLP: the first n sorted rows); a product of
        # one row takes the BLAS's matrix-vector path, whose sums are ordered differently from a matrix product's
        rows = (lengths > t).nonzero().squeeze(1)
        n = rows.numel()
        if n == 0:
            outputs[t] = zeros
            continue
        full = n == batch
        x_t = x[:, t] if full else x[rows, t]
        h_t = h if full else h.index_select(0, rows)
        c_t = c if full else c.index_select(0, rows)
        z = F.linear(x_t, W_x_t) + F.linear(h_t, W_h_t, b)
        i, j, f, o = z.split(C, dim=1)
        c_new = torch.sigmoid(i) * torch.tanh(j) + torch.sigmoid(f) * c_t
        if cell_clip is not None:
            c_new = c_new.clamp(-cell_clip, cell_clip)
        h_new = F.linear(torch.sigmoid(o) * torch.tanh(c_new), W_p_t)
        if proj_clip is not None:
            h_new = h_new.clamp(-proj_clip, proj_clip)
        if full:
            h, c, outputs[t] = h_new, c_new, h_new
        else:
            h = h.index_copy(0, rows, h_new)
            c = c.index_copy(0, rows, c_new)
            outputs[t] = zeros.index_copy(0, rows, h_new)
    y = torch.stack(outputs, dim=1) if steps else x.new_zeros(batch, 0, h0.shape[1])
    return y, h, c


class LSTMCellWeights(nn.Module):
    """One cell's parameters, named as in the weight file (``.../LSTMCell/{W_0,B,W_P_0}``)."""

    def __init__(self, input_dim: int, cell_dim: int, projection_dim: int) -> None:
        super().__init__()
        self.W_0 = nn.Parameter(torch.empty(input_dim + projection_dim, 4 * cell_dim))
        self.B = nn.Parameter(torch.empty(4 * cell_dim))
        self.W_P_0 = nn.Parameter(torch.empty(cell_dim, projection_dim))


class BiLSTM(nn.Module):
    """The two independent LSTM stacks (forward, backward) of the biLM; reference path.

    ``cells[d][l]`` is direction d (0 forward, 1 backward), layer l.

    Args:
        options: sizes and clips. input_dim: width of the first layer's inputs (default P, as in every ELMo
            biLM; AllenNLP's ``ElmoLstm`` allows another, its ``input_size``). Only the reference ops read
            first-layer inputs of another width than P.
    """

    def __init__(self, options: LSTMOptions, input_dim: int | None = None) -> None:
        super().__init__()
        self.options = options
        P, C = options.projection_dim, options.dim
        self.input_dim = P if input_dim is None else int(input_dim)
        widths = [self.input_dim] + [P] * (options.n_layers - 1)
        self.cells = nn.ModuleList(nn.ModuleList(LSTMCellWeights(w, C, P) for w in widths) for _ in range(2))

    def zero_state(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        o = self.options
        return (like.new_zeros(o.n_layers, batch, 2 * o.projection_dim),
                like.new_zeros(o.n_layers, batch, 2 * o.dim))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor,
                state: tuple[torch.Tensor, torch.Tensor] | None = None,
                dropout: float = 0.0) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """Run both directions over a padded batch.

        Args:
            x: ``(B, T, input_dim)`` token embeddings (input_dim = P but for a standalone ``ElmoLstm``).
            lengths: ``(B,)`` valid lengths (BOS..EOS).
            state: initial ``(h (L, B, 2P), c (L, B, 2C))``; zeros when None.
            dropout: probability applied to every layer's input (training only; the residual adds the
                dropped-out input, as bilm-tf's DropoutWrapper around ResidualWrapper does).

        Returns:
            per layer ``(B, T, 2P)`` outputs [forward; backward] (zeros at padding), and the final state.
        """
        if state is None:
            state = self.zero_state(x.shape[0], x)
        fw, fw_h, fw_c = self.run_direction(0, x, lengths, state, dropout, reverse=False)
        bw, bw_h, bw_c = self.run_direction(1, x, lengths, state, dropout, reverse=True)
        outputs = [torch.cat([f, b], dim=-1) for f, b in zip(fw, bw)]
        return outputs, self.join_states((fw_h, bw_h), (fw_c, bw_c))

    def run_direction(self, direction: int, x: torch.Tensor, lengths: torch.Tensor,
                      state: tuple[torch.Tensor, torch.Tensor], dropout: float = 0.0, reverse: bool = False
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """One direction's layer stack (reference, one step at a time).

        Args:
            direction: 0 (forward cells) or 1 (backward cells).
            x: ``(B, T, P)`` inputs of the first layer; lengths ``(B,)``.
            state: ``(h (L, B, 2P), c (L, B, 2C))``; this direction's half is used.
            dropout: on every layer's input (dropout masks are drawn layer by layer).
            reverse: process each row's valid prefix from its end (the backward direction on a padded batch;
                False for a stream that is already reversed in time).

        Returns:
            per layer ``(B, T, P)`` outputs (residual added where configured), final ``h`` ``(B, P)`` and
            ``c`` ``(B, C)`` per layer.
        """
        o = self.options
        P, C = o.projection_dim, o.dim
        h_all, c_all = state
        outputs, final_h, final_c = [], [], []
        inputs = x
        for layer, cell in enumerate(self.cells[direction]):
            if dropout > 0.0:
                inputs = F.dropout(inputs, dropout, training=True)
            h0 = h_all[layer, :, direction * P:(direction + 1) * P]
            c0 = c_all[layer, :, direction * C:(direction + 1) * C]
            y, h, c = lstm_layer_reference(inputs, lengths, h0, c0, cell.W_0, cell.B, cell.W_P_0,
                                           o.cell_clip, o.proj_clip, reverse=reverse)
            if layer > 0 and o.use_skip_connections:
                y = y + inputs  # inputs are zero at padding (previous layer's output)
            outputs.append(y)
            final_h.append(h)
            final_c.append(c)
            inputs = y
        return outputs, final_h, final_c

    @staticmethod
    def join_states(final_h: tuple[list[torch.Tensor], list[torch.Tensor]],
                    final_c: tuple[list[torch.Tensor], list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-direction, per-layer final states -> ``(h (L, B, 2P), c (L, B, 2C))``, forward half first."""
        h = torch.stack([torch.cat([f, b], -1) for f, b in zip(*final_h)])
        c = torch.stack([torch.cat([f, b], -1) for f, b in zip(*final_c)])
        return h, c


class StateSlots:
    """Per-row carried LSTM state with AllenNLP's exact slot semantics (docs/numerics.md#bilstm).

    Slot r holds the final state of the row at position r of the last batch that had a row r.
    A smaller batch leaves the slots beyond it untouched; a larger batch starts new slots at zero.
    As in AllenNLP, a row whose new layer-0 state sums to exactly zero (degenerate rows only) keeps
    its old slot; the test is made separately for ``h`` and ``c``.
    """

    def __init__(self) -> None:
        self.h: torch.Tensor | None = None
        self.c: torch.Tensor | None = None

    def reset(self) -> None:
        self.h = self.c = None

    def initial(self, batch: int, zero_state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The initial ``(h, c)`` for a batch of ``batch`` rows; grows the slots with zeros if needed."""
        if self.h is None or self.c is None:
            return zero_state
        if self.h.shape[1] < batch:
            zh, zc = zero_state
            with normal_tensors():  # kept across calls: usable after leaving torch.inference_mode()
                self.h = torch.cat([self.h, zh[:, self.h.shape[1]:].to(self.h)], dim=1)
                self.c = torch.cat([self.c, zc[:, self.c.shape[1]:].to(self.c)], dim=1)
        return self.h[:, :batch], self.c[:, :batch]

    def update(self, h: torch.Tensor, c: torch.Tensor) -> None:
        """Store the final states ``h`` ``(L, B, 2P)``, ``c`` ``(L, B, 2C)`` of the last batch (detached; normal
        tensors also when made inside ``torch.inference_mode()``, so the next call may run in any mode)."""
        with normal_tensors():
            self._update(h.detach(), c.detach())

    def _update(self, h: torch.Tensor, c: torch.Tensor) -> None:
        if self.h is None or self.c is None:
            self.h, self.c = h.clone(), c.clone()
            return
        batch = h.shape[1]
        new = []
        for old, fresh in ((self.h, h), (self.c, c)):
            used = (fresh[0].sum(-1) != 0.0).view(1, batch, 1)
            merged = old.clone()
            merged[:, :batch] = torch.where(used, fresh, old[:, :batch])
            new.append(merged)
        self.h, self.c = new
