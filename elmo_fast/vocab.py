"""Vocabulary files (bilm-tf format): one token per line, read as bilm-tf reads them, written atomically.

The one home of vocabulary I/O: :mod:`elmo_fast.data` (training vocabularies) and the public
``elmo_fast.read_vocab`` / ``write_vocab`` both use it. It imports only leaves (errors, text-file checks, atomic
writes), so any layer may import it.
"""
from __future__ import annotations

import os
from typing import Iterable

from .atomic import write_lines
from .errors import MissingFileError, UserError
from .textfile import HEAD_BYTES, describe_wide_encoding, strip_utf8_bom

__all__ = ["MAXTERMID", "read_vocab_file", "read_vocab", "write_vocab"]

#: bilm-tf's end-of-vocabulary marker line: skipped, takes no id
MAXTERMID = "!!!MAXTERMID"


def read_vocab_file(path: str | os.PathLike) -> list[str]:
    """Read a bilm-tf vocab file as bilm-tf's ``Vocabulary`` does: one token per line, surrounding whitespace
    stripped, ``!!!MAXTERMID`` lines skipped (they take no id); a token's id is its position among the
    remaining lines. ``<S>``, ``</S>`` and ``<UNK>`` may stand on any line (:class:`elmo_fast.data.Vocabulary`
    finds them by name). Errors name the file and line.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(f"vocabulary file not found: {path}")
    if not os.path.isfile(path):
        kind = "a directory" if os.path.isdir(path) else "not a regular file"
        raise UserError(f"{path}: is {kind}; expected a vocabulary file (one token per line)")
    tokens: list[str] = []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror}); expected a vocabulary file") from None
    with f:
        wide = describe_wide_encoding(path, f.read(HEAD_BYTES))
        if wide:
            raise UserError(wide)
        f.seek(0)
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1:
                raw = strip_utf8_bom(raw, path)
            if 0 in raw:
                raise UserError(f"{path}:{lineno}: contains a NUL byte; expected a UTF-8 vocabulary file, one token "
                                f"per line")
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start}); expected a "
                                f"UTF-8 vocabulary file, one token per line") from None
            if line == MAXTERMID:
                continue
            tokens.append(line)
    if not tokens:
        raise UserError(f"{path}: empty vocabulary file; expected one token per line (bilm-tf format)")
    return tokens


#: the public name (``elmo_fast.read_vocab``): the same reader
read_vocab = read_vocab_file


def write_vocab(path: str | os.PathLike, tokens: Iterable[str]) -> None:
    """Write a vocab file (one token per line), atomically."""
    write_lines(path, tokens)
