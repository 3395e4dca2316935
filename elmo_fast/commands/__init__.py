"""``elmo-fast`` subcommands (one module each: ``add_parser(subparsers)`` and ``run(args)``)."""
from __future__ import annotations

import argparse

__all__ = ["add_runtime_args"]


def add_runtime_args(p: argparse.ArgumentParser,
                     device_help: str = "'cpu', 'cuda' or 'cuda:N' (default cpu)") -> None:
    """The flags every model-running command shares: ``--device``, ``--backend``, ``--quiet``."""
    p.add_argument("--device", default="cpu", help=device_help)
    p.add_argument("--backend", choices=["reference", "fast", "triton"], default=None,
                   help="op implementation (default: chosen by device; environment variable ELMO_FAST_BACKEND)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
