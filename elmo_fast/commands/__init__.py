"""``elmo-fast`` subcommands (one module each: ``add_parser(subparsers)`` and ``run(args)``)."""
from __future__ import annotations

import argparse

__all__ = ["add_runtime_args", "add_threads_arg", "apply_threads"]


def add_runtime_args(p: argparse.ArgumentParser,
                     device_help: str = "'cpu', 'cuda' or 'cuda:N' (default cpu)") -> None:
    """The flags every model-running command shares: ``--device``, ``--backend``, ``--quiet``."""
    p.add_argument("--device", default="cpu", help=device_help)
    p.add_argument("--backend", choices=["reference", "fast", "triton"], default=None,
                   help="op implementation (default: chosen by device; environment variable ELMO_FAST_BACKEND)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_threads_arg(p: argparse.ArgumentParser, help: str = "CPU threads (torch.set_num_threads; default: "
                                                             "torch's choice)") -> None:
    """``--threads N``: torch's intra-op thread count for this process (see :func:`apply_threads`)."""
    p.add_argument("--threads", type=int, default=None, help=help)


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's thread count from ``--threads`` (process-wide), if given."""
    if getattr(args, "threads", None):
        import torch
        torch.set_num_threads(args.threads)
