"""``sentence_to_index`` without holding the corpus in memory, and the duplicate-key check.

AllenNLP's layout stores one dataset ``sentence_to_index`` of shape ``(1,)`` holding a JSON object
``{sentence text: key}``: keys in order of first occurrence, and for a repeated sentence the key of its last
line (a Python dict filled line by line). Building that dict needs every distinct sentence at once, so it is
built on disk instead:

* while the input is scanned, every line is appended to an SQLite table ``lines(line, text)`` in the run's
  work folder (:class:`SentenceStore`; SQLite's page cache is bounded, 8 MB here);
* at the end one ``GROUP BY text`` query (sorted on disk by SQLite) yields the distinct sentences in
  first-occurrence order with their last line, and the JSON text is produced from that stream, fragment by
  fragment, with exactly ``json.dumps``'s formatting;
* the JSON text is written by :func:`write_sentence_index`: up to ``in_memory_max`` bytes (4 MiB) as a
  variable-length string exactly as AllenNLP writes it; above that, as a fixed-length UTF-8 string dataset
  of the exact JSON length whose contiguous storage is allocated by HDF5 and then filled by streaming the
  fragments straight into the file at the dataset's offset. Both read back with
  ``json.loads(f["sentence_to_index"][0])`` (h5py returns ``bytes`` for both), so readers of AllenNLP's files
  need no change; only the hdf5 string type differs (fixed-length instead of variable-length).
"""
from __future__ import annotations

import json
import os
import sqlite3
from contextlib import contextmanager
from typing import Callable, Iterator

import h5py

from ..errors import UserError

__all__ = ["SentenceStore", "write_sentence_index", "INDEX_IN_MEMORY_MAX"]

#: JSON texts up to this many bytes are written as AllenNLP does (a variable-length string, built in memory)
INDEX_IN_MEMORY_MAX = 4 << 20


class SentenceStore:
    """An on-disk table of (0-based line, stripped text), filled during the input scan.

    A full disk (or the file size limit) while it is written or sorted is a one-line
    :class:`~elmo_fast.embedding.isolated.WriteFailed` naming the database file, not an SQLite traceback.
    """

    def __init__(self, path: str) -> None:
        if os.path.exists(path):
            os.remove(path)
        self.path = path
        self._bytes = 0
        with self._errors():
            self._connect()
            self.db.execute("CREATE TABLE lines(line INTEGER PRIMARY KEY, text TEXT NOT NULL)")
        self._pending: list[tuple[int, str]] = []

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite's "database or disk is full" (and any other failure of the store) as a one-line error."""
        try:
            yield
        except sqlite3.Error as e:
            from .isolated import write_failed
            # SQLITE_FULL ("database or disk is full") on ENOSPC; SQLITE_IOERR ("disk I/O error") on EFBIG/EDQUOT
            full = isinstance(e, sqlite3.OperationalError) and any(
                s in str(e) for s in ("full", "too large", "I/O error"))
            if full or getattr(e, "sqlite_errorcode", None) == 13:
                raise write_failed(self.path, self._bytes, f"SQLite: {e}") from None
            raise UserError(f"{self.path}: the sentence store failed (SQLite: {e})") from None

    def reopen(self) -> None:
        """A fresh connection to the same database (a forked child must not use its parent's)."""
        with self._errors():
            self._connect()

    def _connect(self) -> None:
        path = self.path
        self.db = sqlite3.connect(path)
        folder = os.path.dirname(os.path.abspath(path))
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("PRAGMA cache_size=-8192")
        self.db.execute("PRAGMA temp_store=FILE")
        try:  # SQLite's sorter spills beside the database, not into a possibly small /tmp
            self.db.execute(f"PRAGMA temp_store_directory='{folder}'" if "'" not in folder else "SELECT 1")
        except sqlite3.DatabaseError:
            pass

    def add(self, line: int, text: str) -> None:
        """Record 0-based ``line`` with its stripped ``text`` (buffered, 10k rows at a time)."""
        self._pending.append((line, text))
        self._bytes += len(text) + 16
        if len(self._pending) >= 10000:
            self.flush()

    def flush(self) -> None:
        with self._errors():
            if self._pending:
                self.db.executemany("INSERT INTO lines VALUES (?, ?)", self._pending)
                self._pending = []
            self.db.commit()

    def duplicates(self, limit: int = 20) -> tuple[list[tuple[int, int]], int]:
        """The first ``limit`` repeated lines as (1-based line, 1-based earlier line), and their total count."""
        self.flush()
        with self._errors():
            rows = self.db.execute(
                "SELECT line + 1, first + 1 FROM (SELECT line, first_value(line) OVER (PARTITION BY text ORDER BY "
                "line) AS first FROM lines) WHERE line != first ORDER BY line LIMIT ?", (limit,)).fetchall()
            if not rows:
                return [], 0
            total = self.db.execute("SELECT count(*) - count(DISTINCT text) FROM lines").fetchone()[0]
        return [(int(a), int(b)) for a, b in rows], int(total)

    def index_entries(self, lo: int = 0, hi: int | None = None) -> Iterator[tuple[str, int]]:
        """``(sentence, last 0-based line)`` for the lines in ``[lo, hi)``, in order of first occurrence."""
        self.flush()
        hi = 2 ** 62 if hi is None else hi
        with self._errors():  # the GROUP BY sorts on disk beside the database
            cur = self.db.execute("SELECT text, max(line) FROM lines WHERE line >= ? AND line < ? GROUP BY text "
                                  "ORDER BY min(line)", (lo, hi))
            for text, last in cur:
                yield text, int(last)

    def close(self, remove: bool = False) -> None:
        self.db.close()
        if remove and os.path.exists(self.path):
            os.remove(self.path)


