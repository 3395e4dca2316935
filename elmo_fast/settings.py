"""Every environment variable elmo-fast reads, parsed and validated in one place.

Each variable is a :class:`Setting` in :data:`SETTINGS` (name, meaning, default, valid values, parser); code
reads it through :func:`get` (or the named helpers below), never through ``os.environ``. A value that does
not parse is a :class:`SettingsError` naming the variable, what it expects and what it found. The values are
read from the environment at each call (cheap), so a test or a caller that changes ``os.environ`` is seen.
The CLI calls :func:`check_all` before a command runs, so a bad variable stops it before any work.

torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` are validated together by :func:`distributed`: a
``RANK`` or ``LOCAL_RANK`` left over from an earlier torchrun in a one-process run (``WORLD_SIZE`` unset or 1)
is ignored with a warning (the process is rank 0), never a reason to skip rank 0's work.

Thread counts (``--threads``, ``ELMO_FAST_THREADS``) are bounded by :func:`check_thread_count`: above the
CPU count is a warning (oversubscription only slows the job), above :data:`THREADS_PER_CPU_MAX` x the CPU
count an error (torch crashes creating 100,000 threads).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

from .errors import UserError

__all__ = ["Setting", "SETTINGS", "SettingsError", "get", "raw", "check_all", "threads", "check_thread_count",
           "thread_limit", "debug", "backend", "retain_memory", "onednn", "native", "native_cache", "crash_dir",
           "shared_dir", "triton_input_mode", "triton_lstm", "triton_matmul", "triton_tiles", "cuda_graphs",
           "Distributed", "distributed", "markdown_table", "THREADS_PER_CPU_MAX", "TRITON_INPUT_MODES"]

logger = logging.getLogger(__name__)

#: thread counts above this many per CPU are refused (see :func:`check_thread_count`)
THREADS_PER_CPU_MAX = 4
#: the Triton kernels' matmul input modes (``ELMO_FAST_TRITON_PRECISION``; ``fp32`` is an alias of ``ieee``), what
#: :mod:`elmo_fast.kernels.common` calls its input mode. Not the CPU path's ``precision`` (:mod:`elmo_fast.numerics`)
TRITON_INPUT_MODES = ("tf32x3", "ieee", "fp32", "tf32", "bf16")


class SettingsError(UserError):
    """An environment variable (or a thread-count flag) has a value that cannot be used."""


@dataclass(frozen=True)
class Setting:
    """One environment variable: ``parse(text)`` returns its value or raises ``ValueError(expected)``."""

    name: str
    meaning: str
    default: str
    valid: str
    parse: Callable[[str], Any]
    default_value: Any = None


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1/0 (also true/false, yes/no, on/off)")


def _choice(*names: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in names:
            raise ValueError(f"expected one of {', '.join(names)}")
        return value
    return parse


def _path(text: str) -> str:
    value = text.strip()
    if "\x00" in value:
        raise ValueError("expected a path (no NUL byte)")
    return os.path.expanduser(value)


def _url(text: str) -> str:
    value = text.strip()
    if not value.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return value


def _threads(text: str) -> int | None:
    value = text.strip().lower()
    if value == "auto":
        return None
    try:
        n = int(value, 10)
    except ValueError:
        raise ValueError("expected a positive integer or 'auto'") from None
    if n < 1:
        raise ValueError("expected a positive integer or 'auto'")
    return n


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            n = int(text.strip(), 10)
        except ValueError:
            raise ValueError(f"expected an integer >= {low}") from None
        if n < low:
            raise ValueError(f"expected an integer >= {low}")
        return n
    return parse


def _default_cache() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                        "elmo-fast")


_LIST = [
    Setting("ELMO_FAST_THREADS", "CPU threads of a command when --threads is not given", "auto",
            "a positive integer (at most 4 x the CPUs) or auto", _threads),
    Setting("ELMO_FAST_BACKEND", "op implementation for every op when no --backend/backend= is given",
            "by device", "reference, fast, triton", _choice("reference", "fast", "triton")),
    Setting("ELMO_FAST_DEBUG", "show the traceback of every error (as --debug)", "0", "1/0", _bool, False),
    Setting("ELMO_FAST_RETAIN_MEMORY", "keep freed memory for reuse (glibc mallopt, elmo_fast.runtime)", "1",
            "1/0", _bool, True),
    Setting("ELMO_FAST_ONEDNN", "oneDNN-packed products on the fast CPU path (0: allennlp order)", "1", "1/0",
            _bool, True),
    Setting("ELMO_FAST_NATIVE", "the compiled C kernels of the fast CPU path", "1", "1/0", _bool, True),
    Setting("ELMO_FAST_NATIVE_ISA", "instruction-set level the C kernels are built for (all give the same bits)",
            "the best this CPU runs", "baseline, v3, v4 (x86-64), native", _choice("baseline", "v3", "v4", "native")),
    Setting("ELMO_FAST_NATIVE_CACHE", "where the C kernels are compiled", "~/.cache/elmo-fast/native",
            "a folder", _path),
    Setting("ELMO_FAST_CACHE", "where downloaded models (URLs, public model names) are kept",
            "the user's cache folder/elmo-fast", "a folder", _path),
    Setting("ELMO_FAST_OFFLINE", "never touch the network: URLs and model names only from the cache", "0", "1/0",
            _bool, False),
    Setting("ELMO_FAST_MODELS_URL", "base URL of the public models (a mirror)", "AllenNLP's S3 bucket", "a URL",
            _url),
    Setting("ELMO_FAST_CRASH_DIR", "where internal-error reports are written", "~/.cache/elmo-fast/crash-reports",
            "a folder", _path),
    Setting("ELMO_FAST_SHARED", "the shared data folder (probe data, test fixtures)", "../shared", "a folder",
            _path),
    Setting("ELMO_FAST_TRITON_PRECISION", "matmul input precision of the Triton kernels", "tf32x3",
            ", ".join(TRITON_INPUT_MODES), _choice(*TRITON_INPUT_MODES), "tf32x3"),
    Setting("ELMO_FAST_TRITON_LSTM", "LSTM kernel of the Triton backend", "auto", "auto, step, persistent",
            _choice("auto", "step", "persistent"), "auto"),
    Setting("ELMO_FAST_TRITON_MATMUL", "plain fp32 matmuls of the Triton backend", "cublas", "cublas, triton",
            _choice("cublas", "triton"), "cublas"),
    Setting("ELMO_FAST_TRITON_TILES", "tile sizes under the Triton interpreter", "auto", "auto, gpu",
            _choice("auto", "gpu"), "auto"),
    Setting("ELMO_FAST_CUDA_GRAPHS", "replay repeated Triton launch loops from CUDA graphs", "1", "1 or 0",
            _choice("1", "0"), "1"),
    Setting("ELMO_FAST_COMPILE_CACHE", "cache of the Triton compile check", "~/.cache/elmo-fast/compile-check",
            "a folder", _path),
    Setting("WORLD_SIZE", "torchrun: number of processes", "1", "an integer >= 1", _int_at_least(1), 1),
    Setting("RANK", "torchrun: this process's rank", "0", "0 <= RANK < WORLD_SIZE", _int_at_least(0), 0),
    Setting("LOCAL_RANK", "torchrun: this process's rank on its machine (its GPU)", "0", "an integer >= 0",
            _int_at_least(0), 0),
]
#: every variable, by name
SETTINGS: dict[str, Setting] = {s.name: s for s in _LIST}


def raw(name: str) -> str | None:
    """The variable's text, or None when it is unset or blank (blank counts as unset)."""
    if name not in SETTINGS:
        raise KeyError(f"{name}: not a setting of elmo_fast.settings")
    value = os.environ.get(name)
    return value if value is not None and value.strip() else None


