"""Fast CPU biLSTM (ELMO_SPEC §3): the same function as :func:`elmo_fast.nn.lstm.lstm_layer_reference`.

How it saves work, compared with the per-time-step reference:

* **Packed, length-sorted rows.** Rows are sorted by length (longest first) and laid out time-major
  like a ``PackedSequence``: step ``s`` owns rows ``offs[s] : offs[s] + n_s`` where ``n_s`` = number of
  rows longer than ``s``. Rows drop out as their sentences end, so no work is spent on padding, and every
  per-step slice (inputs, gates, outputs, the previous ``h``) is a contiguous view: no gathers inside
  the loop. The backward direction uses the same layout on each row's reversed valid prefix.
* **Input projections for all steps in one matmul** per (layer, direction), bias and the +1 forget bias
  folded in; only the recurrent ``h @ W_h`` and the projection ``hc @ W_P`` remain per step.
* **Weights packed once** into oneDNN's layout (:class:`~elmo_fast.fast.packing.PackedLinear`), cached
  until the parameters change.
* **Gate columns reordered** from bilm-tf's (i, j, f, o) to (i, f, o, j) so one in-place sigmoid covers
  three gates and one tanh the fourth; state and output updates write in place into preallocated buffers.
* **Training** uses a hand-written backward (:class:`_Recurrence`): the per-step work is only
  ``dz @ W_hᵀ`` and ``dh @ W_Pᵀ``; the weight gradients are two large matmuls over all steps at once.

State slots: the op receives the initial state per row in the caller's row order and returns the final
state per row in the same order (sorting is internal), so BiLM's slot semantics are preserved.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..nn.lstm import FORGET_BIAS, BiLSTM
from .packing import PackedLinear, cached

__all__ = ["bilstm_fast", "bilstm_streams_fast", "PackedPlan", "make_plan", "recurrence_forward"]


@dataclass
class PackedPlan:
    """Where each (row, step) of a padded batch lives in the time-major packed layout.

    Attributes:
        order: ``(B,)`` original row index of each sorted row (longest first; stable).
        inverse: ``(B,)`` sorted position of each original row.
        batch_sizes: ``n_s`` for each step ``s`` (non-increasing).
        offsets: start row of each step in the packed layout (``len(batch_sizes) + 1`` entries).
        src_fw, src_bw: ``(total,)`` flat index ``b * T + t`` into a ``(B, T, ...)`` tensor of the packed
            row, for the forward direction (``t = s``) and the backward one (``t = L_b - 1 - s``).
        last: ``(B,)`` packed row of each sorted row's last step, or ``total + k`` for empty rows (index into
            ``cat([packed, initial])``).
    """

    order: torch.Tensor
    inverse: torch.Tensor
    batch_sizes: list[int]
    offsets: list[int]
    src_fw: torch.Tensor
    src_bw: torch.Tensor
    last: torch.Tensor
    total: int


def make_plan(lengths: torch.Tensor, steps: int) -> PackedPlan:
    """Build the packed layout for ``lengths`` ``(B,)`` over a padded time axis of ``steps``."""
    lengths = lengths.detach().to("cpu", torch.long)
    batch = lengths.shape[0]
    if batch and int(lengths.max()) > steps:
        raise ValueError(f"lengths: a length ({int(lengths.max())}) exceeds the time axis ({steps})")
    sorted_len, order = torch.sort(lengths, descending=True, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(batch)
    max_len = int(sorted_len[0]) if batch else 0
    t = torch.arange(max_len)
    valid = t[:, None] < sorted_len[None, :]  # (S, B) time-major
    batch_sizes = valid.sum(1).tolist()
    offsets = [0]
    for n in batch_sizes:
        offsets.append(offsets[-1] + n)
    s_idx, k_idx = valid.nonzero(as_tuple=True)  # time-major order = packed order
    rows = order[k_idx]
    src_fw = rows * steps + s_idx
    src_bw = rows * steps + (sorted_len[k_idx] - 1 - s_idx)
    total = offsets[-1]
    k = torch.arange(batch)
    off_t = torch.tensor(offsets[:-1] + [total], dtype=torch.long)
    last = torch.where(sorted_len > 0, off_t[(sorted_len - 1).clamp(min=0)] + k, total + k)
    return PackedPlan(order, inverse, batch_sizes, offsets, src_fw, src_bw, last, total)


# ----------------------------------------------------------------------------------------------------------
# The recurrence over packed rows (shared by inference and the training Function)
# ----------------------------------------------------------------------------------------------------------
def recurrence_forward(gates: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_h: PackedLinear,
                       w_p: PackedLinear, plan: PackedPlan, cell_clip: float | None, proj_clip: float | None,
                       save: bool) -> tuple[torch.Tensor, torch.Tensor, dict | None]:
    """Advance one direction of one layer over all steps.

    Args:
        gates: ``(total, 4C)`` input projections incl. bias and forget bias, gate order (i, f, o, j);
            overwritten in place with the activated gates.
        h0, c0: ``(B, P)``, ``(B, C)`` initial states of the sorted rows.
        w_h: packed ``(P, 4C)`` recurrent weight (same gate order); w_p: packed ``(C, P)`` projection.
        save: keep what the backward needs (raw cell values, ``o * tanh(c)``, raw projections).

    Returns:
        ``y`` ``(total, P)`` clipped projections (= the carried ``h``), ``c`` ``(total, C)`` clipped cells,
        and the saved tensors (or None).
    """
    total, four_c = gates.shape
    C = four_c // 4
    P = h0.shape[1]
    y = gates.new_empty(total, P)
    c_all = gates.new_empty(total, C)
    c_raw = gates.new_empty(total, C) if save and cell_clip is not None else None
    hc_all = gates.new_empty(total, C) if save else gates.new_empty(max(plan.batch_sizes, default=0), C)
    p_raw = gates.new_empty(total, P) if save and proj_clip is not None else None
    offs = plan.offsets
    for s, n in enumerate(plan.batch_sizes):
        lo, hi = offs[s], offs[s] + n
        if s == 0:
            h_prev, c_prev = h0[:n], c0[:n]
        else:
            h_prev, c_prev = y[offs[s - 1]:offs[s - 1] + n], c_all[offs[s - 1]:offs[s - 1] + n]
        g = gates[lo:hi]
        g.add_(w_h(h_prev))
        g[:, :3 * C].sigmoid_()
        g[:, 3 * C:].tanh_()
        i, f, o, j = g[:, :C], g[:, C:2 * C], g[:, 2 * C:3 * C], g[:, 3 * C:]
        c = c_all[lo:hi] if c_raw is None else c_raw[lo:hi]
        torch.mul(f, c_prev, out=c)
        c.addcmul_(i, j)
        if cell_clip is not None:
            torch.clamp(c, -cell_clip, cell_clip, out=c_all[lo:hi])
        hc = hc_all[lo:hi] if save else hc_all[:n]
        torch.tanh(c_all[lo:hi], out=hc)
        hc.mul_(o)
        hp = w_p(hc)
        if p_raw is not None:
            p_raw[lo:hi] = hp
        if proj_clip is not None:
            torch.clamp(hp, -proj_clip, proj_clip, out=y[lo:hi])
        else:
            y[lo:hi] = hp
    saved = {"c_raw": c_raw, "hc": hc_all, "p_raw": p_raw} if save else None
    return y, c_all, saved


def _clip_mask(raw: torch.Tensor | None, clip: float | None) -> torch.Tensor | None:
    # torch.clamp's gradient: 1 where min <= x <= max, else 0
    if raw is None or clip is None:
        return None
    return (raw >= -clip) & (raw <= clip)


class _Recurrence(torch.autograd.Function):
    """Autograd wrapper of :func:`recurrence_forward` with a hand-written backward through time.

    Inputs ``gates_in (total, 4C)``, ``h0 (B, P)``, ``c0 (B, C)``, ``W_h (P, 4C)``, ``W_P (C, P)``
    (gate order i, f, o, j); outputs ``y (total, P)`` and ``c (total, C)``.
    """

    @staticmethod
    def forward(ctx, gates_in, h0, c0, W_h, W_P, plan, cell_clip, proj_clip):  # type: ignore[override]
        w_h = PackedLinear(W_h, batch_hint=max(plan.batch_sizes, default=1))
        w_p = PackedLinear(W_P, batch_hint=max(plan.batch_sizes, default=1))
        gates = gates_in.detach().clone()
        y, c_all, saved = recurrence_forward(gates, h0.detach(), c0.detach(), w_h, w_p, plan, cell_clip,
                                             proj_clip, save=True)
        ctx.plan, ctx.cell_clip, ctx.proj_clip = plan, cell_clip, proj_clip
        ctx.save_for_backward(gates, h0, c0, W_h, W_P, y, c_all, saved["c_raw"], saved["hc"], saved["p_raw"])
        return y, c_all

    @staticmethod
    def backward(ctx, dy, dc_out):  # type: ignore[override]
        gates, h0, c0, W_h, W_P, y, c_all, c_raw, hc_all, p_raw = ctx.saved_tensors
        plan, cell_clip, proj_clip = ctx.plan, ctx.cell_clip, ctx.proj_clip
        total, four_c = gates.shape
        C = four_c // 4
        P = h0.shape[1]
        hint = max(plan.batch_sizes, default=1)
        # the transposed products dz @ W_hᵀ and dhp @ W_Pᵀ as packed linears
        w_hT = PackedLinear(W_h.detach().t(), batch_hint=hint)
        w_pT = PackedLinear(W_P.detach().t(), batch_hint=hint)
        if dy is None:
            dy = gates.new_zeros(total, P)
        cell_mask = _clip_mask(c_raw, cell_clip)
        proj_mask = _clip_mask(p_raw, proj_clip)
        dz = gates.new_empty(total, four_c)
        dhp_all = gates.new_empty(total, P)
        dh_state = h0.new_zeros(h0.shape).detach()
        dc_state = c0.new_zeros(c0.shape).detach()
        offs = plan.offsets
        tmp = gates.new_empty(hint, C)
        for s in range(len(plan.batch_sizes) - 1, -1, -1):
            n = plan.batch_sizes[s]
            lo, hi = offs[s], offs[s] + n
            dhp = dhp_all[lo:hi]
            torch.add(dy[lo:hi], dh_state[:n], out=dhp)
            if proj_mask is not None:
                dhp.mul_(proj_mask[lo:hi])
            dhc = w_pT(dhp)  # (n, C)
            g = gates[lo:hi]
            i, f, o, j = g[:, :C], g[:, C:2 * C], g[:, 2 * C:3 * C], g[:, 3 * C:]
            dzs = dz[lo:hi]
            di, df, do, dj = dzs[:, :C], dzs[:, C:2 * C], dzs[:, 2 * C:3 * C], dzs[:, 3 * C:]
            tc = tmp[:n]
            torch.tanh(c_all[lo:hi], out=tc)
            torch.mul(dhc, tc, out=do)                    # d o
            # dc = dhc * o * (1 - tanh(c)^2) + carried + d(c output)
            dc = dhc.mul_(o)
            tc.mul_(tc).neg_().add_(1.0)
            dc.mul_(tc)
            dc.add_(dc_state[:n])
            if dc_out is not None:
                dc.add_(dc_out[lo:hi])
            if cell_mask is not None:
                dc.mul_(cell_mask[lo:hi])
            c_prev = c0[:n] if s == 0 else c_all[offs[s - 1]:offs[s - 1] + n]
            torch.mul(dc, j, out=di)
            torch.mul(dc, i, out=dj)
            torch.mul(dc, c_prev, out=df)
            torch.mul(dc, f, out=dc_state[:n])            # carried to step s - 1
            # through the activations: sigmoid' = a (1 - a), tanh' = 1 - a^2
            sig = g[:, :3 * C]
            dzs[:, :3 * C].mul_(sig).mul_(1.0 - sig)
            dj.mul_(1.0 - j * j)
            dh_state[:n] = w_hT(dzs)
        # weight gradients: one matmul each over all steps
        grad_W_h = grad_W_P = None
        if ctx.needs_input_grad[3]:
            h_prev = torch.cat([h0[:plan.batch_sizes[0]] if plan.batch_sizes else h0[:0],
                                y[_prev_rows(plan)]], dim=0)
            grad_W_h = h_prev.t() @ dz
        if ctx.needs_input_grad[4]:
            grad_W_P = hc_all.t() @ dhp_all
        return dz, dh_state, dc_state, grad_W_h, grad_W_P, None, None, None


def _prev_rows(plan: PackedPlan) -> torch.Tensor:
    """Packed rows of ``h_{s-1}`` for every packed row of steps ``s >= 1`` (in packed order)."""
    idx = [torch.arange(plan.offsets[s - 1], plan.offsets[s - 1] + n)
           for s, n in enumerate(plan.batch_sizes) if s > 0]
    return torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long)


# ----------------------------------------------------------------------------------------------------------
# Weight preparation
# ----------------------------------------------------------------------------------------------------------
def _gate_perm(C: int, device: torch.device) -> torch.Tensor:
    """bilm-tf gate blocks (i, j, f, o) -> (i, f, o, j)."""
    blocks = torch.arange(4 * C, device=device).view(4, C)
    return blocks[[0, 2, 3, 1]].reshape(-1)


def _cell_weights(cell, P: int, C: int, differentiable: bool):
    """(W_x (P, 4C), bias (4C) incl. forget bias, W_h (P, 4C), W_P (C, P)) in (i, f, o, j) order."""
    perm = _gate_perm(C, cell.W_0.device)
    W = cell.W_0.index_select(1, perm)
    bias = cell.B.index_select(0, perm)
    fb = torch.zeros(4 * C, dtype=bias.dtype, device=bias.device)
    fb[C:2 * C] = FORGET_BIAS
    bias = bias + fb
    if not differentiable:
        W, bias = W.detach(), bias.detach()
    return W[:P], bias, W[P:], cell.W_P_0


def _packed_cell(cell, P: int, C: int, hint: int):
    """Inference weights of one cell, prepared and oneDNN-packed once per parameter version."""
    def build():
        with torch.no_grad():
            W_x, bias, W_h, W_P = _cell_weights(cell, P, C, differentiable=False)
            return (PackedLinear(W_x, bias, batch_hint=max(hint, 256)), PackedLinear(W_h, batch_hint=32),
                    PackedLinear(W_P, batch_hint=32))
    return cached("fast_lstm_cell", [cell.W_0, cell.B, cell.W_P_0], build)


# ----------------------------------------------------------------------------------------------------------
# The op
# ----------------------------------------------------------------------------------------------------------
def _wants_grad(lstm: BiLSTM, *tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (any(t.requires_grad for t in tensors)
                                        or any(p.requires_grad for p in lstm.parameters()))


def _run_stacks(lstm: BiLSTM, inputs: tuple[torch.Tensor, torch.Tensor], state: tuple[torch.Tensor, torch.Tensor],
                plan: PackedPlan, order: torch.Tensor | None, dropout: float, grad: bool
                ) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """Both directions' layer stacks on packed inputs.

    Args:
        inputs: per direction ``(total, P)`` packed first-layer inputs (processing order).
        state: initial ``(h (L, B, 2P), c (L, B, 2C))`` in the caller's row order.
        order: sorted row -> caller row (None: rows are already in plan order).

    Returns:
        per direction per layer: packed outputs ``(total, P)`` (residual included), final ``h`` ``(B, P)``
        and ``c`` ``(B, C)`` in the caller's row order.
    """
    o = lstm.options
    P, C = o.projection_dim, o.dim
    h_all, c_all = state
    dev = inputs[0].device
    last = plan.last.to(dev)
    inverse = None if order is None else plan.inverse.to(dev)
    outs: list[list[torch.Tensor]] = [[], []]
    fin_h: list[list[torch.Tensor]] = [[], []]
    fin_c: list[list[torch.Tensor]] = [[], []]
    for d in (0, 1):
        x = inputs[d]
        for layer in range(o.n_layers):
            cell = lstm.cells[d][layer]
            if dropout > 0.0:
                x = F.dropout(x, dropout, training=True)
            h0 = h_all[layer, :, d * P:(d + 1) * P]
            c0 = c_all[layer, :, d * C:(d + 1) * C]
            if order is not None:
                h0, c0 = h0.index_select(0, order), c0.index_select(0, order)
            if grad:
                W_x, bias, W_h, W_P = _cell_weights(cell, P, C, differentiable=True)
                gates = torch.addmm(bias, x, W_x)
                y, c_seq = _Recurrence.apply(gates, h0, c0, W_h, W_P, plan, o.cell_clip, o.proj_clip)
            else:
                w_x, w_h, w_p = _packed_cell(cell, P, C, plan.total)
                h0, c0 = h0.contiguous(), c0.contiguous()
                gates = w_x(x.contiguous())
                y, c_seq, _ = recurrence_forward(gates, h0, c0, w_h, w_p, plan, o.cell_clip, o.proj_clip, save=False)
            h_fin = torch.cat([y, h0], 0).index_select(0, last)
            c_fin = torch.cat([c_seq, c0], 0).index_select(0, last)
            if inverse is not None:
                h_fin, c_fin = h_fin.index_select(0, inverse), c_fin.index_select(0, inverse)
            fin_h[d].append(h_fin)
            fin_c[d].append(c_fin)
            out = y + x if (layer > 0 and o.use_skip_connections) else y
            outs[d].append(out)
            x = out
    return outs, fin_h, fin_c


def _stack_state(fin: list[list[torch.Tensor]]) -> torch.Tensor:
    return torch.stack([torch.cat([fw, bw], -1) for fw, bw in zip(fin[0], fin[1])])


def bilstm_fast(lstm: BiLSTM, x: torch.Tensor, lengths: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
                dropout: float = 0.0) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Both directions of every layer; same signature and result as :func:`elmo_fast.nn.ops.bilstm`.

    Args:
        x: ``(B, T, P)`` float32 token embeddings (BOS/EOS included), padded.
        lengths: ``(B,)`` valid lengths.
        state: initial ``(h (L, B, 2P), c (L, B, 2C))`` per row (caller's row order).
        dropout: probability applied to each layer's input, independently per direction (as the reference).

    Returns:
        per layer ``(B, T, 2P)`` outputs (zeros at padding) and final ``(h, c)`` per row (caller's order).
    """
    P = lstm.options.projection_dim
    batch, steps, _ = x.shape
    plan = make_plan(lengths, steps)
    dev = x.device
    src = (plan.src_fw.to(dev), plan.src_bw.to(dev))
    grad = _wants_grad(lstm, x, *state)
    x_flat = x.reshape(batch * steps, P)
    inputs = (x_flat.index_select(0, src[0]), x_flat.index_select(0, src[1]))
    outs, fin_h, fin_c = _run_stacks(lstm, inputs, state, plan, plan.order.to(dev), dropout, grad)
    outputs = []
    for fw, bw in zip(outs[0], outs[1]):
        halves = [x.new_zeros(batch * steps, P).index_copy(0, src[d], y) for d, y in ((0, fw), (1, bw))]
        outputs.append(torch.cat(halves, dim=-1).view(batch, steps, 2 * P))
    return outputs, (_stack_state(fin_h), _stack_state(fin_c))


def bilstm_streams_fast(lstm: BiLSTM, fw: torch.Tensor, bw: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
                        dropout: float = 0.0
                        ) -> tuple[list[torch.Tensor], list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Training streams (see :meth:`elmo_fast.nn.bilm.BiLM.forward_streams`): both stacks read their own
    ``(B, T, P)`` stream left to right; every row has length T, so the packed layout is plain time-major.

    Returns:
        per layer forward outputs ``(B, T, P)``, per layer backward outputs ``(B, T, P)`` (reverse-stream
        order), and the final state ``(h (L, B, 2P), c (L, B, 2C))``.
    """
    batch, steps, P = fw.shape
    plan = make_plan(torch.full((batch,), steps, dtype=torch.long), steps)
    grad = _wants_grad(lstm, fw, bw, *state)
    inputs = (fw.transpose(0, 1).reshape(steps * batch, P), bw.transpose(0, 1).reshape(steps * batch, P))
    outs, fin_h, fin_c = _run_stacks(lstm, inputs, state, plan, None, dropout, grad)
    unpack = [[y.view(steps, batch, P).transpose(0, 1) for y in per_dir] for per_dir in outs]
    return unpack[0], unpack[1], (_stack_state(fin_h), _stack_state(fin_c))
