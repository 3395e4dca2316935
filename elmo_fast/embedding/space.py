"""The disk-space budget of an embed run, checked before the first chunk is embedded.

The bytes still to be written (chunk files until they are merged, then the output: 4 bytes x layers x tokens x
2P plus :data:`DATASET_OVERHEAD` per line, and the sentence index) are compared with the free space of OUTPUT's
folder and with the file size limit (``ulimit -f``). Too little is a one-line :class:`~elmo_fast.errors.UserError`
naming the folder and both sizes, raised before any model work; a write that fails later anyway (another process
filled the disk) is handled where it happens (:mod:`.isolated`).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from ..errors import UserError
from .distributed import rank_share
from .isolated import describe_bytes, free_bytes
from .reader import InputPlan
from .writer import chunk_path

__all__ = ["DATASET_OVERHEAD", "FILE_OVERHEAD", "output_bytes", "check_space", "check_space_for"]

#: bytes per stored dataset beyond its float32 payload (HDF5 object header and link; measured ~330)
DATASET_OVERHEAD = 512
#: bytes per hdf5 file beyond its datasets (superblock, root group, heaps)
FILE_OVERHEAD = 64 << 10


def output_bytes(n_tokens: int, n_lines: int, layers: int, width: int) -> int:
    """Bytes of embeddings for ``n_tokens`` tokens on ``n_lines`` lines: ``4 x layers x tokens x width``
    (width = 2P) plus :data:`DATASET_OVERHEAD` per line."""
    return 4 * layers * n_tokens * width + DATASET_OVERHEAD * n_lines


def check_space(folder: str, output: str, *, chunks_bytes: int, largest_chunk: int, output_bytes: int,
                largest_output: int) -> None:
    """Refuse to start when ``folder`` lacks the space for the chunk files and the output, or a single file
    would exceed the file size limit (``ulimit -f``); the message names the folder and the bytes needed."""
    import resource
    needed = chunks_bytes + output_bytes
    free = free_bytes(folder)
    if free is not None and needed > free:
        raise UserError(f"OUTPUT {output}: not enough free space in {folder}: the embeddings need about "
                        f"{describe_bytes(needed)} ({describe_bytes(chunks_bytes)} of chunk files until they are "
                        f"merged, {describe_bytes(output_bytes)} of output), {describe_bytes(free)} are free")
    soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    largest = max(largest_chunk, largest_output)
    if soft != resource.RLIM_INFINITY and largest > soft:
        what = "a chunk file" if largest_chunk >= largest_output else "OUTPUT"
        raise UserError(f"OUTPUT {output}: {what} would need about {describe_bytes(largest)} but the file size "
                        f"limit (ulimit -f) is {describe_bytes(soft)}; raise the limit or write shards "
                        f"(--shards) and smaller chunks (--chunk-lines)")


def check_space_for(plan: InputPlan, embedder: Any, output_format: str, outputs: Sequence[str], work: str,
                    folder: str, writes_index: bool) -> None:
    """:func:`check_space` with this run's sizes: the chunk files not yet complete in ``work`` and every output
    (``writes_index``: plus the sentence index, about the input's size again, shared out by lines). Skipped for
    a model whose output width (``embedder.output_dim``) is unknown."""
    width = getattr(embedder, "output_dim", None)
    if not isinstance(width, int):
        return
    layers = int(getattr(embedder, "num_layers", 3)) if output_format == "all" else 1
    per_chunk = [output_bytes(c.n_tokens, c.n_lines, layers, width) + FILE_OVERHEAD for c in plan.chunks]
    todo = [b for c, b in zip(plan.chunks, per_chunk) if not os.path.exists(chunk_path(work, c.index))]
    index = int(plan.size * 1.5) + 16 * plan.n_lines if writes_index else 0
    groups = [rank_share(len(plan.chunks), i, len(outputs)) for i in range(len(outputs))]
    out_sizes = [sum(per_chunk[lo:hi]) + index * (hi - lo) // max(1, len(plan.chunks)) for lo, hi in groups]
    check_space(folder, outputs[0], chunks_bytes=sum(todo), largest_chunk=max(per_chunk, default=0),
                output_bytes=sum(out_sizes), largest_output=max(out_sizes, default=0))
