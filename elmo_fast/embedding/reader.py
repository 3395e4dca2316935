"""Lazy, validating reader of embed inputs: one sentence per line, UTF-8, no blank lines, no NUL bytes.

The input is read twice, line by line, never whole:

1. :func:`scan_input` (once per run, before the model is loaded) validates every line (UTF-8, not blank; with
   sentence keys also no NUL byte, no ``/``, not ``.``), cuts the file into :class:`Chunk` s of ``chunk_lines``
   lines (byte offsets + a SHA-256 of each chunk's bytes, the chunk's resume fingerprint) and, when asked,
   appends every line to an on-disk :class:`~elmo_fast.embedding.index.SentenceStore` (for
   ``sentence_to_index`` and the duplicate-key check).
2. :func:`read_chunk` reads one chunk by its byte offset when it is embedded and checks that its bytes still
   hash to the scanned value (an input edited during the run is an error, not silently mixed output).

Encodings (:mod:`elmo_fast.textfile`): UTF-16/UTF-32 text (byte order mark or NUL pattern) is refused at line 1,
a NUL byte anywhere is refused with its line, and a UTF-8 byte order mark at the start is ignored (with a note),
not glued to the first token.

Line splitting follows Python's universal newlines (``\\n``, ``\\r\\n`` and ``\\r`` end a line, as AllenNLP's
text-mode reading) and every line is ``str.strip()``-ed, so results match AllenNLP's ``elmo`` command.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from typing import IO, Callable, Iterator, Sequence

from ..errors import UserError
from ..textfile import HEAD_BYTES, describe_wide_encoding, strip_utf8_bom

__all__ = ["InputFileError", "Chunk", "InputPlan", "scan_input", "read_chunk", "iter_lines", "read_sentences",
           "line_list"]


class InputFileError(UserError):
    """An input text file has blank lines, undecodable bytes or keys that cannot be stored."""


def line_list(numbers: Sequence[int], total: int | None = None, limit: int = 20) -> str:
    """``"line 3"`` / ``"lines 2, 4"`` / ``"lines 1, 2, ... (57 in all)"`` (1-based numbers)."""
    total = len(numbers) if total is None else total
    shown = ", ".join(str(n) for n in list(numbers)[:limit])
    more = f", ... ({total} in all)" if total > min(len(numbers), limit) else ""
    return ("line " if total == 1 else "lines ") + shown + more


def _verb(total: int) -> str:
    return "is" if total == 1 else "are"


@dataclass(frozen=True)
class Chunk:
    """Lines ``[first_line, first_line + n_lines)`` (0-based) at bytes ``[start, end)`` of the input."""
    index: int
    first_line: int
    n_lines: int
    start: int
    end: int
    sha256: str
    n_tokens: int


@dataclass
class InputPlan:
    """The result of :func:`scan_input`: the input's chunks and totals."""
    path: str
    size: int
    chunks: list[Chunk] = field(default_factory=list)
    n_lines: int = 0
    n_tokens: int = 0


def iter_lines(f: IO[bytes], offset: int = 0) -> Iterator[tuple[int, int, bytes]]:
    """Logical lines of a binary file from byte ``offset``: ``(start, end, content)``.

    ``content`` excludes the terminator; ``[start, end)`` includes it. Universal newlines: ``\\n``, ``\\r\\n``
    and a lone ``\\r`` each end a line.
    """
    pos = offset
    for raw in f:
        end = pos + len(raw)
        if b"\r" not in raw:
            yield pos, end, raw[:-1] if raw.endswith(b"\n") else raw
            pos = end
            continue
        body = raw
        if body.endswith(b"\r\n"):
            body = body[:-2]
        elif body.endswith(b"\n") or body.endswith(b"\r"):
            body = body[:-1]
        pieces = body.split(b"\r")
        p = pos
        for k, piece in enumerate(pieces):
            last = k == len(pieces) - 1
            q = end if last else p + len(piece) + 1
            yield p, q, piece
            p = q
        pos = end


class _Problems:
    """Collects the first line numbers of each kind of fault (bounded memory) and their counts."""

    def __init__(self, limit: int = 20) -> None:
        self.limit = limit
        self.lines: dict[str, list[int]] = {}
        self.counts: dict[str, int] = {}

    def add(self, kind: str, lineno: int) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        lst = self.lines.setdefault(kind, [])
        if len(lst) < self.limit:
            lst.append(lineno)

    def message(self, name: str) -> str | None:
        texts = {
            "utf8": "not valid UTF-8 (expected UTF-8 text, one sentence per line)",
            "blank": "blank (expected one sentence per line; remove the blank lines)",
            "nul": "contain a NUL byte (not UTF-8 text: a binary file, or UTF-16/UTF-32 text?)",
            "slash": "contain '/' or are a lone '.', which cannot be an hdf5 key (run without --use-sentence-keys)",
        }
        parts = []
        for kind in ("utf8", "blank", "nul", "slash"):
            if kind in self.counts:
                total = self.counts[kind]
                text = texts[kind]
                if kind in ("nul", "slash") and total == 1:
                    text = text.replace("contain ", "contains ").replace("are a lone", "is a lone")
                    verb = ""
                else:
                    verb = "" if kind in ("nul", "slash") else _verb(total) + " "
                parts.append(f"{line_list(self.lines[kind], total)} {verb}{text}")
        return f"{name}: " + "; ".join(parts) if parts else None


