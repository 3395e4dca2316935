"""``elmo-fast`` command line: one subcommand per job.

Each subcommand lives in a module that defines ``add_parser(subparsers)``; the parser it returns has
``set_defaults(func=run)`` where ``run(args) -> int``. Register new modules in ``_COMMANDS``.

Errors (see :mod:`elmo_fast.errors`): a :class:`~elmo_fast.errors.UserError` is one log line and exit 2; any
other exception is an internal error: one line asking to report it with the path of a crash report holding
the traceback (or the traceback itself where no report can be written), exit 70.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import settings
from .errors import (INTERNAL_ERROR_EXIT, exit_code_for, forget_interrupts, install_signal_handlers,
                     write_crash_report)
from .progress import logging_above_bars
from .runtime import retain_freed_memory

#: subcommand modules, in the order ``--help`` lists them
_COMMANDS = ["elmo_fast.commands.embed", "elmo_fast.commands.probe", "elmo_fast.commands.demo",
             "elmo_fast.commands.train", "elmo_fast.commands.evaluate", "elmo_fast.commands.export",
             "elmo_fast.commands.convert"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elmo-fast",
        description="elmo-fast: a fast ELMo engine (AllenNLP-compatible embedder, biLM pretraining, benchmarks).",
        epilog="environment: ELMO_FAST_BACKEND=reference|fast|triton forces one backend for every op; "
               "ELMO_FAST_RETAIN_MEMORY=0 leaves glibc's allocator as it is (by default the commands keep "
               "freed memory for reuse: large tensors are not page-faulted in again every step, see "
               "elmo_fast.runtime); ELMO_FAST_THREADS=N fixes the thread count; every variable is listed in "
               "elmo_fast.settings and the README. exit status: 0 done, 2 a user error (one line), 70 an "
               "internal error (a crash report to send us), 130/143 interrupted.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging verbosity (default INFO)")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line (also ELMO_FAST_DEBUG=1)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def _version() -> str:
    from . import __version__
    return __version__


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. User errors give exit 2 and one log line; internal errors exit 70 with a crash
    report (see the module docstring); SIGINT/SIGTERM exit 130/143 after cleanup."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("elmo_fast")
    debug = args.debug
    install_signal_handlers()
    try:
        debug = debug or settings.debug()
        settings.check_all()  # every environment variable, before any work
        retain_freed_memory()
        with logging_above_bars():  # log lines above the progress bars, never inside one
            return int(args.func(args) or 0)
    except BaseException as e:  # noqa: B902 - classified below; bugs keep their traceback
        code = exit_code_for(e)
        if debug or isinstance(e, SystemExit):
            raise
        if code is not None:
            log.error("%s: %s", args.command, str(e) or type(e).__name__)
            return code
        _report_internal_error(e, args.command, argv)
        return INTERNAL_ERROR_EXIT
    finally:
        forget_interrupts()


def _report_internal_error(exc: BaseException, command: str, argv: list[str] | None) -> None:
    """One line asking to report the bug, with the crash report's path; the traceback where none is written."""
    log = logging.getLogger("elmo_fast")
    summary = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    try:
        path = write_crash_report(exc, ["elmo-fast"] + list(sys.argv[1:] if argv is None else argv))
    except OSError as report_error:
        log.error("%s: internal error (a bug in elmo-fast, not in your input): %s. Please report it with the "
                  "traceback below (no crash report could be written: %s)", command, summary, report_error,
                  exc_info=exc)
        return
    log.error("%s: internal error (a bug in elmo-fast, not in your input): %s. Please report it with the crash "
              "report %s (rerun with --debug to see the traceback here)", command, summary, path)


if __name__ == "__main__":
    sys.exit(main())
