"""Weights prepared once and reused: reordered/fused matrices and oneDNN-packed linear weights.

A plain ``x @ W`` on CPU lets the BLAS repack ``W`` on every call; for the biLSTM's recurrent matmul
(e.g. 32 x 512 x 16384 once per time step) that repacking costs about half of the time. oneDNN
(``torch.ops.mkldnn``) can pack a weight once into its blocked layout; we keep those packed copies in a
cache keyed by the source parameters' identity and version counters, so an optimizer step (which bumps
``Tensor._version``) or ``load_state_dict`` invalidates them automatically.
"""
from __future__ import annotations

import weakref
from typing import Callable, Sequence

import torch

from .. import numerics

__all__ = ["MKLDNN", "PackedLinear", "PairLinear", "cached", "clear_cache", "matmul", "onednn_products"]

#: whether oneDNN packed linear is usable in this torch build
MKLDNN = bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")

#: id(anchor tensor) -> (weak reference to it, {key: (stamp, value)}); tensors cannot be WeakKeyDictionary
#: keys (their ``==`` is elementwise), so entries are keyed by id and dropped by a finalizer
_CACHE: dict[int, tuple[weakref.ref, dict]] = {}


def _drop(key: int) -> None:
    _CACHE.pop(key, None)


def _stamp(tensors: Sequence[torch.Tensor]) -> tuple:
    return tuple((t.data_ptr(), t._version, tuple(t.shape), t.dtype, t.device) for t in tensors)


def cached(key: str, sources: Sequence[torch.Tensor], build: Callable[[], object]) -> object:
    """``build()`` once per (key, state of ``sources``); rebuilt when any source changes (version/storage).

    The cache entry hangs off ``sources[0]`` (weakly), so it dies with the parameter.
    """
    anchor = sources[0]
    slot = _CACHE.get(id(anchor))
    if slot is None or slot[0]() is not anchor:
        slot = (weakref.ref(anchor), {})
        _CACHE[id(anchor)] = slot
        weakref.finalize(anchor, _drop, id(anchor))
    entry = slot[1]
    stamp = _stamp(sources)
    hit = entry.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    value = build()
    entry[key] = (stamp, value)
    return value


def clear_cache() -> None:
    """Drop every prepared weight (they are rebuilt on next use)."""
    _CACHE.clear()


def _row_bucket(n: int) -> int:
    """``n`` rounded up to one of at most 16 sizes per power of two (at most 1/16 extra rows).

    oneDNN's packed linear keeps memory for every distinct input row count it has seen (measured: about
    0.4 MB per count for a 448 x 512 weight, RSS +800 MB after 2,000 counts, growing without bound in a
    long embed run where the number of distinct tokens per batch varies); rounding bounds the count.
    """
    if n <= 64:
        return n
    step = 1 << (n.bit_length() - 5)
    return (n + step - 1) // step * step


class PackedLinear:
    """``y = x @ W (+ b)`` for ``x`` ``(n, in)`` float32 CPU with ``W`` ``(in, out)`` packed once.

    Uses oneDNN's packed linear when available (weights reordered into its blocked layout a single time),
    otherwise ``torch.addmm``/``torch.mm`` on a contiguous copy. Not differentiable: for inference and for
    the hand-written backward of :mod:`elmo_fast.fast.lstm` only.
    """

    __slots__ = ("weight", "bias", "packed", "out_features", "in_features")

    #: below this many multiply-adds per call the BLAS path is used: oneDNN always starts its thread team,
    #: which costs more than a tiny product (and stalls badly when the CPUs are shared)
    MIN_PACKED_MACS = 1 << 20

    def __init__(self, W: torch.Tensor, b: torch.Tensor | None = None, batch_hint: int = 32) -> None:
        W = W.detach()
        self.in_features, self.out_features = W.shape
        self.bias = None if b is None else b.detach().contiguous()
        self.weight = W.contiguous()
        self.packed = None
        if MKLDNN and W.device.type == "cpu" and W.dtype == torch.float32:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(W.t().contiguous(), max(int(batch_hint), 1))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:
            return x.new_zeros(0, self.out_features)
        if self.packed is not None and x.shape[0] * self.in_features * self.out_features >= self.MIN_PACKED_MACS:
            n = x.shape[0]
            rows = _row_bucket(n)
            if rows != n:  # oneDNN keeps memory per distinct input shape: bound the number of shapes
                x = torch.cat([x, x.new_zeros(rows - n, x.shape[1])])
            y = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
            return y if rows == n else y[:n]
        if self.bias is not None:
            return torch.addmm(self.bias, x, self.weight)
        return x @ self.weight


