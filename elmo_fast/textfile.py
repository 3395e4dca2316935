"""What every reader of a user's text file shares: encoding checks, the UTF-8 byte order mark, JSON files.

Input text (embed input, training corpus, held-out file, vocabulary) must be UTF-8. Other encodings that
decode as "valid" bytes are recognised before they can become tokens:

* UTF-16 and UTF-32, with a byte order mark (``FF FE``, ``FE FF``, ``FF FE 00 00``, ``00 00 FE FF``) or
  without one (the NUL pattern: ASCII text in UTF-16LE has a NUL byte after every character), are refused
  at line 1 with the encoding found and an ``iconv`` command that converts the file
  (:func:`wide_encoding`);
* a NUL byte anywhere else is refused with its line (no UTF-8 text holds one; it is a binary file, or a
  UTF-16 file whose pattern the first bytes did not show).

A UTF-8 byte order mark (``EF BB BF``, what some Windows editors write) at the start of a file is removed
with a logged note (:func:`strip_utf8_bom`); AllenNLP keeps it glued to the first token, which changes that
token's characters and hence its embedding.

JSON files (options.json, a run's config.json, model configs) are read by :func:`read_json_file`: not UTF-8,
UTF-16/32, invalid JSON and nesting too deep for the parser are one-line errors naming the file (and the
line and column where known).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

from .errors import MissingFileError, UserError

__all__ = ["UTF8_BOM", "HEAD_BYTES", "wide_encoding", "describe_wide_encoding", "strip_utf8_bom",
           "read_json_file", "MAX_JSON_DEPTH"]

logger = logging.getLogger(__name__)

UTF8_BOM = b"\xef\xbb\xbf"
#: bytes at the start of a file looked at by :func:`wide_encoding`
HEAD_BYTES = 4096
#: (byte order mark, encoding), longest first: the UTF-32LE mark begins with the UTF-16LE one
_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32LE"), (b"\x00\x00\xfe\xff", "UTF-32BE"), (b"\xff\xfe", "UTF-16LE"),
         (b"\xfe\xff", "UTF-16BE"))
#: JSON nesting beyond this is refused before parsing (Python's parser would raise RecursionError)
MAX_JSON_DEPTH = 500


def wide_encoding(head: bytes) -> tuple[str, str] | None:
    """``(encoding, evidence)`` when the first bytes of a file are UTF-16 or UTF-32 text, else None.

    Args:
        head: the file's first bytes (up to :data:`HEAD_BYTES`).

    Returns:
        e.g. ``("UTF-16LE", "byte order mark FF FE")`` or ``("UTF-16LE", "no byte order mark; NUL bytes at
        every second position")``; None for text that may be UTF-8.
    """
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name, "byte order mark " + " ".join(f"{b:02X}" for b in bom)
    n4 = len(head) // 4 * 4
    if n4 >= 4:
        groups = [head[i:i + 4] for i in range(0, n4, 4)]
        le = sum(1 for g in groups if g[0] != 0 and g[1:] == b"\x00\x00\x00")
        be = sum(1 for g in groups if g[3] != 0 and g[:3] == b"\x00\x00\x00")
        if le * 2 >= len(groups) and le >= 1:
            return "UTF-32LE", "no byte order mark; three NUL bytes after every character"
        if be * 2 >= len(groups) and be >= 1:
            return "UTF-32BE", "no byte order mark; three NUL bytes before every character"
    n2 = len(head) // 2 * 2
    if n2 >= 2:
        pairs = n2 // 2
        odd = sum(1 for i in range(0, n2, 2) if head[i] != 0 and head[i + 1] == 0)
        even = sum(1 for i in range(0, n2, 2) if head[i] == 0 and head[i + 1] != 0)
        if odd * 2 >= pairs:
            return "UTF-16LE", "no byte order mark; a NUL byte after every character"
        if even * 2 >= pairs:
            return "UTF-16BE", "no byte order mark; a NUL byte before every character"
    return None


def describe_wide_encoding(path: str, head: bytes) -> str | None:
    """The one-line complaint about a UTF-16/32 file (``path:1: ...``), or None when it may be UTF-8."""
    found = wide_encoding(head)
    if found is None:
        return None
    name, evidence = found
    return (f"{path}:1: the file is {name} text ({evidence}); expected UTF-8. Convert it first, e.g. "
            f"iconv -f {name if 'byte order mark' not in evidence else name[:6]} -t UTF-8 FILE > FILE.utf8")


_noted: set[str] = set()


def strip_utf8_bom(content: bytes, path: str, note: bool = True) -> bytes:
    """``content`` (the first line of ``path``) without a leading UTF-8 byte order mark; logs a note once per
    file and process when one was removed."""
    if not content.startswith(UTF8_BOM):
        return content
    if note and path not in _noted:
        _noted.add(path)
        logger.info("%s: starts with a UTF-8 byte order mark (EF BB BF); it is ignored, not part of the first "
                    "token", path)
    return content[len(UTF8_BOM):]


def _json_depth_exceeds(text: str, limit: int) -> int | None:
    """The 1-based line where bracket nesting (outside strings) first exceeds ``limit``, or None."""
    depth, line, in_string, escaped = 0, 1, False, False
    for ch in text:
        if ch == "\n":
            line += 1
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return line
        elif ch in "]}":
            depth -= 1
    return None


def read_json_file(path: str | os.PathLike, what: str = "JSON file", error: type[UserError] = UserError) -> Any:
    """Parse a UTF-8 JSON file; every failure is one ``error`` naming the file (line and column where known).

    A UTF-8 byte order mark is ignored (with a note). Refused: a missing file (:class:`MissingFileError`), a
    directory or special file, UTF-16/32 text, bytes that are not UTF-8, invalid JSON, nesting deeper than
    :data:`MAX_JSON_DEPTH`.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(f"{what} not found: {path}")
    if not os.path.isfile(path):
        raise error(f"{path}: is {'a directory' if os.path.isdir(path) else 'not a regular file'}; expected a "
                    f"{what}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror}); expected a {what}") from None
    wide = describe_wide_encoding(path, data[:HEAD_BYTES])
    if wide is not None:
        raise error(wide)
    data = strip_utf8_bom(data, path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise error(f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x} at line {line}, column {column}); "
                    f"expected a UTF-8 {what}") from None
    deep = _json_depth_exceeds(text, MAX_JSON_DEPTH)
    if deep is not None:
        raise error(f"{path}:{deep}: nested more than {MAX_JSON_DEPTH} levels deep; expected a {what}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None
    except RecursionError:  # a parser with a smaller stack than MAX_JSON_DEPTH assumes
        raise error(f"{path}: nested too deeply to parse; expected a {what}") from None
