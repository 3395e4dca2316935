"""Batches of one chunk: length-sorted for stateless models, input order for stateful ones (AllenNLP)."""
from __future__ import annotations

from typing import Iterator, Sequence

__all__ = ["length_groups", "chunk_batches"]


def length_groups(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices ``0..n-1`` in batches of ``batch_size`` sentences of similar length.

    Sentences are ordered by length (ties keep input order) and cut into consecutive chunks, so each batch
    pads little and its rows stay busy for about the same number of LSTM steps. Every index appears once.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, found {batch_size!r}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def chunk_batches(lengths: Sequence[int], batch_size: int, stateful: bool) -> Iterator[list[int]]:
    """Row indices of one chunk, batch by batch.

    Stateful: consecutive rows (the carried state must meet the sentences in input order). Stateless: the
    chunk is the sorting window; rows are grouped by length (:func:`length_groups`). A chunk's memory is its
    own lines only, so the window bounds the pipeline's memory.
    """
    if stateful:
        for i in range(0, len(lengths), batch_size):
            yield list(range(i, min(i + batch_size, len(lengths))))
    else:
        yield from length_groups(lengths, batch_size)