def get(name: str) -> Any:
    """The parsed value of variable ``name`` (its default when unset or blank).

    Raises:
        SettingsError: naming the variable, the valid values and the value found.
    """
    setting = SETTINGS[name] if name in SETTINGS else None
    text = raw(name)
    if setting is None or text is None:
        return setting.default_value if setting is not None else None
    try:
        return setting.parse(text)
    except ValueError as e:
        raise SettingsError(f"environment variable {name}: {e}, found {text!r}") from None


def check_all() -> None:
    """Parse every variable that is set (and torchrun's three together); the first bad one raises."""
    for name in SETTINGS:
        get(name)
    distributed()
    n = threads()
    if n is not None:
        check_thread_count(n, "ELMO_FAST_THREADS")


# ---------------------------------------------------------------------------------------------- helpers
def debug() -> bool:
    return bool(get("ELMO_FAST_DEBUG"))


def backend() -> str | None:
    return get("ELMO_FAST_BACKEND")


def retain_memory() -> bool:
    return bool(get("ELMO_FAST_RETAIN_MEMORY"))


def onednn() -> bool:
    return bool(get("ELMO_FAST_ONEDNN"))


def native() -> bool:
    return bool(get("ELMO_FAST_NATIVE"))


def native_cache() -> str:
    return get("ELMO_FAST_NATIVE_CACHE") or os.path.join(_default_cache(), "native")


