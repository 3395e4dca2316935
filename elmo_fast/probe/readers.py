"""The probes' data: CoNLL-U and WiC readers, and where the shared data sets are found.

Every malformed line is a :class:`~elmo_fast.errors.UserError` (:class:`ConlluError`, :class:`WicError`) naming the
file and the 1-based line.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import MissingFileError, UserError

__all__ = ["ConlluError", "WicError", "TaggedSentence", "WicPair", "read_conllu", "read_wic", "find_shared_data"]

logger = logging.getLogger(__name__)


class ConlluError(UserError):
    """A CoNLL-U file is malformed (the message names the file and the 1-based line)."""


class WicError(UserError):
    """A WiC data or gold file is malformed (the message names the file and the 1-based line)."""


# ---------------------------------------------------------------------------------------------- data
def find_shared_data(name: str, explicit: str | os.PathLike | None = None) -> Path:
    """Locate ``shared/data/<name>``.

    Order: ``explicit`` (a flag) if given; ``$ELMO_FAST_SHARED/data/<name>``; ``../shared/data/<name>`` next to
    the repository this package lives in; ``../shared/data/<name>`` relative to the working directory.

    Raises:
        FileNotFoundError: listing every place that was tried.
    """
    if explicit is not None:
        path = Path(explicit)
        if not path.is_dir():
            raise MissingFileError(f"data directory not found: {path}")
        return path
    tried = []
    from .. import settings
    env = settings.shared_dir()
    if env:
        tried.append(Path(env) / "data" / name)
    repo = Path(__file__).resolve().parents[1]
    tried.append(repo.parent / "shared" / "data" / name)
    tried.append(Path.cwd().parent / "shared" / "data" / name)
    for path in tried:
        if path.is_dir():
            return path
    raise MissingFileError(f"could not find the '{name}' data; tried {', '.join(str(p) for p in tried)} "
                            f"(give the files or directory with a flag, or set ELMO_FAST_SHARED)")


@dataclass(frozen=True)
class TaggedSentence:
    """One CoNLL-U sentence: syntactic-word forms and their UPOS tags; ``line`` is where it starts (1-based)."""

    forms: tuple[str, ...]
    tags: tuple[str, ...]
    line: int


def read_conllu(path: str | os.PathLike) -> list[TaggedSentence]:
    """Read the syntactic words (FORM) and UPOS tags of a CoNLL-U file.

    Comment lines (``#``) are skipped, multiword-token ranges (``3-4``) and empty nodes (``8.1``) are skipped,
    sentences end at a blank line (or at the end of the file).

    Raises:
        ConlluError: a line without 10 tab-separated columns, a word ID that is not the next integer, an
            empty FORM or UPOS, undecodable bytes; the message names the file and line.
        FileNotFoundError: the file does not exist.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"CoNLL-U file not found: {path}")
    sentences: list[TaggedSentence] = []
    forms: list[str] = []
    tags: list[str] = []
    start = 0
    with open(path, "rb") as f:
        raw_lines = f.read().split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    for lineno, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            raise ConlluError(f"{path}: line {lineno}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        if line.strip() == "":
            if forms:
                sentences.append(TaggedSentence(tuple(forms), tuple(tags), start))
            forms, tags = [], []
            continue
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise ConlluError(f"{path}: line {lineno}: expected 10 tab-separated columns "
                              f"(ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC), found {len(cols)}: "
                              f"{line[:80]!r}")
        word_id, form, upos = cols[0], cols[1], cols[3]
        if "-" in word_id or "." in word_id:
            a, _, b = word_id.replace(".", "-").partition("-")
            if not (a.isdigit() and b.isdigit()):
                raise ConlluError(f"{path}: line {lineno}: column ID expected an integer, a range 'N-M' or an "
                                  f"empty node 'N.K', found {word_id!r}")
            continue
        if not word_id.isdigit() or int(word_id) != len(forms) + 1:
            raise ConlluError(f"{path}: line {lineno}: column ID expected {len(forms) + 1} (the next word of the "
                              f"sentence), found {word_id!r}")
        if form == "" or upos in ("", "_"):
            raise ConlluError(f"{path}: line {lineno}: expected a non-empty FORM and UPOS, found FORM={form!r} "
                              f"UPOS={upos!r}")
        if not forms:
            start = lineno
        forms.append(form)
        tags.append(upos)
    if forms:
        sentences.append(TaggedSentence(tuple(forms), tuple(tags), start))
    return sentences


@dataclass(frozen=True)
class WicPair:
    """One WiC example: the target, its part of speech, its token index in each context, and the gold label."""

    word: str
    pos: str
    index1: int
    index2: int
    context1: tuple[str, ...]
    context2: tuple[str, ...]
    label: bool


def read_wic(data_path: str | os.PathLike, gold_path: str | os.PathLike) -> list[WicPair]:
    """Read a WiC ``*.data.txt`` (5 tab-separated fields) and its ``*.gold.txt`` (``T``/``F`` per line).

    Raises:
        WicError: wrong field count, bad index field, an index outside its context, a gold line that is not
            T or F, or different line counts; the message names the file and line.
    """
    data_path, gold_path = os.fspath(data_path), os.fspath(gold_path)
    for p in (data_path, gold_path):
        if not os.path.isfile(p):
            raise MissingFileError(f"WiC file not found: {p}")
    with open(data_path, encoding="utf-8") as f:
        data_lines = f.read().splitlines()
    with open(gold_path, encoding="utf-8") as f:
        gold_lines = f.read().splitlines()
    if len(data_lines) != len(gold_lines):
        def n_lines(n: int) -> str:
            return f"{n} line" if n == 1 else f"{n} lines"
        raise WicError(f"{data_path} has {n_lines(len(data_lines))} but {gold_path} has {n_lines(len(gold_lines))}; "
                       f"expected one gold label per example")
    pairs = []
    for lineno, (line, gold) in enumerate(zip(data_lines, gold_lines), start=1):
        fields = line.split("\t")
        if len(fields) != 5:
            raise WicError(f"{data_path}: line {lineno}: expected 5 tab-separated fields (word, PoS, i1-i2, "
                           f"context1, context2), found {len(fields)}")
        word, pos, idx, c1, c2 = fields
        a, sep, b = idx.partition("-")
        if not (sep and a.isdigit() and b.isdigit()):
            raise WicError(f"{data_path}: line {lineno}: field 3 expected 'i1-i2' (two token indices), found {idx!r}")
        t1, t2 = tuple(c1.split()), tuple(c2.split())
        i1, i2 = int(a), int(b)
        if i1 >= len(t1) or i2 >= len(t2):
            raise WicError(f"{data_path}: line {lineno}: index {idx} outside the contexts "
                           f"({len(t1)} and {len(t2)} tokens)")
        if gold.strip() not in ("T", "F"):
            raise WicError(f"{gold_path}: line {lineno}: expected 'T' or 'F', found {gold!r}")
        pairs.append(WicPair(word, pos, i1, i2, t1, t2, gold.strip() == "T"))
    return pairs
