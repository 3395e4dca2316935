"""The project's error vocabulary and the CLI's way of reporting it.

Every user-facing failure is a :class:`UserError` (or one of the older ``ValueError`` subclasses:
``OptionsError``, ``WeightFileError``, ``InputFileError``, ``CorpusError``). The ``elmo-fast`` command turns
any of them into exit status 2 and **one** log line, with no traceback; set ``--debug`` (or the environment
variable ``ELMO_FAST_DEBUG=1``) to get the traceback too. ``SIGTERM`` and ``SIGINT`` become
:class:`Interrupted` (exit 143 / 130, one line), after the job's ``finally`` blocks have cleaned up.

A message names what was wrong and where: the file (and line), the dataset, the field or the flag, what was
expected and what was found.
"""
from __future__ import annotations

import signal
import sys
from typing import Any

__all__ = ["UserError", "Interrupted", "install_signal_handlers", "exit_code_for", "raise_if_interrupted"]


class UserError(ValueError):
    """A problem with the user's input, files or flags (CLI exit status 2, one line, no traceback)."""


class Interrupted(BaseException):
    """The process received SIGINT or SIGTERM; raised from the signal handler so ``finally`` blocks run.

    Derives from ``BaseException`` (like ``KeyboardInterrupt``) so that ``except Exception`` does not swallow it.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")


#: signals received since :func:`install_signal_handlers` (the first one is the one reported)
_PENDING: list[int] = []


def _raise_interrupted(signum: int, frame: Any) -> None:
    _PENDING.append(int(signum))
    raise Interrupted(signum)


def raise_if_interrupted() -> None:
    """Raise :class:`Interrupted` if a signal arrived whose exception was swallowed.

    Python runs a signal handler between two bytecodes of whatever is executing; when that is a weakref callback,
    a ``__del__`` or another context whose exceptions Python discards ("Exception ignored in ..."), the
    :class:`Interrupted` raised there is lost and the job would run on to the end. Long loops call this at safe
    points (each embedded batch, each merged chunk), so a swallowed signal still stops the job there.
    """
    if _PENDING:
        raise Interrupted(_PENDING[0])


def forget_interrupts() -> None:
    """Drop recorded signals (the CLI's run is over; library calls in the same process start clean)."""
    _PENDING.clear()


def _unraisable(args: Any) -> None:
    if isinstance(args.exc_value, Interrupted):
        return  # recorded in _PENDING and raised again at the next raise_if_interrupted(): no traceback here
    _previous_unraisable(args)


_previous_unraisable = sys.unraisablehook


def install_signal_handlers() -> None:
    """Turn SIGTERM and SIGINT into :class:`Interrupted` in the main thread (used by the CLI), and keep a
    swallowed one for :func:`raise_if_interrupted` instead of printing it as an ignored exception."""
    forget_interrupts()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, _raise_interrupted)
        except ValueError:  # not the main thread: leave the defaults
            pass
    if sys.unraisablehook is not _unraisable:
        global _previous_unraisable
        _previous_unraisable = sys.unraisablehook
        sys.unraisablehook = _unraisable


def exit_code_for(exc: BaseException) -> int | None:
    """The CLI exit status for an exception that is reported in one line, or None for a bug (traceback)."""
    if isinstance(exc, Interrupted):
        return 128 + exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, (ValueError, TypeError, OSError, KeyError, RuntimeError)):
        return 2
    return None
