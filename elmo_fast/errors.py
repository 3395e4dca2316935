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
from typing import Any

__all__ = ["UserError", "Interrupted", "install_signal_handlers", "exit_code_for"]


class UserError(ValueError):
    """A problem with the user's input, files or flags (CLI exit status 2, one line, no traceback)."""


class Interrupted(BaseException):
    """The process received SIGINT or SIGTERM; raised from the signal handler so ``finally`` blocks run.

    Derives from ``BaseException`` (like ``KeyboardInterrupt``) so that ``except Exception`` does not swallow it.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """Turn SIGTERM and SIGINT into :class:`Interrupted` in the main thread (used by the CLI)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, _raise_interrupted)
        except ValueError:  # not the main thread: leave the defaults
            pass


def exit_code_for(exc: BaseException) -> int | None:
    """The CLI exit status for an exception that is reported in one line, or None for a bug (traceback)."""
    if isinstance(exc, Interrupted):
        return 128 + exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, (ValueError, TypeError, OSError, KeyError, RuntimeError)):
        return 2
    return None
