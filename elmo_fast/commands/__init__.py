"""``elmo-fast`` subcommands (one module each: ``add_parser(subparsers)`` and ``run(args)``)."""
from __future__ import annotations

import argparse

__all__ = ["add_precision_arg", "add_runtime_args", "add_threads_arg", "apply_threads", "apply_runtime",
           "check_device", "check_precision", "precision_context"]

PRECISION_HELP = ("arithmetic of the fast CPU path's matrix products: fp32 (default) or bf16 (bfloat16 inputs, "
                  "float32 accumulation; weights, LSTM state and outputs stay float32; faster products on CPUs with "
                  "AVX-512 BF16 or AMX, at ~1e-2 relative difference per value; float32 with one warning on CPUs "
                  "without bf16 products). bf16 needs the fast backend on "
                  "the CPU: with --backend reference/triton or --device cuda it is an error")


def add_runtime_args(p: argparse.ArgumentParser,
                     device_help: str = "'cpu', 'cuda' or 'cuda:N' (default cpu)",
                     threads_help: str | None = None) -> None:
    """The flags every model-running command shares: ``--device``, ``--backend``, ``--threads``, ``--precision``,
    ``--quiet``.

    The command's ``run`` calls :func:`apply_runtime` (or :func:`apply_threads`) first."""
    p.add_argument("--device", default="cpu", help=device_help)
    p.add_argument("--backend", choices=["reference", "fast", "triton"], default=None,
                   help="op implementation (default: chosen by device; environment variable ELMO_FAST_BACKEND)")
    add_threads_arg(p, **({"help": threads_help} if threads_help else {}))
    add_precision_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_threads_arg(p: argparse.ArgumentParser, help: str = "CPU threads (default: automatic: every core while the "
                                                             "machine is otherwise idle, fewer while other processes "
                                                             "keep cores busy, re-checked every few seconds; "
                                                             "ELMO_FAST_THREADS=N also fixes it)") -> None:
    """``--threads N``: torch's intra-op thread count for this process (see :func:`apply_threads`).

    Adding it twice to one parser is harmless (the second call does nothing)."""
    if any("--threads" in a.option_strings for a in p._actions):
        return
    p.add_argument("--threads", type=int, default=None, metavar="N", help=help)


def add_precision_arg(p: argparse.ArgumentParser, help: str = PRECISION_HELP) -> None:
    """``--precision {fp32,bf16}`` (default None: the process default, fp32); see :func:`precision_context`."""
    if any("--precision" in a.option_strings for a in p._actions):
        return
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None, help=help)


def check_precision(args: argparse.Namespace, device: str | None = None) -> None:
    """``--precision bf16`` is refused (one line naming the flags) where the ops would not run on the fast CPU
    backend (``--backend``/``ELMO_FAST_BACKEND`` reference or triton, or a CUDA ``--device``): those backends
    always compute in float32, and silently ignoring the flag would make a bf16 measurement a float32 one."""
    if getattr(args, "precision", None) != "bf16":
        return
    from ..backend import BackendError, resolve
    from ..errors import UserError
    import torch
    device = device if device is not None else (getattr(args, "device", None) or "cpu")
    try:
        names = {resolve(getattr(args, "backend", None), torch.device(device), op)
                 for op in ("token_encoder", "bilstm")}
    except (BackendError, RuntimeError, ValueError):
        return  # the backend/device flag's own check reports it
    if names != {"fast"}:
        raise UserError(f"--precision bf16: bfloat16 products exist on the fast CPU backend only; this run uses "
                        f"backend {'/'.join(sorted(names))} on device {device} (float32 only). Use --backend fast "
                        f"--device cpu, or --precision fp32")


def precision_context(args: argparse.Namespace):
    """Context in which the command's models run with ``--precision`` (models built with precision None inherit
    it; see :mod:`elmo_fast.numerics`); checks it first (:func:`check_precision`)."""
    from .. import numerics
    check_precision(args)
    return numerics.use(precision=getattr(args, "precision", None))


def check_device(device: str | None) -> None:
    """A one-line error for a ``--device`` that torch does not know or that this machine lacks (CUDA)."""
    if device is None:
        return
    from ..errors import UserError
    import torch
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device!r}: not a device; expected 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__}"
                            f"{', built without CUDA' if torch.version.cuda is None else ''}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise UserError(f"--device {device}: expected 'cpu', 'cuda' or 'cuda:N'")


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's thread count: ``--threads N`` fixes it, otherwise the automatic governor picks it
    (:func:`elmo_fast.runtime.configure_threads`, process-wide); then check ``--device`` if the command has one
    (see :func:`check_device`). ``--threads`` above :func:`elmo_fast.settings.thread_limit` is refused (torch
    crashes creating 100,000 threads), above the CPU count warned about."""
    from .. import settings
    from ..runtime import configure_threads
    threads = getattr(args, "threads", None)
    if threads is not None:
        settings.check_thread_count(threads, "--threads")
    configure_threads(threads)  # the one place the count is set: fixed, or automatic (elmo_fast.runtime)
    check_device(getattr(args, "device", None))


#: what a command's ``run`` calls first (threads and device)
apply_runtime = apply_threads