def onednn_products() -> bool:
    """Whether large products go through oneDNN-packed weights (``numerics`` order ``"fast"``, the default).

    Their sums are ordered differently from the BLAS's, which AllenNLP uses: on long sentences of the original
    model this alone makes the biLSTM drift from AllenNLP by ~4x its own 1-vs-2-thread difference (fresh batch),
    ~10x with states carried; with order ``"allennlp"`` (or ``ELMO_FAST_ONEDNN=0``) every product is a BLAS
    product and the drift stays under 2x (``benchmarks/allennlp_parity.py --same-token-embeddings
    [--no-onednn]``), at a speed cost on large models.
    """
    return numerics.current().order == "fast"


# ----------------------------------------------------------------------------------------------------------
# Products over the stacked directions
# ----------------------------------------------------------------------------------------------------------
class PairLinear:
    """``y[d] = x[d] @ W[d] (+ b[d])`` for ``D`` stacked directions, weights prepared once.

    Products of a single row, and all products with a small weight (at most :attr:`BMM_MAX_WEIGHT`
    elements per direction, e.g. the ``small`` model's 128 x 4096), are latency/memory bound: one
    ``torch.bmm`` over the directions runs them on all cores at once and streams both weights in one call.
    Otherwise each direction's oneDNN-packed weight (:class:`PackedLinear`) is used: it is what makes a
    32-row recurrent product of the original model fast. Not differentiable.

    Args:
        W: ``(D, in, out)``; b: ``(D, out)`` or None; batch_hint: typical row count for oneDNN's packing.
    """

    __slots__ = ("bias", "packed", "weight")

    #: ``benchmarks/products.py`` on the 2-core AMD EPYC VM: for the small model's weights one bmm is as fast or
    #: faster at almost every row count (1-997); for 512 x 16384 only at one row
    BMM_MAX_WEIGHT = 1 << 20

    def __init__(self, W: torch.Tensor, b: torch.Tensor | None = None, batch_hint: int = 32) -> None:
        self.weight = W.detach().contiguous()
        self.bias = None if b is None else b.detach().contiguous()
        self.packed = [PackedLinear(self.weight[d], None if b is None else self.bias[d], batch_hint)
                       for d in range(W.shape[0])]

    def _bmm(self, n: int) -> bool:
        _, k, m = self.weight.shape
        return (n == 1 or k * m <= self.BMM_MAX_WEIGHT or not self.packed or self.packed[0].packed is None
                or not onednn_products())

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(D, n, in)`` -> ``(D, n, out)`` (written into ``out`` when given)."""
        if self._bmm(x.shape[1]):
            if self.bias is None:
                return torch.bmm(x, self.weight, out=out)
            return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight, out=out)
        ys = [p(x[d]) for d, p in enumerate(self.packed)]
        if out is None:
            return torch.stack(ys)
        for d, y in enumerate(ys):
            out[d].copy_(y)
        return out

    def add_into_fn(self, n: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
        """``(acc, x) -> acc += (x @ W + b)`` for ``acc`` ``(D, n, out)`` and ``x`` ``(D, n, in)`` (the bias,
        if any, is added to the product before the product is added to ``acc``: AllenNLP's order), the
        product's path chosen once for ``n`` rows (for per-step loops)."""
        if self._bmm(n):
            W = self.weight
            if self.bias is not None:
                b = self.bias.unsqueeze(1)
                return lambda acc, x: acc.add_(torch.baddbmm(b, x, W))
            return lambda acc, x: acc.add_(torch.bmm(x, W))  # in-place baddbmm_ on the strided view: 2x slower
        packed = self.packed

        def add(acc: torch.Tensor, x: torch.Tensor) -> None:
            for d, p in enumerate(packed):
                acc[d].add_(p(x[d]))
        return add

    def fn(self, n: int) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
        """``(x, out) -> x @ W`` for ``n`` rows (no bias), the product's path chosen once."""
        if self._bmm(n):
            W = self.weight
            return lambda x, out: torch.bmm(x, W, out=out)
        return lambda x, out: self(x, out)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for the fast path's large one-off products (e.g. weight gradients over all steps), in the
    precision of the current :mod:`elmo_fast.numerics` setting; differentiable through torch."""
    return a @ b
