"""Process-level settings that decide CPU speed as much as the kernels do.

**Freed memory kept for reuse** (:func:`retain_freed_memory`). glibc's ``malloc`` serves every block above
its mmap threshold (at most 32 MB) with a fresh ``mmap`` and gives it back to the kernel on ``free``. A
training step allocates and frees tensors of hundreds of MB (the original model's gate buffer alone is
2 x 2560 x 16384 float32 = 336 MB), so every step page-faults all of them in again: on the 2-core
development VM a fresh 168 MB buffer costs 71-98 ms to fill versus 7-12 ms when reused
(``benchmarks/allocator.py``), and an original-size training step (128 x 20) of the fast path took 18.3 s
instead of 12.7 s (benchmarks/RESULTS.md, "CPU fast path", item 3). Turning glibc's mmap path off (``M_MMAP_MAX = 0``) and never trimming
the heap (``M_TRIM_THRESHOLD``) keeps freed blocks in the process, where the next step reuses them. The
cost: the process keeps its peak memory until it exits, which is what a training or embedding job does
anyway. This is the same remedy as preloading jemalloc or tcmalloc, which PyTorch's CPU tuning guide
recommends, without a preload.

The command-line tools call it at start; library users may call it once themselves. Set
``ELMO_FAST_RETAIN_MEMORY=0`` to leave the allocator alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

__all__ = ["retain_freed_memory"]

logger = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of unmapping it (see the module docstring).

    Idempotent. Returns True when the setting is in effect, False when it was switched off by
    ``ELMO_FAST_RETAIN_MEMORY=0`` or the C library is not glibc (then nothing is changed).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("ELMO_FAST_RETAIN_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        logger.debug("ELMO_FAST_RETAIN_MEMORY=0: allocator left as it is")
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        logger.debug("no glibc mallopt on this platform: allocator left as it is")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    biggest = 2 ** 31 - 1
    ok = all(mallopt(param, value) == 1 for param, value in
             ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, biggest), (_M_TOP_PAD, 64 << 20)))
    _applied = ok
    logger.debug("glibc keeps freed memory for reuse: %s", ok)
    return ok
