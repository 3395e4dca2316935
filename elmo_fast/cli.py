"""``elmo-fast`` command line: one subcommand per job.

Each subcommand lives in a module that defines ``add_parser(subparsers)``; the parser it returns has
``set_defaults(func=run)`` where ``run(args) -> int``. Register new modules in ``_COMMANDS``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .errors import exit_code_for, forget_interrupts, install_signal_handlers
from .runtime import retain_freed_memory

#: subcommand modules, in the order ``--help`` lists them
_COMMANDS = ["elmo_fast.commands.embed", "elmo_fast.commands.probe", "elmo_fast.commands.demo",
             "elmo_fast.commands.train", "elmo_fast.commands.evaluate", "elmo_fast.commands.export", "elmo_fast.commands.convert"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elmo-fast",
        description="elmo-fast: a fast ELMo engine (AllenNLP-compatible embedder, biLM pretraining, benchmarks).",
        epilog="environment: ELMO_FAST_BACKEND=reference|fast|triton forces one backend for every op; "
               "ELMO_FAST_RETAIN_MEMORY=0 leaves glibc's allocator as it is (by default the commands keep "
               "freed memory for reuse: large tensors are not page-faulted in again every step, see "
               "elmo_fast.runtime).")
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
    """Run one subcommand. User errors give exit 2 and one log line; SIGINT/SIGTERM exit 130/143 after cleanup."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    retain_freed_memory()
    debug = args.debug or os.environ.get("ELMO_FAST_DEBUG", "") not in ("", "0")
    install_signal_handlers()
    try:
        return int(args.func(args) or 0)
    except BaseException as e:  # noqa: B902 - classified below; bugs keep their traceback
        code = exit_code_for(e)
        if code is None or debug:
            raise
        text = str(e) if not isinstance(e, KeyError) else f"missing key {e}"
        logging.getLogger("elmo_fast").error("%s: %s", args.command, text or type(e).__name__)
        return code
    finally:
        forget_interrupts()


if __name__ == "__main__":
    sys.exit(main())
