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
from typing import Callable

import torch
import torch.nn.functional as F

from .. import numerics
from ..nn.lstm import FORGET_BIAS, BiLSTM
from .native import available as native_available
from .native import cell_backward, cell_forward
from .packing import (PackedLinear, PairLinear, cached, matmul, onednn_products, operand,  # noqa: F401 (re-exported)
                      pair_matmul)

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
# order="allennlp": steps with 1-3 active rows multiply as AllenNLP does
# ----------------------------------------------------------------------------------------------------------
#: AllenNLP multiplies each step's active rows on their own, with ``Linear`` weights stored ``(out, in)``. From this
#: many rows on, the BLAS gives each row the same bits whatever the row count and layout (so one product over all
#: steps, or ``bmm`` on ``(in, out)`` weights, is AllenNLP's result); with fewer its small-row kernels sum in an
#: order that depends on both, so those steps are recomputed per step and per direction like AllenNLP's.
ALLENNLP_MIN_ROWS = 4


def _linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """A ``(D, in, out)`` weight stack as ``(D, out, in)``-contiguous (``Linear``'s layout), prepared once."""
    return cached("allennlp_linear", [weight], lambda: weight.detach().transpose(1, 2).contiguous())


def allennlp_special_rows(plan: PackedPlan) -> dict[int, list[tuple[int, int, list[int]]]]:
    """Per step ``s``: groups ``(direction, AllenNLP row count m, rows js)`` of the rows whose products AllenNLP
    computes in a product of fewer than :data:`ALLENNLP_MIN_ROWS` rows, or that this step's own product would
    compute so (order ``"allennlp"`` only; empty otherwise); rows of one group share one product.

    AllenNLP runs both directions over the padded positions: at position ``p`` the active rows are the
    ``m = n(p)`` longest. Here the forward direction's step ``s`` is position ``s`` (``m = n_s``), while the
    backward direction's row ``j`` at step ``s`` is position ``L_j - 1 - s``, whose ``m`` can be small while the
    step has many rows (the last positions of the longest sentences), or large while the step has few.
    """
    if onednn_products():
        return {}
    sizes = plan.batch_sizes
    lengths = [sum(1 for n in sizes if n > j) for j in range(sizes[0] if sizes else 0)]
    out: dict[int, list[tuple[int, int, int]]] = {}
    for s, n in enumerate(sizes):
        rows = []
        for j in range(n):
            m_fw, m_bw = n, sizes[lengths[j] - 1 - s]
            for d, m in ((0, m_fw), (1, m_bw)):
                if m < ALLENNLP_MIN_ROWS or n < ALLENNLP_MIN_ROWS:
                    rows.append((d, j, m))
        if rows:
            groups: dict[tuple[int, int], list[int]] = {}
            for d, j, m in rows:
                groups.setdefault((d, m if m < ALLENNLP_MIN_ROWS else ALLENNLP_MIN_ROWS), []).append(j)
            out[s] = [(d, m, js) for (d, m), js in groups.items()]
    return out


def _group_product(rows: torch.Tensor, js: list[int], weight: torch.Tensor, bias: torch.Tensor | None,
                   m: int) -> torch.Tensor:
    """Rows' ``Linear`` products with the bits AllenNLP gets for them: ``rows`` ``(g, in)`` are rows ``js`` of a
    product of ``m`` rows when ``m`` is below :data:`ALLENNLP_MIN_ROWS` (the BLAS's small-row kernels; the other
    rows are zero, each row's sums do not depend on them), else of any product of at least that many rows (where
    every row gets the same bits). ``weight`` ``(out, in)``; returns ``(g, out)``."""
    k = m if m < ALLENNLP_MIN_ROWS else max(ALLENNLP_MIN_ROWS, max(js) + 1)
    block = rows.new_zeros(k, rows.shape[1])
    index = torch.tensor(js, device=rows.device)
    block.index_copy_(0, index, rows)
    return F.linear(block, weight, bias).index_select(0, index)


