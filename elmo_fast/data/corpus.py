"""The training corpus as text: shard globs, validated sentence lines, and the file checks commands run first.

Corpus format: a glob of UTF-8 text files ("shards"), one whitespace-tokenized sentence per line, without
``<S>``/``</S>``. Blank lines are skipped. UTF-16/UTF-32 files and lines with a NUL byte are errors naming the
file and line, a leading UTF-8 byte order mark is ignored (see :mod:`elmo_fast.textfile`). One shard is held in
memory at a time, so a corpus larger than memory works as long as each shard fits.
"""
from __future__ import annotations

import glob
import logging
import os
from typing import Iterator, Sequence

from ..errors import MissingFileError, UserError
from ..textfile import HEAD_BYTES, describe_wide_encoding, strip_utf8_bom

logger = logging.getLogger(__name__)


class CorpusError(UserError):
    """Bad training data: no files, an empty corpus, undecodable bytes (message names file and line)."""


# ---------------------------------------------------------------------------------------------- files
def expand_shards(patterns: str | Sequence[str]) -> list[str]:
    """Expand one glob (or several) into a sorted list of files; no match is an error."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [os.fspath(patterns)]
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))
        if not matched:
            if os.path.isdir(pattern):
                raise CorpusError(f"{pattern}: is a directory; expected a file glob such as '{pattern}/*.txt'")
            raise CorpusError(f"no files match '{pattern}' (expected one or more UTF-8 text files, one "
                              f"whitespace-tokenized sentence per line)")
        files.extend(matched)
    return files


#: what a corpus error adds where the command accepts ``--skip-bad-lines`` (train's corpus, not held-out files)
SKIP_HINT = " (pass --skip-bad-lines to skip such lines)"


def iter_shard_sentences(path: str, *, stride: int = 1, offset: int = 0, skip_bad_lines: bool = False,
                         hint: str = SKIP_HINT) -> Iterator[list[str]]:
    """Yield the tokenized sentences of one shard (lines ``offset::stride``; blank lines skipped).

    Args:
        hint: appended to a bad line's error (the flag that skips such lines; ``""`` where there is none).

    Raises:
        CorpusError: UTF-16/UTF-32 text (always); a line that is not valid UTF-8 (file, line number and byte
            offset) or holds a NUL byte, unless ``skip_bad_lines``, in which case it is logged and skipped.
        MissingFileError: the file disappeared.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise MissingFileError(f"corpus file not found: {path}") from None
    except OSError as e:
        raise CorpusError(f"{path}: cannot be read ({e.strerror}); expected a UTF-8 text file") from None
    with f:
        wide = describe_wide_encoding(path, f.read(HEAD_BYTES))
        if wide:
            raise CorpusError(wide)
        f.seek(0)
        for lineno, raw in enumerate(f, start=1):
            if (lineno - 1) % stride != offset:
                continue
            if lineno == 1:
                raw = strip_utf8_bom(raw, path)
            try:
                line = raw.decode("utf-8")
                problem = (f"{path}:{lineno}: contains a NUL byte (at byte {raw.index(0)} of the line); expected "
                           f"UTF-8 text, one tokenized sentence per line (a binary file?)") if 0 in raw else None
            except UnicodeDecodeError as e:
                problem = (f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start} of the line); "
                           f"expected UTF-8 text, one tokenized sentence per line")
            if problem:
                if skip_bad_lines:
                    logger.warning("%s (line skipped)", problem)
                    continue
                raise CorpusError(problem + hint)
            tokens = line.split()
            if tokens:
                yield tokens


# ---------------------------------------------------------------------------------------------- vocabulary


def format_line_numbers(numbers: Sequence[int], limit: int = 5) -> str:
    """``"line 3"`` / ``"lines 2, 5"`` / ``"lines 1, 2, 3, 4, 5, ... (57 in all)"`` (1-based numbers)."""
    shown = ", ".join(str(n) for n in numbers[:limit])
    more = f", ... ({len(numbers)} in all)" if len(numbers) > limit else ""
    return ("line " if len(numbers) == 1 else "lines ") + shown + more


# ---------------------------------------------------------------------------------------------- streams


def count_targets(path: str | Sequence[str]) -> tuple[int, int]:
    """``(targets per direction, sentences)`` of a held-out file: each sentence of n words has n + 1 targets
    (``w1..wn, </S>`` forward, ``wn..w1, <S>`` backward)."""
    words = sentences = 0
    for f in expand_shards(path):
        for tokens in iter_shard_sentences(f, hint=""):
            words += len(tokens)
            sentences += 1
    return words + sentences, sentences


def check_readable_file(path: str, what: str) -> None:
    """A one-line error unless ``path`` is an existing, readable regular file (``what`` names the flag).

    Only regular files: a FIFO or a device would block the reader or never end."""
    if not os.path.exists(path):
        raise MissingFileError(f"{what} {path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{what} {path}: is a directory; expected a UTF-8 text file, one sentence per line")
    if not os.path.isfile(path):
        raise UserError(f"{what} {path}: is not a regular file (a FIFO or a device?); expected a UTF-8 text file, "
                        f"one sentence per line")
    if not os.access(path, os.R_OK):
        raise UserError(f"{what} {path}: not readable (permission denied)")


def check_text_file(path: str, what: str) -> int:
    """Validate a held-out file completely before any work (``what`` names the flag): a readable regular file
    of UTF-8 text with at least one sentence (UTF-16/32, bad UTF-8 and NUL bytes are errors naming the line).
    Returns the number of sentences."""
    check_readable_file(path, what)
    sentences = sum(1 for _ in iter_shard_sentences(path, hint=""))
    if sentences == 0:
        raise CorpusError(f"{what} {path}: no sentences to score (the file is empty or blank); expected UTF-8 "
                          f"text, one tokenized sentence per line")
    return sentences
