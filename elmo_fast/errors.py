"""The project's error vocabulary and the CLI's way of reporting it.

Two kinds of failure, never confused:

* **User errors** -- :class:`UserError` and its subclasses only (:class:`MissingFileError`,
  ``OptionsError``, ``WeightFileError``, ``InputFileError``, ``CorpusError``, ...). They are raised where a
  file is opened or parsed or a flag/variable is checked, and their message names what was wrong and where:
  the file (and line), the dataset, the field, the flag or the environment variable, what was expected and
  what was found. The ``elmo-fast`` command turns them into exit status 2 and **one** log line.
* **Internal errors** -- every other exception (``TypeError``, ``KeyError``, ``RuntimeError``, a bare
  ``ValueError`` or ``OSError``, ...) is a bug of elmo-fast (or of a library under it), however its message
  reads. The CLI writes the traceback to a crash report (:func:`write_crash_report`, under
  ``ELMO_FAST_CRASH_DIR``), logs one line asking to report it with the report's path, and exits with
  :data:`INTERNAL_ERROR_EXIT` (70, ``EX_SOFTWARE``); where no report can be written it prints the traceback.

``--debug`` (or ``ELMO_FAST_DEBUG=1``) re-raises either kind with its traceback. ``SIGTERM`` and ``SIGINT``
become :class:`Interrupted` (exit 143 / 130, one line), after the job's ``finally`` blocks have cleaned up.
"""
from __future__ import annotations

import datetime
import os
import platform
import signal
import sys
import traceback
from typing import Any, Sequence

__all__ = ["UserError", "MissingFileError", "Interrupted", "install_signal_handlers", "exit_code_for",
           "raise_if_interrupted", "INTERNAL_ERROR_EXIT", "USER_ERROR_EXIT", "write_crash_report"]

#: exit status of a user error (one line)
USER_ERROR_EXIT = 2
#: exit status of an internal error (a bug: crash report or traceback); sysexits.h's EX_SOFTWARE
INTERNAL_ERROR_EXIT = 70


class UserError(ValueError):
    """A problem with the user's input, files, flags or environment (CLI exit status 2, one line, no traceback).

    The message names the file (line, dataset, field), flag or variable, what was expected and what was found.
    """


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (also a ``FileNotFoundError`` for library callers)."""

    def __str__(self) -> str:  # OSError's str() would prefix "[Errno None]" for a one-argument OSError
        return str(self.args[0]) if self.args else ""


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
    """The CLI exit status of an exception reported in one line, or None for an internal error (a bug).

    Only the project's own :class:`UserError` classes are user errors; a ``TypeError``, ``KeyError``,
    ``RuntimeError``, a bare ``ValueError`` or ``OSError`` is not, whatever its message says.
    """
    if isinstance(exc, Interrupted):
        return 128 + exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, UserError):
        return USER_ERROR_EXIT
    return None


def crash_dir() -> str:
    """Where crash reports go: ``ELMO_FAST_CRASH_DIR``, else ``$XDG_CACHE_HOME/elmo-fast/crash-reports``."""
    from . import settings
    return settings.crash_dir()


def write_crash_report(exc: BaseException, argv: Sequence[str] | None = None, folder: str | None = None) -> str:
    """Write ``exc``'s traceback, the command line and the versions to a new file; return its path.

    Raises:
        OSError: the report could not be written (the caller prints the traceback instead).
    """
    folder = folder or crash_dir()
    os.makedirs(folder, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(folder, f"crash-{stamp}-{os.getpid()}.txt")
    try:
        from . import __version__ as version
    except ImportError:  # pragma: no cover - a broken installation
        version = "unknown"
    torch_version = getattr(sys.modules.get("torch"), "__version__", "not imported")
    lines = [f"elmo-fast {version} internal error report",
             f"time: {datetime.datetime.now().isoformat(timespec='seconds')}",
             f"command: {' '.join(argv if argv is not None else sys.argv)}",
             f"python: {platform.python_version()} ({sys.executable}); torch: {torch_version}; "
             f"platform: {platform.platform()}",
             "",
             "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
        f.write("\n".join(lines))
    return path
