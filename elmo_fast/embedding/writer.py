"""hdf5 output: per-chunk files in the work folder, and the merge into AllenNLP's layout.

A chunk file holds group ``data`` (one float32 dataset per line, named by its final key), group ``state``
(stateful runs: the carried LSTM state after the chunk, datasets ``h`` and ``c``) and the attribute
``fingerprint`` (:mod:`elmo_fast.embedding.checkpoint`). It is written under ``chunk-NNNNNN.h5.tmp-PID`` and
renamed when complete, so a chunk file that exists is complete. The embed job writes chunk files and runs the
merge in child processes (:mod:`elmo_fast.embedding.isolated`): HDF5 crashes the process on a failed write.

The merge copies every chunk's datasets (read and written again, because HDF5's object copy keeps more memory)
into ``OUTPUT.tmp-PID`` (or one file per shard; :class:`ReopeningWriter`), adds ``sentence_to_index``
(:mod:`elmo_fast.embedding.index`) and renames. Chunk files are kept
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
from ..errors import raise_if_interrupted

__all__ = ["OUTPUT_FORMATS", "format_payload", "chunk_path", "ChunkFile", "ReopeningWriter", "read_chunk_record",
           "merge_chunks"]

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("all", "top", "average")


def format_payload(emb: np.ndarray, output_format: str) -> np.ndarray:
    """``(3, n, 2P)`` -> the stored array: itself (``all``), the top layer or the layer mean ``(n, 2P)``."""
    if output_format == "all":
        return emb
    if output_format == "top":
        return emb[-1]
    return np.average(emb, axis=0)


_LCPL = None


def _lcpl():
    """Link creation properties: UTF-8 names (as h5py's high-level API), no intermediate groups."""
    global _LCPL
    if _LCPL is None:
        from h5py import h5p, h5t
        _LCPL = h5p.create(h5p.LINK_CREATE)
        _LCPL.set_char_encoding(h5t.CSET_UTF8)
    return _LCPL


def write_float32(group: h5py.Group, key: str, payload: np.ndarray) -> None:
    """``group[key] = payload`` as a float32 dataset through h5py's low-level API.

    Same file content as ``group.create_dataset(key, data=payload, dtype="float32")``; about 3x less Python
    overhead per dataset, which dominates for short sentences (one dataset per input line, twice: chunk + merge).
    """
    from h5py import h5d, h5s, h5t
    arr = np.ascontiguousarray(payload, dtype=np.float32)
    dsid = h5d.create(group.id, key.encode("utf-8"), h5t.IEEE_F32LE, h5s.create_simple(arr.shape), lcpl=_lcpl())
    if arr.size:
        dsid.write(h5s.ALL, h5s.ALL, arr)


def copy_float32(src: h5py.Group, dst: h5py.Group) -> int:
    """Copy every float32 dataset of ``src`` into ``dst`` (low-level read + :func:`write_float32`); count."""
    from h5py import h5d, h5s, h5t
    n = 0
    for name in src.id:  # link names as bytes
        dsid = h5d.open(src.id, name)
        buf = np.empty(dsid.shape, dtype=np.float32)
        if buf.size:
            dsid.read(h5s.ALL, h5s.ALL, buf)
        out = h5d.create(dst.id, name, h5t.IEEE_F32LE, h5s.create_simple(buf.shape), lcpl=_lcpl())
        if buf.size:
            out.write(h5s.ALL, h5s.ALL, buf)
        n += 1
    return n


def chunk_path(work: str, index: int) -> str:
    return os.path.join(work, f"chunk-{index:06d}.h5")


class ChunkFile:
    """Context manager writing one chunk file atomically (see the module docstring).

    Args:
        path: the chunk file's final name.
        components: its fingerprint components (stored as the ``fingerprint`` attribute).
        writer: a :class:`~elmo_fast.embedding.isolated.ChunkWriterProcess` that writes the file in a child
            process (a failed write is then a :class:`~elmo_fast.embedding.isolated.WriteFailed`, not a crash);
            None writes in this process.
    """

    def __init__(self, path: str, components: dict[str, Any], writer: Any = None) -> None:
        self.path = path
        self.components = components
        self.writer = writer
        self._ctx = atomic_path(path)
        self.file: h5py.File | None = None

    def __enter__(self) -> "ChunkFile":
        tmp = self._ctx.__enter__()
        try:
            if self.writer is not None:
                self.writer.open(tmp, self.path)
            else:
                self.file = h5py.File(tmp, "w")
                self.data = self.file.create_group("data")
        except BaseException:
            self._ctx.__exit__(None, None, None)
            raise
        return self

    def write(self, key: str, payload: np.ndarray) -> None:
        """Dataset ``key``: ``payload`` as float32."""
        if self.writer is not None:
            self.writer.write(key, np.ascontiguousarray(payload, dtype=np.float32))
        else:
            write_float32(self.data, key, payload)

    def write_state(self, state: tuple[np.ndarray, np.ndarray] | None) -> None:
        """The carried LSTM state ``(h, c)`` after the chunk (stateful runs)."""
        if self.writer is not None:
            self.writer.write_state(state)
        elif state is not None:
            g = self.file.create_group("state")  # type: ignore[union-attr]
            g.create_dataset("h", data=state[0])
            g.create_dataset("c", data=state[1])

    def __exit__(self, exc_type, exc, tb) -> bool:
        fingerprint = json.dumps(self.components, sort_keys=True)
        try:
            if self.writer is not None:
                if exc_type is None:
                    self.writer.close(fingerprint)
                else:
                    self.writer.abort()
            elif self.file is not None:
                if exc_type is None:
                    self.file.attrs["fingerprint"] = fingerprint
                self.file.close()
        except BaseException as e:
            self._ctx.__exit__(type(e), e, e.__traceback__)  # the temporary file goes
            raise
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


#: HDF5 format bounds of the merged output files (see :func:`merge_chunks`)
OUTPUT_LIBVER = ("v110", "v110")


class ReopeningWriter:
    """A new hdf5 file for millions of datasets, written with bounded memory: ``.file`` is the open
    ``h5py.File``; call :meth:`wrote` with the number of datasets just written.

    * HDF5 1.10 file format: a group with millions of datasets keeps its links in dense storage (1.8 format:
      ~140 bytes per dataset held until close; 200k datasets 70 -> 113 MB vs flat 73 MB). Readable by
      HDF5 >= 1.10 (h5py >= 2.7, 2017).
    * Even so, an open file's library state grows by ~25-35 bytes per dataset written (a 1 M-dataset writer:
      266 -> 285 MB; the merge of a 1 GB input, 9.3 M datasets: +330 MB). Closing and reopening the file every
      :attr:`REOPEN_EVERY` datasets releases it: flat at 266 MB over 1 M datasets, at no measurable cost.
    """

    REOPEN_EVERY = 100_000

    def __init__(self, path: str) -> None:
        self.path = path
        self.file = h5py.File(path, "w", libver=OUTPUT_LIBVER)
        self._since = 0

    def wrote(self, n: int) -> None:
        self._since += n
        if self._since >= self.REOPEN_EVERY:
            self.file.close()
            self.file = h5py.File(self.path, "a", libver=OUTPUT_LIBVER)
            self._since = 0

    def __enter__(self) -> "ReopeningWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


def merge_chunks(outputs: Sequence[str], chunk_files: Sequence[str], groups: Sequence[tuple[int, int]],
                 index_for: Callable[[int], Callable[[], Iterator[tuple[str, str]]] | None],
                 progress: bool = False) -> None:
    """Write ``outputs[i]`` from ``chunk_files[lo:hi]`` for ``(lo, hi) = groups[i]`` (atomically each).

    ``index_for(i)`` gives the ``(sentence, key)`` entries factory of output ``i``'s ``sentence_to_index``,
    or None for no index.
    """
    from ..progress import bar as progress_bar
    from .index import write_sentence_index
    bar = progress_bar(progress, total=len(chunk_files), unit="chunk", desc="merging")
    for i, (out, (lo, hi)) in enumerate(zip(outputs, groups)):
        finish = None
        with atomic_path(out) as tmp:
            with ReopeningWriter(tmp) as writer:
                for path in chunk_files[lo:hi]:
                    with h5py.File(path, "r") as fin:
                        writer.wrote(copy_float32(fin["data"], writer.file))
                    raise_if_interrupted()  # a swallowed SIGTERM/SIGINT (elmo_fast.errors) stops the merge here
                    bar.update(1)
                factory = index_for(i)
                if factory is not None:
                    finish = write_sentence_index(writer.file, factory)
            if finish is not None:
                finish()
        logger.info("wrote %s (%d chunks)", out, hi - lo)
    bar.close()
