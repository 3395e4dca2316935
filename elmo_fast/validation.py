"""Argument checks shared by the library and the commands, each written once.

* :func:`positive_int`: an API argument that must be a positive integer (``batch_size``, ``shards``, ...):
  ``TypeError`` for a non-integer (``bool`` included), ``ValueError`` below 1.
* :func:`check_positive_flags`: command-line flags that must be positive integers: a one-line
  :class:`~elmo_fast.errors.UserError` naming the flag.

Character ids are checked by :func:`elmo_fast.chars.check_char_ids`; environment variables (and torchrun's) by
:mod:`elmo_fast.settings`; thread counts by :func:`elmo_fast.settings.check_thread_count`.
"""
from __future__ import annotations

import numbers
from typing import Any

from .errors import UserError

__all__ = ["positive_int", "check_positive_flags"]


def positive_int(name: str, value: Any) -> int:
    """``value`` as an ``int`` if it is an integer >= 1 (Python or numpy integer, not ``bool``).

    Raises:
        TypeError: not an integer, naming ``name``. ValueError: below 1, naming ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a positive integer, found {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive integer, found {value}")
    return int(value)


def check_positive_flags(*flags: tuple[str, int | None]) -> None:
    """Each ``(flag, value)`` (argparse already made it an ``int``; None = not given) must be >= 1.

    Raises:
        UserError: ``"--flag: expected a positive integer, found 0"`` for the first one that is not.
    """
    for flag, value in flags:
        if value is not None and value < 1:
            raise UserError(f"{flag}: expected a positive integer, found {value}")
