"""A straightforward AllenNLP-style ELMo: the tests' oracle for AllenNLP's operation order, and the speed
baseline the benchmarks time (``benchmarks/baseline.py`` imports it from here).

It follows the structure of AllenNLP's ``_ElmoCharacterEncoder`` + ``ElmoLstm`` / ``LstmCellWithProjection``
(restated from docs/numerics.md (token encoder, biLSTM), no code copied), including its costs:

* the char-CNN runs on **every padded position** (``B x (T + 2)`` rows), one ``Conv1d`` per filter;
* the highway is one ``Linear(F, 2F)`` per layer, the projection a ``Linear(F, P)``;
* the biLSTM sorts rows by length and runs a **Python loop per time step** per layer and direction, with
  separate ``input_linearity`` and ``state_linearity`` matmuls every step (weights are repacked by the
  BLAS on every call) on the rows still active, cloning the state tensors each step as AllenNLP does.

Gate order inside is AllenNLP's (i, f, j, o) with the +1 forget bias folded into ``state_linearity.bias``.
Numerically it is the same function as the reference (checked in ``tests/test_fast.py``); with one thread the
reference's LSTM gives its bits exactly (``tests/test_compat_numerics.py``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from elmo_fast.nn.bilm import BiLM, add_sentence_boundaries, token_mask
from elmo_fast.nn.lstm import FORGET_BIAS

__all__ = ["AllenNlpStyleElmo"]


class _Cell(nn.Module):
    def __init__(self, in_dim: int, C: int, P: int) -> None:
        super().__init__()
        self.input_linearity = nn.Linear(in_dim, 4 * C, bias=False)
        self.state_linearity = nn.Linear(P, 4 * C, bias=True)
        self.state_projection = nn.Linear(C, P, bias=False)


def _tf_to_allennlp(W: torch.Tensor, C: int) -> torch.Tensor:
    """Columns (i, j, f, o) -> (i, f, j, o) along the last axis."""
    i, j, f, o = W.split(C, dim=-1)
    return torch.cat([i, f, j, o], dim=-1)


class AllenNlpStyleElmo(nn.Module):
    """AllenNLP-style biLM built from a :class:`~elmo_fast.nn.bilm.BiLM`'s weights (float32, CPU)."""

    def __init__(self, bilm: BiLM) -> None:
        super().__init__()
        o = bilm.options
        self.options = o
        enc = bilm.token_encoder
        P, C = o.lstm.projection_dim, o.lstm.dim
        self.cell_clip, self.proj_clip = o.lstm.cell_clip, o.lstm.proj_clip
        self.skip = o.lstm.use_skip_connections
        with torch.no_grad():
            table = torch.cat([enc.char_embed.new_zeros(1, enc.char_embed.shape[1]), enc.char_embed.detach()], 0)
            self.char_embedding = nn.Parameter(table.clone())
            self.convs = nn.ModuleList()
            for W, b in zip(enc.conv_weights, enc.conv_biases):
                conv = nn.Conv1d(W.shape[2], W.shape[3], W.shape[1], bias=True)
                conv.weight.copy_(W[0].permute(2, 1, 0))
                conv.bias.copy_(b)
                self.convs.append(conv)
            self.highways = nn.ModuleList()
            Fdim = o.char_cnn.n_filters
            for hw in enc.highways:
                lin = nn.Linear(Fdim, 2 * Fdim)  # AllenNLP: first half = transform, second = negated carry gate
                lin.weight.copy_(torch.cat([hw.W_transform.t(), -hw.W_carry.t()], 0))
                lin.bias.copy_(torch.cat([hw.b_transform, -hw.b_carry]))
                self.highways.append(lin)
            self.projection = nn.Linear(Fdim, P)
            self.projection.weight.copy_(enc.W_proj.t())
            self.projection.bias.copy_(enc.b_proj)
            self.cells = nn.ModuleList()
            for d in (0, 1):
                layers = nn.ModuleList()
                for cell in bilm.lstm.cells[d]:
                    c = _Cell(P, C, P)
                    W = _tf_to_allennlp(cell.W_0.detach(), C)
                    c.input_linearity.weight.copy_(W[:P].t())
                    c.state_linearity.weight.copy_(W[P:].t())
                    bias = _tf_to_allennlp(cell.B.detach(), C).clone()
                    bias[C:2 * C] += FORGET_BIAS
                    c.state_linearity.bias.copy_(bias)
                    c.state_projection.weight.copy_(cell.W_P_0.detach().t())
                    layers.append(c)
                self.cells.append(layers)
        self.activation = o.char_cnn.activation
        self.register_buffer("bos_ids", bilm.bos_ids.clone(), persistent=False)
        self.register_buffer("eos_ids", bilm.eos_ids.clone(), persistent=False)

    # ------------------------------------------------------------------ token encoder (every position)
    def encode(self, char_ids: torch.Tensor) -> torch.Tensor:
        """``(..., 50)`` -> ``(..., P)``: char-CNN, highway, projection on every position given."""
        lead = char_ids.shape[:-1]
        x = F.embedding(char_ids.reshape(-1, char_ids.shape[-1]), self.char_embedding).transpose(1, 2)
        act = torch.relu if self.activation == "relu" else torch.tanh
        feats = torch.cat([act(conv(x).max(dim=-1).values) for conv in self.convs], dim=-1)
        for lin in self.highways:
            z = lin(feats)
            nonlinear, gate = z.chunk(2, dim=-1)
            gate = torch.sigmoid(gate)
            feats = gate * feats + (1 - gate) * torch.relu(nonlinear)
        return self.projection(feats).reshape(*lead, -1)

    # ------------------------------------------------------------------ one direction, one layer
    def _cell_forward(self, cell: _Cell, inputs: torch.Tensor, lengths: list[int], h0: torch.Tensor,
                      c0: torch.Tensor, backward: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """AllenNLP's per-time-step loop on length-sorted rows (longest first)."""
        batch, steps, _ = inputs.shape
        C = c0.shape[1]
        out = inputs.new_zeros(batch, steps, h0.shape[1])
        state, memory = h0, c0
        for t in range(steps):
            index = steps - 1 - t if backward else t
            n = sum(1 for length in lengths if length > index)  # rows still active at this position
            if n == 0:
                continue
            prev_memory = memory[:n].clone()
            prev_state = state[:n].clone()
            z = cell.input_linearity(inputs[:n, index]) + cell.state_linearity(prev_state)
            i = torch.sigmoid(z[:, :C])
            f = torch.sigmoid(z[:, C:2 * C])
            j = torch.tanh(z[:, 2 * C:3 * C])
            o = torch.sigmoid(z[:, 3 * C:])
            mem = i * j + f * prev_memory
            if self.cell_clip is not None:
                mem = torch.clamp(mem, -self.cell_clip, self.cell_clip)
            h = cell.state_projection(o * torch.tanh(mem))
            if self.proj_clip is not None:
                h = torch.clamp(h, -self.proj_clip, self.proj_clip)
            memory = memory.clone()
            state = state.clone()
            memory[:n] = mem
            state[:n] = h
            out[:n, index] = h
        return out, state, memory

    def lstm(self, x: torch.Tensor, lengths: torch.Tensor, dropout: float = 0.0,
             directions: tuple[int, ...] = (0, 1)) -> list[list[torch.Tensor]]:
        """``(B, T, P)`` -> per direction, per layer ``(B, T, P)`` (sort by length, run, unsort); zero state."""
        sorted_len, order = torch.sort(lengths, descending=True)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        xs = x[order]
        lens = sorted_len.tolist()
        P, C = self.options.lstm.projection_dim, self.options.lstm.dim
        batch = x.shape[0]
        outputs: list[list[torch.Tensor]] = []
        for d in directions:
            inputs, per_layer = xs, []
            for layer, cell in enumerate(self.cells[d]):
                if dropout > 0.0:
                    inputs = F.dropout(inputs, dropout, training=True)
                h0, c0 = x.new_zeros(batch, P), x.new_zeros(batch, C)
                y, _, _ = self._cell_forward(cell, inputs, lens, h0, c0, backward=d == 1)
                if layer > 0 and self.skip:
                    y = y + inputs
                per_layer.append(y[inverse])
                inputs = y
            outputs.append(per_layer)
        return outputs

    def forward(self, char_ids: torch.Tensor) -> list[torch.Tensor]:
        """``(B, T, 50)`` -> the three layers ``(B, T + 2, 2P)`` (zeros at padding), like :class:`BiLM`."""
        ids, mask = add_sentence_boundaries(char_ids, token_mask(char_ids), self.bos_ids, self.eos_ids)
        emb = self.encode(ids)
        fw, bw = self.lstm(emb, mask.long().sum(1))
        fmask = mask.unsqueeze(-1).to(emb.dtype)
        return [torch.cat([emb, emb], -1) * fmask] + [torch.cat([a, b], -1) for a, b in zip(fw, bw)]

    def stream_outputs(self, fw_chars: torch.Tensor, bw_chars: torch.Tensor,
                       dropout: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: top-layer outputs of the forward stream ``(B, T, P)`` and of the reverse stream (already
        reversed in time), char-CNN on every position of both streams."""
        batch, steps = fw_chars.shape[:2]
        lengths = torch.full((batch,), steps, dtype=torch.long)
        fw = self.lstm(self.encode(fw_chars), lengths, dropout, directions=(0,))[0][-1]
        # the backward LSTM reads its input right to left: give it the reverse stream flipped back
        bw = self.lstm(self.encode(bw_chars).flip(1), lengths, dropout, directions=(1,))[0][-1].flip(1)
        return fw, bw
