"""Atomic file output: write to a temporary name beside the target, rename when complete.

An interrupted write never leaves a half-written file under the final name (a previous complete file stays
in place), and the temporary file is removed on failure.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

__all__ = ["atomic_path", "write_text", "write_lines", "write_json"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on normal exit rename it to ``path``, else delete it."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def write_lines(path: str | os.PathLike, lines: Iterable[str]) -> None:
    """Write one line per item (``\\n``-terminated, UTF-8) atomically, streaming ``lines``."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """Write ``payload`` as indented, key-sorted JSON atomically."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