def crash_dir() -> str:
    return get("ELMO_FAST_CRASH_DIR") or os.path.join(_default_cache(), "crash-reports")


def shared_dir() -> str | None:
    return get("ELMO_FAST_SHARED")


def triton_input_mode() -> str:
    """``ELMO_FAST_TRITON_PRECISION``: one of :data:`TRITON_INPUT_MODES` (default ``tf32x3``)."""
    return str(get("ELMO_FAST_TRITON_PRECISION"))


def triton_lstm() -> str:
    """``ELMO_FAST_TRITON_LSTM``: ``auto`` (default), ``step`` or ``persistent``."""
    return str(get("ELMO_FAST_TRITON_LSTM"))


def triton_matmul() -> str:
    """``ELMO_FAST_TRITON_MATMUL``: ``cublas`` (default) or ``triton``."""
    return str(get("ELMO_FAST_TRITON_MATMUL"))


def triton_tiles() -> str:
    """``ELMO_FAST_TRITON_TILES``: ``auto`` (default) or ``gpu``."""
    return str(get("ELMO_FAST_TRITON_TILES"))


def cuda_graphs() -> bool:
    """``ELMO_FAST_CUDA_GRAPHS``: whether the Triton backend replays launch loops from CUDA graphs (default 1)."""
    return get("ELMO_FAST_CUDA_GRAPHS") == "1"


def thread_limit(cpus: int | None = None) -> int:
    """The largest accepted thread count: :data:`THREADS_PER_CPU_MAX` x the CPUs this process may use."""
    if cpus is None:
        from .runtime import available_cpus
        cpus = available_cpus()
    return THREADS_PER_CPU_MAX * max(1, int(cpus))


def check_thread_count(n: Any, source: str, cpus: int | None = None) -> int:
    """Validate a thread count given by ``source`` (a flag or a variable): a positive integer, warned about
    above the CPU count, refused above :func:`thread_limit`."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SettingsError(f"{source}: expected a positive integer, found {n!r}")
    if cpus is None:
        from .runtime import available_cpus
        cpus = available_cpus()
    limit = thread_limit(cpus)
    if n > limit:
        raise SettingsError(f"{source}: {n} threads is more than {limit} ({THREADS_PER_CPU_MAX} x the {cpus} "
                            f"CPUs this process may use); expected at most {limit}")
    if n > cpus:
        logger.warning("%s: %d threads on %d CPUs: more threads than CPUs only slows the job down", source, n, cpus)
    return n


def threads() -> int | None:
    """``ELMO_FAST_THREADS``: a fixed thread count, or None (automatic)."""
    return get("ELMO_FAST_THREADS")


@dataclass(frozen=True)
class Distributed:
    """torchrun's view of this process: ``rank`` of ``world_size`` (``local_rank``: its GPU on the machine)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_warned_leftover: set[tuple[str, str]] = set()


def distributed() -> Distributed:
    """``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, validated together.

    Raises:
        SettingsError: a value that is not an integer, a negative one, ``WORLD_SIZE`` < 1, or
            ``RANK`` >= ``WORLD_SIZE`` in a multi-process run.
    """
    world = int(get("WORLD_SIZE"))
    rank = int(get("RANK"))
    local = int(get("LOCAL_RANK"))
    if world <= 1:
        for name, value in (("RANK", rank), ("LOCAL_RANK", local)):
            if value != 0:
                key = (name, str(value))
                if key not in _warned_leftover:
                    _warned_leftover.add(key)
                    logger.warning("environment variable %s=%d ignored: WORLD_SIZE is %s, so this is a one-process "
                                   "run (rank 0); a leftover of an earlier torchrun?", name, value,
                                   raw("WORLD_SIZE") or "unset")
        return Distributed(0, 1, 0)
    if rank >= world:
        raise SettingsError(f"environment variable RANK={rank}: expected 0 <= RANK < WORLD_SIZE ({world})")
    return Distributed(rank, world, local)


def markdown_table() -> str:
    """The README's table of variables (name, meaning, default, valid values)."""
    rows = ["| variable | meaning | default | valid values |", "|---|---|---|---|"]
    rows += [f"| `{s.name}` | {s.meaning} | {s.default} | {s.valid} |" for s in _LIST]
    return "\n".join(rows)