# ----------------------------------------------------------------------------------------------------------
# The recurrence over packed rows (shared by inference and the training Function)
# ----------------------------------------------------------------------------------------------------------
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
        x, w_x: the packed layer inputs ``(D, total, P)`` and input weights ``(D, P, 4C)`` the gates came from;
            with order ``"allennlp"`` the rows AllenNLP multiplies in products of 1-3 rows are recomputed with
            those products' bits (:func:`allennlp_special_rows`). Omit them to skip that.

    Returns:
        ``y`` ``(D, total, P)`` clipped projections (= the carried ``h``), ``c`` ``(D, total, C)`` clipped
        cells, and the saved tensors (or None).
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
    G, SIG, J = _steps(gates, sizes), _steps(gates[..., :3 * C], sizes), _steps(gates[..., 3 * C:], sizes)
    I, F_, O = (_steps(gates[..., k * C:(k + 1) * C], sizes) for k in range(3))
    Y, CC, CR = _steps(y, sizes), _steps(c_all, sizes), _steps(c_raw, sizes)
    HC, PR, TC = (_steps(hc_all, sizes) if save else None), _steps(p_raw, sizes), _steps(tc_all, sizes)
    # per-step work below is ~11 tensor ops; keep the Python around them minimal (batch 1 is op-bound)
    rec = {n: w_h.add_into_fn(n) for n in set(sizes)}
    proj = {n: w_p.fn(n) for n in set(sizes)}
    special = allennlp_special_rows(plan) if x is not None and w_x is not None else {}
    if special:  # order="allennlp": rows AllenNLP multiplies in products of 1-3 rows get those products' bits
        W_xT, W_hT, W_pT = _linear_weight(w_x), _linear_weight(w_h.weight), _linear_weight(w_p.weight)
        b_h = w_h.bias
        offsets = plan.offsets
    # steps where every row of every direction is recomputed (all steps with fewer than ALLENNLP_MIN_ROWS rows,
    # e.g. every step at batch 1): the step's own products would be overwritten, so they are skipped
    replaced = {s for s, groups in special.items()
                if all(sum(len(js) for d_, _, js in groups if d_ == d) == sizes[s] for d in range(D))}
    hc_rows = HC if save else [hc_all[:, :n] for n in sizes]
    mul, tanh, clamp = torch.mul, torch.tanh, torch.clamp
    fused = use_fused_cell(gates, h0, c0)
    prev_n = -1
    for s, n in enumerate(sizes):
        if s == 0:
            h_prev, c_prev = h0[:, :n], c0[:, :n]
        elif n == prev_n:
            h_prev, c_prev = Y[s - 1], CC[s - 1]
        else:
            h_prev, c_prev = Y[s - 1][:, :n], CC[s - 1][:, :n]
        prev_n = n
        rows = special.get(s) if special else None
        if s not in replaced:
            rec[n](G[s], h_prev)
        if rows:
            for d, m, js in rows:  # AllenNLP's input + state products for these rows (before any activation)
                idx = torch.tensor(js, device=G[s].device)
                G[s][d].index_copy_(0, idx, _group_product(x[d, offsets[s]:offsets[s + 1]].index_select(0, idx), js,
                                                           W_xT[d], None, m)
                                    + _group_product(h_prev[d].index_select(0, idx), js, W_hT[d],
                                                     None if b_h is None else b_h[d], m))
        hc = hc_rows[s]
        if fused:  # the same steps in one pass (elmo_fast.fast.native)
            cell_forward(G[s], c_prev, None if CR is None else CR[s], CC[s], None if TC is None else TC[s], hc,
                         cell_clip)
        else:
            SIG[s].sigmoid_()
            J[s].tanh_()
            c = CC[s] if CR is None else CR[s]
            mul(I[s], J[s], out=hc)          # i*g and f*c rounded separately, then summed (AllenNLP; no FMA)
            mul(F_[s], c_prev, out=c)
            c.add_(hc)
            if cell_clip is not None:
                clamp(c, -cell_clip, cell_clip, out=CC[s])
            if TC is None:
                tanh(CC[s], out=hc)
                hc.mul_(O[s])
            else:  # training: keep tanh(c) for the backward (same rounding: tanh, then the product)
                tanh(CC[s], out=TC[s])
                mul(TC[s], O[s], out=hc)
        if s in replaced:
            pass  # Y (and PR) are written below, row by row
        elif proj_clip is None:
            proj[n](hc, Y[s])
        elif PR is not None:
            clamp(proj[n](hc, PR[s]), -proj_clip, proj_clip, out=Y[s])
        else:
            clamp(proj[n](hc, None), -proj_clip, proj_clip, out=Y[s])
        if rows:
            for d, m, js in rows:
                idx = torch.tensor(js, device=hc.device)
                raw = _group_product(hc[d].index_select(0, idx), js, W_pT[d], None, m)
                if PR is not None:
                    PR[s][d].index_copy_(0, idx, raw)
                Y[s][d].index_copy_(0, idx, raw if proj_clip is None else raw.clamp(-proj_clip, proj_clip))
    saved = {"c_raw": c_raw, "hc": hc_all, "p_raw": p_raw, "tanh_c": tc_all} if save else None
    return y, c_all, saved


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
            if layer == 0 and distinct is not None:
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