def scan_input(path: str, chunk_lines: int, *, sentence_keys: bool = False,
               on_line: Callable[[int, str], None] | None = None,
               progress: bool = False) -> InputPlan:
    """Validate ``path`` line by line and cut it into chunks of ``chunk_lines`` lines (see module docstring).

    Args:
        path: the input text file (a regular file: it is read again by :func:`read_chunk`).
        chunk_lines: lines per chunk (the last chunk may be shorter).
        sentence_keys: also refuse lines that cannot be hdf5 keys (``/``, a lone ``.``).
        on_line: called as ``on_line(line_index, stripped_text)`` for every valid line (e.g. to store it).

    Raises:
        InputFileError: UTF-16/UTF-32 text (at once), or listing the (first 20) 1-based line numbers of each
            kind of fault (not UTF-8, blank, NUL byte, not a key).
    """
    if chunk_lines < 1:
        raise ValueError(f"chunk_lines: expected a positive integer, found {chunk_lines}")
    problems = _Problems()
    plan = InputPlan(path=path, size=os.path.getsize(path))
    from ..progress import bar as progress_bar
    bar = progress_bar(progress, total=plan.size, unit="B", unit_scale=True, desc="checking input")
    with open(path, "rb") as f:
        _check_head(f, path)
        lineno = 0
        chunk_start, chunk_first, chunk_tokens = 0, 0, 0
        hasher = hashlib.sha256()
        last_end = 0
        for start, end, content in iter_lines(f):
            hasher.update(content)
            hasher.update(b"\n")  # the terminator kind does not matter, the line content does
            lineno += 1
            text = _decode(content if start else strip_utf8_bom(content, path), lineno, problems)
            if text is not None:
                if not text:
                    problems.add("blank", lineno)
                elif sentence_keys and ("/" in text or text == "."):
                    problems.add("slash", lineno)
                elif not problems.counts:
                    chunk_tokens += len(text.split())
                    if on_line is not None:
                        on_line(lineno - 1, text)
            last_end = end
            if lineno - chunk_first == chunk_lines:
                plan.chunks.append(Chunk(len(plan.chunks), chunk_first, lineno - chunk_first, chunk_start, end,
                                         hasher.hexdigest(), chunk_tokens))
                plan.n_tokens += chunk_tokens
                bar.update(end - chunk_start)
                chunk_start, chunk_first, chunk_tokens = end, lineno, 0
                hasher = hashlib.sha256()
        if lineno > chunk_first:
            plan.chunks.append(Chunk(len(plan.chunks), chunk_first, lineno - chunk_first, chunk_start, last_end,
                                     hasher.hexdigest(), chunk_tokens))
            plan.n_tokens += chunk_tokens
        plan.n_lines = lineno
    bar.close()
    message = problems.message(path)
    if message:
        raise InputFileError(message)
    return plan


def _check_head(f: IO[bytes], path: str) -> None:
    """Refuse UTF-16/UTF-32 text from the file's first bytes; leaves ``f`` at its start."""
    message = describe_wide_encoding(path, f.read(HEAD_BYTES))
    f.seek(0)
    if message:
        raise InputFileError(message)


def _decode(content: bytes, lineno: int, problems: _Problems) -> str | None:
    """A line's stripped text, or None after recording why it is refused (not UTF-8, a NUL byte)."""
    try:
        text = content.decode("utf-8").strip()
    except UnicodeDecodeError:
        problems.add("utf8", lineno)
        return None
    if "\x00" in text:
        problems.add("nul", lineno)
        return None
    return text


def read_chunk(path: str, chunk: Chunk) -> list[str]:
    """The stripped lines of ``chunk`` (read at its byte offset; their hash is checked against the scan)."""
    hasher = hashlib.sha256()
    lines: list[str] = []
    with open(path, "rb") as f:
        f.seek(chunk.start)
        for start, _end, content in iter_lines(f, chunk.start):
            hasher.update(content)
            hasher.update(b"\n")
            text = content if start else strip_utf8_bom(content, path, note=False)
            lines.append(text.decode("utf-8", "replace").strip())
            if len(lines) == chunk.n_lines:
                break
    if len(lines) != chunk.n_lines or hasher.hexdigest() != chunk.sha256:
        raise InputFileError(f"{path}: lines {chunk.first_line + 1}-{chunk.first_line + chunk.n_lines} changed "
                             f"while embedding (the input must not be edited during a run)")
    return lines


def read_sentences(source: str | os.PathLike | IO) -> list[str]:
    """All lines of a (small) input, stripped, validated like :func:`scan_input` (kept for API users).

    Raises:
        InputFileError: UTF-16/UTF-32 text, or undecodable (non-UTF-8) lines, lines with a NUL byte or blank
            lines, listing their 1-based line numbers.
    """
    name = getattr(source, "name", None) or os.fspath(source)  # type: ignore[arg-type]
    if isinstance(source, (str, os.PathLike)):
        f: IO[bytes] = open(source, "rb")
    else:
        data = source.read()
        f = io.BytesIO(data.encode("utf-8") if isinstance(data, str) else data)
    problems = _Problems()
    lines: list[str] = []
    with f:
        _check_head(f, str(name))
        for lineno, (start, _e, content) in enumerate(iter_lines(f), start=1):
            text = _decode(content if start else strip_utf8_bom(content, str(name)), lineno, problems)
            if text is None:
                continue
            if not text:
                problems.add("blank", lineno)
            lines.append(text)
    message = problems.message(str(name))
    if message:
        raise InputFileError(message)
    return lines
