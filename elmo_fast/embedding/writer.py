"""hdf5 output: per-chunk files in the work folder, and the merge into AllenNLP's layout.

A chunk file holds group ``data`` (one float32 dataset per line, named by its final key), group ``state``
(stateful runs: the carried LSTM state after the chunk, datasets ``h`` and ``c``) and the attribute
``fingerprint`` (:mod:`elmo_fast.embedding.checkpoint`). It is written under ``chunk-NNNNNN.h5.tmp-PID`` and
renamed when complete, so a chunk file that exists is complete.

The merge copies every chunk's datasets (HDF5's object copy, no decoding) into ``OUTPUT.tmp-PID`` (or one file
per shard), adds ``sentence_to_index`` (:mod:`elmo_fast.embedding.index`) and renames. Chunk files are kept
until every output is in place, so an interrupted merge is redone from the chunks: peak disk use is about
twice the output.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Iterator, Sequence

import h5py
import numpy as np

from ..atomic import atomic_path

__all__ = ["OUTPUT_FORMATS", "format_payload", "chunk_path", "ChunkFile", "read_chunk_record", "merge_chunks"]

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("all", "top", "average")


def format_payload(emb: np.ndarray, output_format: str) -> np.ndarray:
    """``(3, n, 2P)`` -> the stored array: itself (``all``), the top layer or the layer mean ``(n, 2P)``."""
    if output_format == "all":
        return emb
    if output_format == "top":
        return emb[-1]
    return np.average(emb, axis=0)


def chunk_path(work: str, index: int) -> str:
    return os.path.join(work, f"chunk-{index:06d}.h5")


class ChunkFile:
    """Context manager writing one chunk file atomically (see the module docstring)."""

    def __init__(self, path: str, components: dict[str, Any]) -> None:
        self.path = path
        self.components = components
        self._ctx = atomic_path(path)
        self.file: h5py.File | None = None

    def __enter__(self) -> "ChunkFile":
        tmp = self._ctx.__enter__()
        try:
            self.file = h5py.File(tmp, "w")
            self.data = self.file.create_group("data")
        except BaseException:
            self._ctx.__exit__(None, None, None)
            raise
        return self

    def write(self, key: str, payload: np.ndarray) -> None:
        self.data.create_dataset(key, payload.shape, dtype="float32", data=payload)

    def write_state(self, state: tuple[np.ndarray, np.ndarray] | None) -> None:
        if state is not None:
            g = self.file.create_group("state")  # type: ignore[union-attr]
            g.create_dataset("h", data=state[0])
            g.create_dataset("c", data=state[1])

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if self.file is not None:
                if exc_type is None:
                    self.file.attrs["fingerprint"] = json.dumps(self.components, sort_keys=True)
                self.file.close()
        finally:
            if exc_type is None:
                self._ctx.__exit__(None, None, None)
            else:
                self._ctx.__exit__(exc_type, exc, tb)
        return False


def read_chunk_record(path: str) -> tuple[dict[str, Any] | None, tuple[np.ndarray, np.ndarray] | None]:
    """A chunk file's fingerprint components and saved state (``(None, None)`` if unreadable)."""
    try:
        with h5py.File(path, "r") as f:
            comps = json.loads(f.attrs["fingerprint"])
            state = (f["state/h"][...], f["state/c"][...]) if "state" in f else None
            return comps, state
    except (OSError, KeyError, ValueError, TypeError):
        return None, None


def merge_chunks(outputs: Sequence[str], chunk_files: Sequence[str], groups: Sequence[tuple[int, int]],
                 index_for: Callable[[int], Callable[[], Iterator[tuple[str, str]]] | None],
                 progress: bool = False) -> None:
    """Write ``outputs[i]`` from ``chunk_files[lo:hi]`` for ``(lo, hi) = groups[i]`` (atomically each).

    ``index_for(i)`` gives the ``(sentence, key)`` entries factory of output ``i``'s ``sentence_to_index``,
    or None for no index.
    """
    from tqdm import tqdm
    from .index import write_sentence_index
    bar = tqdm(total=len(chunk_files), unit="chunk", disable=not progress, desc="merging")
    for i, (out, (lo, hi)) in enumerate(zip(outputs, groups)):
        finish = None
        with atomic_path(out) as tmp:
            with h5py.File(tmp, "w") as fout:
                for path in chunk_files[lo:hi]:
                    with h5py.File(path, "r") as fin:
                        data = fin["data"]
                        for key in data:
                            fin.copy(data[key], fout, name=key)
                    bar.update(1)
                factory = index_for(i)
                if factory is not None:
                    finish = write_sentence_index(fout, factory)
            if finish is not None:
                finish()
        logger.info("wrote %s (%d chunks)", out, hi - lo)
    bar.close()