def _fragments(entries: Iterator[tuple[str, str]]) -> Iterator[bytes]:
    """``json.dumps(dict(entries))`` as a stream of UTF-8 byte fragments (identical text)."""
    yield b"{"
    first = True
    for text, key in entries:
        yield (b"" if first else b", ") + (json.dumps(text) + ": " + json.dumps(key)).encode("utf-8")
        first = False
    yield b"}"


def write_sentence_index(fout: h5py.File, entries_factory: Callable[[], Iterator[tuple[str, str]]],
                         in_memory_max: int = INDEX_IN_MEMORY_MAX) -> Callable[[], None] | None:
    """Create dataset ``sentence_to_index`` (1,) in the open, writable ``fout``.

    Args:
        entries_factory: called (up to twice) to get a fresh iterator of ``(sentence, key)`` pairs.
        in_memory_max: above this many JSON bytes the text is streamed into a fixed-length string (see module).

    Returns:
        None when the dataset is complete; else a function to call once ``fout`` is closed, which streams the
        JSON bytes into the storage HDF5 allocated (so no HDF5 buffer can overwrite them).
    """
    size = sum(len(piece) for piece in _fragments(entries_factory()))
    if size <= in_memory_max:
        text = b"".join(_fragments(entries_factory())).decode("utf-8")
        ds = fout.create_dataset("sentence_to_index", (1,), dtype=h5py.special_dtype(vlen=str))
        ds[0] = text
        return None
    from h5py import h5d, h5p, h5s, h5t
    tid = h5t.C_S1.copy()
    tid.set_size(size)
    tid.set_cset(h5t.CSET_UTF8)
    dcpl = h5p.create(h5p.DATASET_CREATE)
    dcpl.set_layout(h5d.CONTIGUOUS)
    dcpl.set_alloc_time(h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5d.FILL_TIME_NEVER)
    dsid = h5d.create(fout.id, b"sentence_to_index", tid, h5s.create_simple((1,)), dcpl=dcpl)
    offset = dsid.get_offset()
    if offset is None:
        raise RuntimeError("hdf5 did not allocate contiguous storage for sentence_to_index")
    filename = fout.filename

    def finish() -> None:
        written = 0
        with open(filename, "r+b") as raw:
            raw.seek(offset)
            for piece in _fragments(entries_factory()):
                raw.write(piece)
                written += len(piece)
        if written != size:
            raise RuntimeError(f"sentence_to_index: wrote {written} bytes, expected {size}")
    return finish
