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

__all__ = ["MKLDNN", "PackedLinear", "cached", "clear_cache"]

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
