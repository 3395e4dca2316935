"""Fast CPU biLSTM (docs/numerics.md#bilstm): the same function as :func:`elmo_fast.nn.lstm.lstm_layer_reference`.

How it saves work, compared with the per-time-step reference:

* **Packed, length-sorted rows.** Rows are sorted by length (longest first) and laid out time-major
  like a ``PackedSequence``: step ``s`` owns rows ``offs[s] : offs[s] + n_s`` where ``n_s`` = number of
  rows longer than ``s``. Rows drop out as their sentences end, so no work is spent on padding, and every
  per-step slice (inputs, gates, outputs, the previous ``h``) is a contiguous view: no gathers inside
  the loop. The backward direction uses the same layout on each row's reversed valid prefix.
* **Both directions advance together.** A row's backward pass has as many steps as its forward pass, so
  the two directions share one plan and every per-step tensor is stacked ``(2, n_s, ...)``: each
  elementwise op covers both directions (half the per-op overhead, which dominates small batches), and
  small products run as one ``torch.bmm`` over the pair (:class:`PairLinear`).
* **Input projections for all steps in one matmul** per (layer, direction), without bias; per step only the
  recurrent ``h @ W_h + b`` (bias with the +1 forget bias folded in, as AllenNLP's ``state_linearity``) and
  the projection ``hc @ W_P`` remain. The floating-point order is AllenNLP's (see :mod:`elmo_fast.nn.lstm`):
  ``z = x W_x + (h W_h + b)``, ``c = i*g + f*c_prev`` without a fused multiply-add. At inference
  the first layer's projection runs once per *distinct* input row (repeated tokens) and is gathered.
* **order "allennlp"** (:func:`exact_order`): AllenNLP's bits. Positions with at least four active rows run as the
  stacked steps above (the BLAS gives every product of that many rows the same bits, whatever its row count or
  layout); the positions with 1-3 active rows (the tails of the longest sentences; every position at batch 1-3),
  where the BLAS's small-row kernels sum in an order that depends on the row count, run as AllenNLP runs them:
  one product per position and direction in ``Linear``'s layout, in a *prologue* (backward direction) before and
  an *epilogue* (forward direction) after the stacked steps (:class:`AllenNLPTails`), their products in column
  blocks so a weight is read once for all the rows that need it (:func:`_linear_rows`).
* **Weights packed once** into oneDNN's layout (:class:`~elmo_fast.fast.packing.PackedLinear`), cached
  until the parameters change; large per-step products use them.
* **Gate columns reordered** from bilm-tf's (i, j, f, o) to (i, f, o, j) so one in-place sigmoid covers
  three gates and one tanh the fourth; state and output updates write in place into preallocated buffers
  whose per-step views are made once per layer (``Tensor.split``), not per step.
* **Fused cell kernel** (order ``"fast"``, float32): each step's elementwise work (activations, cell update, clip,
  ``tanh(c)``, ``o * tanh(c)``; in the backward the ~15 ops from ``d(o tanh c)`` to the gate gradients) runs in one
  vectorised C pass (:mod:`elmo_fast.fast.native`, compiled on first use; without a C compiler the torch ops
  below run). Same op order and rounding except sigmoid/tanh (<= 2 float32 ulp; torch's: 2 and 1).
* **Training** uses a hand-written backward (:class:`_Layer`, input projection included): the per-step
  work is only ``dz @ W_hᵀ`` and ``dh @ W_Pᵀ`` plus in-place elementwise passes; all weight gradients
  (``W_0``, bias, ``W_P``) and the input gradient are a few large matmuls over all steps at once. These one-off
  products (and the training input projection) go through :func:`elmo_fast.fast.packing.matmul`, which applies the
  model's precision setting (the input and ``W_0`` gradients through :func:`~elmo_fast.fast.packing.pair_matmul`:
  oneDNN's GEMM at the original model's sizes when the shapes repeat, as training streams' do); per-step products go
  through :class:`PairLinear`. The gate permutation of ``W_0`` and its gradient is four block copies.

State slots: the op receives the initial state per row in the caller's row order and returns the final
state per row in the same order (sorting is internal), so BiLM's slot semantics are preserved.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import numerics
from ..nn.lstm import FORGET_BIAS, BiLSTM
from .native import available as native_available
from .native import cell_backward, cell_forward
from .packing import (PackedLinear, PairLinear, bf16_products, cached, matmul,  # noqa: F401 (re-exported)
                      onednn_products, operand, pair_matmul)

__all__ = ["PackedPlan", "PairLinear", "bilstm_fast", "bilstm_streams_fast", "make_plan", "recurrence_forward"]


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


#: inference: the first layer's input projection runs once per distinct input row (a batch of 32 sentences of the
#: benchmark mix repeats ~60% of its positions: 385 distinct of 997), then is gathered per position
DISTINCT_FIRST_LAYER = True


def _steps(t: torch.Tensor | None, sizes: list[int]) -> list[torch.Tensor] | None:
    """Per-step views ``(D, n_s, ...)`` of a packed ``(D, total, ...)`` tensor (one ``split``, no per-step slicing)."""
    return None if t is None else list(t.split(sizes, dim=1))


def _prev(views: list[torch.Tensor], s: int, n: int) -> torch.Tensor:
    """The first ``n`` rows of step ``s - 1`` (the rows that continue into step ``s``)."""
    v = views[s - 1]
    return v if v.shape[1] == n else v[:, :n]


# ----------------------------------------------------------------------------------------------------------
# order="allennlp": the short tails in AllenNLP's own order
# ----------------------------------------------------------------------------------------------------------
#: AllenNLP multiplies each position's active rows on their own, with ``Linear`` weights stored ``(out, in)``. From
#: this many rows on, the BLAS gives each row the same bits whatever the row count and layout (so one product over
#: all steps, or ``bmm`` on ``(in, out)`` weights, is AllenNLP's result); with fewer its small-row kernels sum in an
#: order that depends on both, so those positions are multiplied as AllenNLP multiplies them.
ALLENNLP_MIN_ROWS = 4

#: column block of the tails' products (:func:`_linear_rows`): a ``(128, in)`` slice of a weight stays in the cache
#: while all rows that need it are multiplied. Splitting a product's output columns does not change any column's
#: sum (``tests/test_fast_lstm_exact.py``), so the blocks give the whole product's bits.
TAIL_BLOCK = 128
#: weights with fewer elements are multiplied whole (they stay in the cache anyway)
TAIL_BLOCK_MIN_WEIGHT = 1 << 16


def exact_order() -> bool:
    """Whether the biLSTM keeps AllenNLP's bits: order ``"allennlp"`` with float32 products (bf16 products have
    no AllenNLP order to keep)."""
    return not onednn_products() and not bf16_products()


def _linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """A ``(D, in, out)`` weight stack as ``(D, out, in)``-contiguous (``Linear``'s layout), prepared once."""
    return cached("allennlp_linear", [weight], lambda: weight.detach().transpose(1, 2).contiguous())


def _linear_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``G`` separate products of ``m`` rows, each with the bits of ``F.linear(x[g], weight, bias)``.

    Args:
        x: ``(G, m, in)``; weight: ``(out, in)`` contiguous (``Linear``'s layout); bias: ``(out,)`` or None.

    Returns:
        ``(G, m, out)``. A weight of at least :data:`TAIL_BLOCK_MIN_WEIGHT` elements is multiplied in column blocks
        of :data:`TAIL_BLOCK` (one ``bmm`` per block over the ``G`` products, or one ``bmm`` over the blocks when
        ``G`` is 1), so each block is read from memory once, not once per product or (the BLAS's kernels for 2
        and 3 rows) once per row.
    """
    G, m, k = x.shape
    out_f = weight.shape[0]
    if out_f * k < TAIL_BLOCK_MIN_WEIGHT or out_f % TAIL_BLOCK:
        return torch.stack([F.linear(x[g], weight, bias) for g in range(G)])
    blocks = out_f // TAIL_BLOCK
    if G == 1:  # the blocks as the batch of one bmm: x repeated (stride 0), each block of the weight once
        w = weight.view(blocks, TAIL_BLOCK, k).transpose(1, 2)
        xs = x.expand(blocks, m, k)
        y = torch.bmm(xs, w) if bias is None else torch.baddbmm(bias.view(blocks, 1, TAIL_BLOCK), xs, w)
        return y.transpose(0, 1).reshape(1, m, out_f)
    out = x.new_empty(G, m, out_f)
    for lo in range(0, out_f, TAIL_BLOCK):  # the G products share each block of the weight (stride-0 batch)
        w = weight[lo:lo + TAIL_BLOCK].t().expand(G, k, TAIL_BLOCK)
        y = torch.bmm(x, w) if bias is None else torch.baddbmm(bias[lo:lo + TAIL_BLOCK].view(1, 1, -1), x, w)
        out[:, :, lo:lo + TAIL_BLOCK] = y
    return out


@dataclass
class AllenNLPTails:
    """Where the positions with fewer than :data:`ALLENNLP_MIN_ROWS` active rows are computed (order
    ``"allennlp"``).

    AllenNLP runs both directions over the padded positions: at position ``p`` the active rows are the
    ``m = n(p)`` longest, multiplied together. For ``p >= main_steps`` (the length of the
    :data:`ALLENNLP_MIN_ROWS`-th longest row, 0 for fewer rows) ``m`` is below :data:`ALLENNLP_MIN_ROWS` and the
    products' bits depend on ``m``: these *tail* positions are computed in AllenNLP's grouping, one product of
    ``m`` rows per position and direction; every other position (the *main* steps) takes the generic bits of any
    product of at least :data:`ALLENNLP_MIN_ROWS` rows, so those run as the fast path's stacked steps.

    The forward direction's step ``s`` is position ``s``: its tail is the plan's last steps (the *epilogue*, after
    the main steps). The backward direction's row ``j`` at step ``s`` is position ``L_j - 1 - s`` in the plan's
    layout; in the *AllenNLP layout* its tail positions ``p >= main_steps`` move to step ``p`` (step ``p`` has
    exactly ``n(p)`` rows) and its other positions to step ``min(L_j, main_steps) - 1 - p``, so the tail runs
    first (the *prologue*, positions from the last down) and hands its state to the main steps, which then see
    only positions below ``main_steps``. Only rows longer than ``main_steps`` (at most three) move.

    Attributes:
        main_steps: steps ``0 .. main_steps - 1`` hold the main positions of both directions.
        carried: backward rows that enter the main steps from the prologue (``n`` at step ``main_steps``).
        plan_slots, tail_slots: ``(k,)`` packed rows of the backward direction in the plan's layout and, for the
            same (row, position), in the AllenNLP layout (the rows that move).
    """

    main_steps: int
    carried: int
    plan_slots: torch.Tensor
    tail_slots: torch.Tensor


def allennlp_tails(plan: PackedPlan) -> AllenNLPTails:
    """The tail positions of ``plan`` and the backward direction's AllenNLP layout (see :class:`AllenNLPTails`)."""
    sizes, offsets = plan.batch_sizes, plan.offsets
    lengths = [sum(1 for n in sizes if n > j) for j in range(sizes[0] if sizes else 0)]
    main = lengths[ALLENNLP_MIN_ROWS - 1] if len(lengths) >= ALLENNLP_MIN_ROWS else 0
    carried = sizes[main] if main < len(sizes) else 0
    plan_slots, tail_slots = [], []
    for j in range(carried):  # the rows longer than ``main``
        for p in range(lengths[j]):
            plan_slots.append(offsets[lengths[j] - 1 - p] + j)
            tail_slots.append(offsets[p if p >= main else main - 1 - p] + j)
    return AllenNLPTails(main, carried, torch.tensor(plan_slots, dtype=torch.long),
                         torch.tensor(tail_slots, dtype=torch.long))


def _to_layout(t: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> None:
    """Move the backward direction's rows ``src`` of ``t`` ``(D, total, ...)`` to rows ``dst``, in place."""
    t[1].index_copy_(0, dst, t[1].index_select(0, src))


def _tail_input_products(x: torch.Tensor, gates: torch.Tensor, weight: torch.Tensor, plan: PackedPlan,
                         main_steps: int) -> None:
    """``x W_x`` of every tail step with AllenNLP's bits (a product of the step's ``m`` rows), written into
    ``gates``: ``x`` ``(D, total, P)`` and ``gates`` ``(D, total, 4C)`` in the AllenNLP layout, ``weight``
    ``(D, 4C, P)`` (``Linear``'s layout). The steps of one row count are multiplied together
    (:func:`_linear_rows`): the inputs are known before the recurrence."""
    sizes, offsets = plan.batch_sizes, plan.offsets
    by_rows: dict[int, list[int]] = {}
    for s in range(main_steps, len(sizes)):
        by_rows.setdefault(sizes[s], []).append(s)
    for m, steps in by_rows.items():
        index = torch.tensor([offsets[s] + j for s in steps for j in range(m)], device=x.device)
        for d in range(x.shape[0]):
            z = _linear_rows(x[d].index_select(0, index).view(len(steps), m, -1), weight[d])
            gates[d].index_copy_(0, index, z.view(len(steps) * m, -1))


# ----------------------------------------------------------------------------------------------------------
# The recurrence over packed rows (shared by inference and the training Function)
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _StepViews:
    """Per-step views ``(D, n_s, ...)`` of one layer's packed buffers (made once per layer with ``split``).

    ``gates`` holds the pre-activations, then the activations (gate order i, f, o, j: ``sigmoid_gates`` are the
    first three, ``cell_input`` the fourth); ``cell`` the clipped cells, ``cell_raw`` the cells before the clip;
    ``hidden`` ``o * tanh(c)``; ``tanh_cell`` ``tanh(c)``; ``output`` the clipped projections (the carried
    ``h``), ``output_raw`` before the clip. Optional buffers are None.
    """

    gates: list[torch.Tensor]
    sigmoid_gates: list[torch.Tensor]
    input_gate: list[torch.Tensor]
    forget_gate: list[torch.Tensor]
    output_gate: list[torch.Tensor]
    cell_input: list[torch.Tensor]
    output: list[torch.Tensor]
    output_raw: list[torch.Tensor] | None
    cell: list[torch.Tensor]
    cell_raw: list[torch.Tensor] | None
    hidden: list[torch.Tensor]
    tanh_cell: list[torch.Tensor] | None


def _cell_update(v: _StepViews, s: int, c_prev: torch.Tensor, cell_clip: float | None,
                 d: slice | int = slice(None)) -> torch.Tensor:
    """Step ``s``'s cell with torch's ops, AllenNLP's order (``i*g`` and ``f*c`` rounded separately, then summed;
    no fused multiply-add), for directions ``d``; returns ``o * tanh(c)`` (written into ``v.hidden[s][d]``)."""
    v.sigmoid_gates[s][d].sigmoid_()
    v.cell_input[s][d].tanh_()
    hc = v.hidden[s][d]
    c = v.cell[s][d] if v.cell_raw is None else v.cell_raw[s][d]
    torch.mul(v.input_gate[s][d], v.cell_input[s][d], out=hc)
    torch.mul(v.forget_gate[s][d], c_prev, out=c)
    c.add_(hc)
    if cell_clip is not None:
        torch.clamp(c, -cell_clip, cell_clip, out=v.cell[s][d])
    if v.tanh_cell is None:
        torch.tanh(v.cell[s][d], out=hc)
        hc.mul_(v.output_gate[s][d])
    else:  # training: keep tanh(c) for the backward (same rounding: tanh, then the product)
        torch.tanh(v.cell[s][d], out=v.tanh_cell[s][d])
        torch.mul(v.tanh_cell[s][d], v.output_gate[s][d], out=hc)
    return hc


def _store_projection(v: _StepViews, s: int, raw: torch.Tensor, proj_clip: float | None,
                      d: slice | int = slice(None)) -> None:
    """Write a step's raw projection (and its clipped value, the output) for directions ``d``."""
    if v.output_raw is not None:
        v.output_raw[s][d].copy_(raw)
    if proj_clip is None:
        v.output[s][d].copy_(raw)
    else:
        torch.clamp(raw, -proj_clip, proj_clip, out=v.output[s][d])


def _main_steps(v: _StepViews, h0: torch.Tensor, c0: torch.Tensor, w_h: PairLinear, w_p: PairLinear,
                sizes: list[int], cell_clip: float | None, proj_clip: float | None, fused: bool) -> None:
    """Steps ``0 .. len(sizes) - 1`` of both directions together, from ``h0 (D, n_0, P)`` / ``c0 (D, n_0, C)``:
    ``z = x W_x + (h W_h + b)`` (the input part already in ``v.gates``), the cell, ``y = clip((o tanh c) W_P)``."""
    # per-step work below is ~11 tensor ops; keep the Python around them minimal (batch 1 is op-bound)
    recurrent = {n: w_h.add_into_fn(n) for n in set(sizes)}
    projection = {n: w_p.fn(n) for n in set(sizes)}
    prev_n = -1
    for s, n in enumerate(sizes):
        if s == 0:
            h_prev, c_prev = h0[:, :n], c0[:, :n]
        elif n == prev_n:
            h_prev, c_prev = v.output[s - 1], v.cell[s - 1]
        else:
            h_prev, c_prev = v.output[s - 1][:, :n], v.cell[s - 1][:, :n]
        prev_n = n
        recurrent[n](v.gates[s], h_prev)
        if fused:  # the cell in one pass (elmo_fast.fast.native)
            hc = v.hidden[s]
            cell_forward(v.gates[s], c_prev, None if v.cell_raw is None else v.cell_raw[s], v.cell[s],
                         None if v.tanh_cell is None else v.tanh_cell[s], hc, cell_clip)
        else:
            hc = _cell_update(v, s, c_prev, cell_clip)
        if proj_clip is None:
            projection[n](hc, v.output[s])
        elif v.output_raw is not None:
            torch.clamp(projection[n](hc, v.output_raw[s]), -proj_clip, proj_clip, out=v.output[s])
        else:
            torch.clamp(projection[n](hc, None), -proj_clip, proj_clip, out=v.output[s])


def _allennlp_tail_step(v: _StepViews, s: int, d: int, h_prev: torch.Tensor, c_prev: torch.Tensor,
                        W_hT: torch.Tensor, b_h: torch.Tensor | None, W_pT: torch.Tensor,
                        cell_clip: float | None, proj_clip: float | None) -> None:
    """One tail position of direction ``d`` as AllenNLP computes it: its ``m`` rows (step ``s``'s rows in the
    AllenNLP layout) in one product each, ``h W_hᵀ + b`` added to the input product, the cell, ``(o tanh c)
    W_Pᵀ``; ``h_prev`` ``(m, P)``, ``c_prev`` ``(m, C)``; weights in ``Linear``'s layout."""
    v.gates[s][d].add_(_linear_rows(h_prev.unsqueeze(0), W_hT, b_h)[0])
    hc = _cell_update(v, s, c_prev, cell_clip, d)
    _store_projection(v, s, _linear_rows(hc.unsqueeze(0), W_pT)[0], proj_clip, d)


def _allennlp_prologue(v: _StepViews, tails: AllenNLPTails, h0: torch.Tensor, c0: torch.Tensor, weights: tuple,
                       sizes: list[int], cell_clip: float | None, proj_clip: float | None) -> None:
    """The backward direction's tail positions, from the last down to ``tails.main_steps`` (AllenNLP layout: step
    ``p`` is position ``p``): a row continues from the next position, or starts from ``h0``/``c0`` at its last."""
    W_hT, b_h, W_pT = weights
    for s in range(len(sizes) - 1, tails.main_steps - 1, -1):
        m = sizes[s]
        k = sizes[s + 1] if s + 1 < len(sizes) else 0  # rows already running
        h_prev = h0[1, :m] if k == 0 else torch.cat([v.output[s + 1][1], h0[1, k:m]])
        c_prev = c0[1, :m] if k == 0 else torch.cat([v.cell[s + 1][1], c0[1, k:m]])
        _allennlp_tail_step(v, s, 1, h_prev, c_prev, W_hT[1], None if b_h is None else b_h[1], W_pT[1], cell_clip,
                            proj_clip)


def _allennlp_epilogue(v: _StepViews, tails: AllenNLPTails, h0: torch.Tensor, c0: torch.Tensor, weights: tuple,
                       sizes: list[int], cell_clip: float | None, proj_clip: float | None) -> None:
    """The forward direction's tail positions ``tails.main_steps ..``, after the main steps."""
    W_hT, b_h, W_pT = weights
    for s in range(tails.main_steps, len(sizes)):
        m = sizes[s]
        h_prev = h0[0, :m] if s == 0 else v.output[s - 1][0, :m]
        c_prev = c0[0, :m] if s == 0 else v.cell[s - 1][0, :m]
        _allennlp_tail_step(v, s, 0, h_prev, c_prev, W_hT[0], None if b_h is None else b_h[0], W_pT[0], cell_clip,
                            proj_clip)


def recurrence_forward(gates: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_h: PairLinear,
                       w_p: PairLinear, plan: PackedPlan, cell_clip: float | None, proj_clip: float | None,
                       save: bool, x: torch.Tensor | None = None, w_x: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, dict | None]:
    """Advance ``D`` stacked directions of one layer over all steps.

    Args:
        gates: ``(D, total, 4C)`` input projections ``x W_x`` (no bias), gate order (i, f, o, j);
            overwritten in place with the activated gates.
        h0, c0: ``(D, B, P)``, ``(D, B, C)`` initial states of the sorted rows.
        w_h: ``(D, P, 4C)`` recurrent weights (same gate order) with the bias (+1 forget bias folded in);
            w_p: ``(D, C, P)`` projections.
        save: keep what the backward needs (raw cell values, ``tanh(c)``, ``o * tanh(c)``, raw projections).
        x, w_x: the packed layer inputs ``(D, total, P)`` (forward then backward direction) and input weights
            ``(D, P, 4C)`` the gates came from; with order ``"allennlp"`` (:func:`exact_order`) the positions
            AllenNLP multiplies in products of 1-3 rows are computed as AllenNLP computes them
            (:class:`AllenNLPTails`; their rows of ``gates`` are recomputed). Omit them to skip that.

    Returns:
        ``y`` ``(D, total, P)`` clipped projections (= the carried ``h``), ``c`` ``(D, total, C)`` clipped
        cells, and the saved tensors (or None), all in the plan's layout.
    """
    D, total, four_c = gates.shape
    C = four_c // 4
    P = h0.shape[-1]
    sizes = plan.batch_sizes
    y = gates.new_empty(D, total, P)
    c_all = gates.new_empty(D, total, C)
    c_raw = gates.new_empty(D, total, C) if save and cell_clip is not None else None
    hc_all = gates.new_empty(D, total if save else max(sizes, default=0), C)
    tc_all = gates.new_empty(D, total, C) if save else None
    p_raw = gates.new_empty(D, total, P) if save and proj_clip is not None else None

    def steps(t: torch.Tensor | None) -> list[torch.Tensor] | None:
        return _steps(t, sizes)

    views = _StepViews(
        gates=steps(gates), sigmoid_gates=steps(gates[..., :3 * C]), input_gate=steps(gates[..., :C]),
        forget_gate=steps(gates[..., C:2 * C]), output_gate=steps(gates[..., 2 * C:3 * C]),
        cell_input=steps(gates[..., 3 * C:]), output=steps(y), output_raw=steps(p_raw), cell=steps(c_all),
        cell_raw=steps(c_raw), hidden=steps(hc_all) if save else [hc_all[:, :n] for n in sizes],
        tanh_cell=steps(tc_all))
    tails = allennlp_tails(plan) if x is not None and w_x is not None and D == 2 and exact_order() else None
    if tails is None or tails.main_steps == len(sizes):  # no tail: every step is a main step
        _main_steps(views, h0, c0, w_h, w_p, sizes, cell_clip, proj_clip, use_fused_cell(gates, h0, c0))
    else:
        _allennlp_tails_and_main(views, tails, gates, x, w_x, h0, c0, w_h, w_p, plan, cell_clip, proj_clip)
        # back to the plan's layout (what the caller reads; the activated gates and the hidden values only when
        # the backward reads them)
        for t in (y, c_all, c_raw, p_raw, tc_all) + ((gates, hc_all) if save else ()):
            if t is not None:
                _to_layout(t, tails.tail_slots, tails.plan_slots)
    saved = {"c_raw": c_raw, "hc": hc_all, "p_raw": p_raw, "tanh_c": tc_all} if save else None
    return y, c_all, saved


def _allennlp_tails_and_main(views: _StepViews, tails: AllenNLPTails, gates: torch.Tensor, x: torch.Tensor,
                             w_x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_h: PairLinear, w_p: PairLinear,
                             plan: PackedPlan, cell_clip: float | None, proj_clip: float | None) -> None:
    """Order ``"allennlp"`` with tail positions: the backward direction's prologue, the main steps of both
    directions, the forward direction's epilogue; buffers in the AllenNLP layout (``gates`` moved there here)."""
    sizes = plan.batch_sizes
    _to_layout(gates, tails.plan_slots, tails.tail_slots)
    x = x.clone()
    _to_layout(x, tails.plan_slots, tails.tail_slots)
    _tail_input_products(x, gates, _linear_weight(w_x), plan, tails.main_steps)
    weights = (_linear_weight(w_h.weight), w_h.bias, _linear_weight(w_p.weight))
    _allennlp_prologue(views, tails, h0, c0, weights, sizes, cell_clip, proj_clip)
    main = sizes[:tails.main_steps]
    if main:
        h_first, c_first = h0[:, :main[0]], c0[:, :main[0]]
        if tails.carried:  # the backward rows that ran through the prologue continue from there
            h_first, c_first = h_first.clone(), c_first.clone()
            h_first[1, :tails.carried] = views.output[tails.main_steps][1]
            c_first[1, :tails.carried] = views.cell[tails.main_steps][1]
        _main_steps(views, h_first, c_first, w_h, w_p, main, cell_clip, proj_clip, fused=False)
    _allennlp_epilogue(views, tails, h0, c0, weights, sizes, cell_clip, proj_clip)


def use_fused_cell(*tensors: torch.Tensor | None) -> bool:
    """Whether the per-step cell work runs in the fused CPU kernel (:mod:`elmo_fast.fast.native`): order ``"fast"``
    (order ``"allennlp"`` keeps torch's activations, bit for bit AllenNLP's) and float32 CPU tensors."""
    return onednn_products() and native_available(*tensors)


def _clip_mask(raw: torch.Tensor | None, clip: float | None) -> torch.Tensor | None:
    # torch.clamp's gradient: 1 where min <= x <= max, else 0
    if raw is None or clip is None:
        return None
    return (raw >= -clip) & (raw <= clip)


def _recurrence_backward(dy: torch.Tensor | None, dc_out: torch.Tensor | None, gates: torch.Tensor,
                         h0: torch.Tensor, c0: torch.Tensor, c_all: torch.Tensor, tanh_c: torch.Tensor,
                         c_raw: torch.Tensor | None, p_raw: torch.Tensor | None, w_hT: PairLinear, w_pT: PairLinear,
                         plan: PackedPlan, cell_clip: float | None, proj_clip: float | None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward through time of :func:`recurrence_forward` (activated ``gates`` as it left them, ``tanh_c`` =
    ``tanh`` of the clipped cells it saved). ``dy`` ``(D, total, P)`` / ``dc_out`` ``(D, total, C)``: gradients
    of the outputs, None where no gradient flows (e.g. the cells, whose final values are only carried state).

    Returns ``dz`` ``(D, total, 4C)`` (gradient of the pre-activation gates), ``dhp`` ``(D, total, P)``
    (gradient of the raw projections), and the gradients of ``h0`` ``(D, B, P)`` and ``c0`` ``(D, B, C)``.
    """
    D, total, four_c = gates.shape
    C = four_c // 4
    sizes = plan.batch_sizes
    cell_mask = _clip_mask(c_raw, cell_clip)
    proj_mask = _clip_mask(p_raw, proj_clip)
    dz = gates.new_empty(D, total, four_c)
    dhp_all = gates.new_empty(D, total, dy.shape[-1] if dy is not None else h0.shape[-1])
    dh_state = h0.new_zeros(h0.shape)
    dc_state = c0.new_zeros(c0.shape)
    tmp = gates.new_empty(D, max(sizes, default=0), C)
    SIG, J = _steps(gates[..., :3 * C], sizes), _steps(gates[..., 3 * C:], sizes)
    I, F_, O = (_steps(gates[..., k * C:(k + 1) * C], sizes) for k in range(3))
    DZ, DSIG = _steps(dz, sizes), _steps(dz[..., :3 * C], sizes)
    DI, DF, DO, DJ = (_steps(dz[..., k * C:(k + 1) * C], sizes) for k in range(4))
    DHP, DY, CC, TC = _steps(dhp_all, sizes), _steps(dy, sizes), _steps(c_all, sizes), _steps(tanh_c, sizes)
    DCO, CM, PM = _steps(dc_out, sizes), _steps(cell_mask, sizes), _steps(proj_mask, sizes)
    mul = torch.mul
    fused = use_fused_cell(gates, h0, c0, dy, dc_out)
    gates_s = _steps(gates, sizes)
    for s in range(len(sizes) - 1, -1, -1):
        n = sizes[s]
        dhp = DHP[s]
        if DY is None:
            dhp.copy_(dh_state[:, :n])
        else:
            torch.add(DY[s], dh_state[:, :n], out=dhp)
        if PM is not None:
            dhp.mul_(PM[s])
        dc = w_pT(dhp)                                   # d(o * tanh(c)), fresh (D, n, C)
        if fused:  # the elementwise steps below in one pass (elmo_fast.fast.native)
            cell_backward(dc, gates_s[s], DZ[s], TC[s], c0[:, :n] if s == 0 else _prev(CC, s, n), dc_state[:, :n],
                          None if DCO is None else DCO[s], None if CM is None else CM[s])
            w_hT(DZ[s], out=dh_state[:, :n])
            continue
        tc = TC[s]
        mul(dc, tc, out=DO[s])                           # d o
        dc.mul_(O[s])
        t2 = mul(tc, tc, out=tmp[:, :n])
        dc.addcmul_(dc, t2, value=-1.0)                  # x (1 - tanh(c)^2)
        dc.add_(dc_state[:, :n])
        if DCO is not None:
            dc.add_(DCO[s])
        if CM is not None:
            dc.mul_(CM[s])
        c_prev = c0[:, :n] if s == 0 else _prev(CC, s, n)
        mul(dc, J[s], out=DI[s])
        mul(dc, I[s], out=DJ[s])
        mul(dc, c_prev, out=DF[s])
        mul(dc, F_[s], out=dc_state[:, :n])              # carried to step s - 1
        # through the activations: sigmoid' = a (1 - a), tanh' = 1 - a^2 (in place, no temporaries)
        DSIG[s].mul_(SIG[s])
        DSIG[s].addcmul_(DSIG[s], SIG[s], value=-1.0)
        mul(J[s], J[s], out=t2)
        DJ[s].addcmul_(DJ[s], t2, value=-1.0)
        w_hT(DZ[s], out=dh_state[:, :n])
    return dz, dhp_all, dh_state, dc_state


def _prev_outputs(y: torch.Tensor, plan: PackedPlan) -> torch.Tensor:
    """``h_{s-1}`` for every packed row of steps ``s >= 1`` (packed order): ``(D, total - n_0, P)``."""
    sizes = plan.batch_sizes
    if sizes and all(n == sizes[0] for n in sizes):  # training streams: every row has every step
        return y[:, :plan.total - sizes[0]]
    return y.index_select(1, _prev_rows(plan).to(y.device))


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


#: gate block ``k`` of the (i, f, o, j) layout is block ``_GATE_SRC[k]`` of bilm-tf's (i, j, f, o), and back
_GATE_SRC, _GATE_BACK = (0, 2, 3, 1), (0, 3, 1, 2)


def _copy_gate_blocks(src: torch.Tensor, out: torch.Tensor, C: int, order: tuple[int, ...]) -> torch.Tensor:
    """``out[..., k*C:(k+1)*C] = src[..., order[k]*C:(order[k]+1)*C]``: the gate permutation as four block copies
    (a column ``index_select`` of a (1024, 16384) weight takes ~2x as long)."""
    for k, j in enumerate(order):
        out[..., k * C:(k + 1) * C].copy_(src[..., j * C:(j + 1) * C])
    return out


def _layer_weights(cells, C: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer's cells (one per direction) as detached stacks in (i, f, o, j) gate order:
    ``W`` ``(D, P + P, 4C)`` (input rows, then recurrent rows), bias ``(D, 4C)`` incl. the forget bias (added
    in float32, exactly :func:`elmo_fast.nn.lstm.folded_bias`), and ``W_P`` ``(D, C, P)``."""
    perm = _gate_perm(C, cells[0].W_0.device)
    with torch.no_grad():  # each direction's columns gathered straight into the stack (one copy, not two)
        W = cells[0].W_0.new_empty(len(cells), *cells[0].W_0.shape)
        bias = cells[0].B.new_empty(len(cells), *cells[0].B.shape)
        for d, cell in enumerate(cells):
            _copy_gate_blocks(cell.W_0.detach(), W[d], C, _GATE_SRC)
            torch.index_select(cell.B.detach(), 0, perm, out=bias[d])
        bias[:, C:2 * C] += FORGET_BIAS
        W_P = torch.stack([cell.W_P_0.detach() for cell in cells])
    return W, bias, W_P


def _packed_layer(cells, P: int, C: int, hint: int) -> tuple[PairLinear, PairLinear, PairLinear]:
    """Inference weights of one layer (both directions), prepared and oneDNN-packed once per parameter version."""
    def build():
        W, bias, W_P = _layer_weights(cells, C)
        return (PairLinear(W[:, :P], batch_hint=max(hint, 256)), PairLinear(W[:, P:], bias, batch_hint=32),
                PairLinear(W_P, batch_hint=32))
    sources = [t for cell in cells for t in (cell.W_0, cell.B, cell.W_P_0)]
    return cached("fast_lstm_layer", sources, build)


class _Layer(torch.autograd.Function):
    """One layer, all directions: input projection + recurrence, with a hand-written backward through time.

    Inputs: ``x`` ``(D, total, P)`` packed layer inputs, ``h0 (D, B, P)``, ``c0 (D, B, C)`` (sorted rows),
    then per direction the cell's raw parameters ``W_0 (2P, 4C)``, ``B (4C)``, ``W_P_0 (C, P)`` (bilm-tf
    layout; gradients are returned in it). Outputs ``y (D, total, P)`` and ``c (D, total, C)``.
    """

    @staticmethod
    def forward(ctx, plan, cell_clip, proj_clip, cells, x, h0, c0, *params):  # type: ignore[override]
        P, C = h0.shape[-1], c0.shape[-1]
        W, bias, W_P = _layer_weights(cells, C)
        hint = max(plan.batch_sizes, default=1)
        x, h0, c0 = x.detach(), h0.detach(), c0.detach()
        gates = matmul(x, W[:, :P])
        y, c_all, saved = recurrence_forward(gates, h0, c0, PairLinear(W[:, P:], bias, batch_hint=hint),
                                             PairLinear(W_P, batch_hint=hint), plan, cell_clip, proj_clip, save=True,
                                             x=x, w_x=W[:, :P])
        ctx.plan, ctx.cell_clip, ctx.proj_clip = plan, cell_clip, proj_clip
        ctx.numerics = numerics.current()  # the backward runs with the forward's setting, wherever autograd calls it
        ctx.save_for_backward(x, h0, c0, W, W_P, gates, y, c_all, saved["tanh_c"], saved["c_raw"], saved["hc"],
                              saved["p_raw"])
        # outputs nobody differentiates (the cells: only carried state) arrive as None, not as zero tensors
        ctx.set_materialize_grads(False)
        return y, c_all

    @staticmethod
    def backward(ctx, dy, dc_out):  # type: ignore[override]
        with numerics.use(ctx.numerics.precision, ctx.numerics.order):
            return _Layer._backward(ctx, dy, dc_out)

    @staticmethod
    def _backward(ctx, dy, dc_out):
        x, h0, c0, W, W_P, gates, y, c_all, tanh_c, c_raw, hc_all, p_raw = ctx.saved_tensors
        plan = ctx.plan
        D, total, _ = gates.shape
        P, C = h0.shape[-1], c0.shape[-1]
        hint = max(plan.batch_sizes, default=1)
        dz, dhp, dh0, dc0 = _recurrence_backward(
            dy, dc_out, gates, h0, c0, c_all, tanh_c, c_raw, p_raw,
            PairLinear(W[:, P:].transpose(1, 2), batch_hint=hint), PairLinear(W_P.transpose(1, 2), batch_hint=hint),
            plan, ctx.cell_clip, ctx.proj_clip)
        dz_p = operand(dz)  # bf16: converted once for its two products
        # training streams (every row has every step) repeat their shapes: oneDNN's GEMM is safe there (see
        # pair_matmul); sentences of varying lengths take the BLAS
        fixed = len(set(plan.batch_sizes)) <= 1
        dx = pair_matmul(dz_p, W[:, :P].transpose(1, 2), fixed_shapes=fixed) if ctx.needs_input_grad[4] else None
        # weight gradients: one product over all steps for [W_x; W_h], one for W_P
        h_prev = torch.cat([h0[:, :plan.batch_sizes[0] if plan.batch_sizes else 0], _prev_outputs(y, plan)], dim=1)
        dW = pair_matmul(torch.cat([x, h_prev], dim=2).transpose(1, 2), dz_p, stack=False,
                         fixed_shapes=fixed)  # D x (2P, 4C), gates (i, f, o, j)
        dWP = matmul(hc_all.transpose(1, 2), dhp)
        db = dz.sum(1)
        inv = torch.argsort(_gate_perm(C, dz.device))
        grads = []
        for d in range(D):
            grads += [_copy_gate_blocks(dW[d], torch.empty_like(dW[d]), C, _GATE_BACK), db[d].index_select(0, inv),
                      dWP[d]]
        return (None, None, None, None, dx, dh0, dc0, *grads)


# ----------------------------------------------------------------------------------------------------------
# The op
# ----------------------------------------------------------------------------------------------------------
def _wants_grad(lstm: BiLSTM, *tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (any(t.requires_grad for t in tensors)
                                        or any(p.requires_grad for p in lstm.parameters()))


def _run_layers(lstm: BiLSTM, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], plan: PackedPlan,
                order: torch.Tensor | None, dropout: float, grad: bool, distinct: tuple | None = None
                ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Both directions' layer stacks on packed inputs, advanced together.

    Args:
        x: ``(2, total, P)`` packed first-layer inputs of the forward and backward direction (processing order).
        state: initial ``(h (L, B, 2P), c (L, B, 2C))`` in the caller's row order.
        order: sorted row -> caller row (None: rows are already in plan order).
        distinct: inference only, ``(rows (U, P), index (2, total))``: the distinct first-layer input rows and
            where each packed row of each direction finds its own; the first layer's input projection then
            runs on the ``U`` distinct rows (a batch repeats tokens) and is gathered.

    Returns:
        per layer: packed outputs ``(2, total, P)`` (residual included), final ``h`` ``(B, 2P)`` and ``c``
        ``(B, 2C)`` in the caller's row order (forward half first, as the state layout).
    """
    o = lstm.options
    P, C = o.projection_dim, o.dim
    h_all, c_all = state
    batch = h_all.shape[1]
    dev = x.device
    last = plan.last.to(dev)
    all_rows_stepped = bool((plan.last < plan.total).all())   # no empty row (its final state = its initial one)
    inverse = None if order is None else plan.inverse.to(dev)
    outs: list[torch.Tensor] = []
    fin_h: list[torch.Tensor] = []
    fin_c: list[torch.Tensor] = []
    for layer in range(o.n_layers):
        cells = [lstm.cells[d][layer] for d in (0, 1)]
        if dropout > 0.0:
            x = F.dropout(x, dropout, training=True)
        h0 = h_all[layer].view(batch, 2, P).transpose(0, 1)   # (2, B, P)
        c0 = c_all[layer].view(batch, 2, C).transpose(0, 1)
        if order is not None:
            h0, c0 = h0.index_select(1, order), c0.index_select(1, order)
        if grad:
            params = [t for cell in cells for t in (cell.W_0, cell.B, cell.W_P_0)]
            y, c_seq = _Layer.apply(plan, o.cell_clip, o.proj_clip, cells, x, h0, c0, *params)
        else:
            w_x, w_h, w_p = _packed_layer(cells, P, C, plan.total)
            h0, c0 = h0.contiguous(), c0.contiguous()
            if exact_order() and allennlp_tails(plan).main_steps == 0:
                # every position is a tail position (fewer than four rows): recurrence_forward computes all the
                # input products in AllenNLP's grouping, so a product over all rows here would be thrown away
                gates = x.new_empty(2, plan.total, 4 * C)
            elif layer == 0 and distinct is not None:
                rows, index = distinct
                per_row = w_x(rows.unsqueeze(0).expand(2, -1, -1))           # (2, U, 4C)
                gates = torch.stack([per_row[d].index_select(0, index[d]) for d in (0, 1)])
            else:
                gates = w_x(x)
            y, c_seq, _ = recurrence_forward(gates, h0, c0, w_h, w_p, plan, o.cell_clip, o.proj_clip, save=False,
                                             x=x, w_x=w_x.weight)
        if all_rows_stepped:  # every final state is a packed row: no copy of the whole sequence
            h_fin, c_fin = y.index_select(1, last), c_seq.index_select(1, last)
        else:
            h_fin = torch.cat([y, h0], 1).index_select(1, last)
            c_fin = torch.cat([c_seq, c0], 1).index_select(1, last)
        if inverse is not None:
            h_fin, c_fin = h_fin.index_select(1, inverse), c_fin.index_select(1, inverse)
        fin_h.append(h_fin.transpose(0, 1).reshape(batch, 2 * P))
        fin_c.append(c_fin.transpose(0, 1).reshape(batch, 2 * C))
        out = y + x if (layer > 0 and o.use_skip_connections) else y
        outs.append(out)
        x = out
    return outs, fin_h, fin_c


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
    inputs = torch.stack([x_flat.index_select(0, src[0]), x_flat.index_select(0, src[1])])
    distinct = None
    if DISTINCT_FIRST_LAYER and batch > 1 and not grad and dropout == 0.0 and plan.total:  # (one sentence: few repeats)
        # identical input rows (repeated tokens) have identical first-layer input projections
        rows, inv_fw = torch.unique(inputs[0], dim=0, return_inverse=True)
        at_position = inv_fw.new_empty(batch * steps)
        at_position[src[0]] = inv_fw
        distinct = (rows, torch.stack([inv_fw, at_position.index_select(0, src[1])]))
    outs, fin_h, fin_c = _run_layers(lstm, inputs, state, plan, plan.order.to(dev), dropout, grad, distinct)
    outputs = []
    for y in outs:
        halves = [x.new_zeros(batch * steps, P).index_copy(0, src[d], y[d]) for d in (0, 1)]
        outputs.append(torch.cat(halves, dim=-1).view(batch, steps, 2 * P))
    return outputs, (torch.stack(fin_h), torch.stack(fin_c))


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
    inputs = torch.stack([fw.transpose(0, 1).reshape(steps * batch, P), bw.transpose(0, 1).reshape(steps * batch, P)])
    outs, fin_h, fin_c = _run_layers(lstm, inputs, state, plan, None, dropout, grad)
    unpack = [[y[d].view(steps, batch, P).transpose(0, 1) for y in outs] for d in (0, 1)]
    return unpack[0], unpack[1], (torch.stack(fin_h), torch.stack(fin_c))
