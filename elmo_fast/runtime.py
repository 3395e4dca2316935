"""Process-level settings that decide CPU speed as much as the kernels do.

**Freed memory kept for reuse** (:func:`retain_freed_memory`). glibc's ``malloc`` serves every block above
its mmap threshold (at most 32 MB) with a fresh ``mmap`` and gives it back to the kernel on ``free``. A
training step allocates and frees tensors of hundreds of MB (the original model's gate buffer alone is
2 x 2560 x 16384 float32 = 336 MB), so every step page-faults all of them in again, and filling a fresh
buffer costs several times what reusing one does (``benchmarks/allocator.py`` measures it; the training rows of
benchmarks/RESULTS.md show the effect). Turning glibc's mmap path off (``M_MMAP_MAX = 0``) and never trimming the
heap (``M_TRIM_THRESHOLD``) keeps freed blocks in the process, where the next step reuses them. The
cost: the process keeps its peak memory until it exits, which is what a training or embedding job does
anyway. This is the same remedy as preloading jemalloc or tcmalloc, which PyTorch's CPU tuning guide
recommends, without a preload.

The command-line tools call it at start; library users may call it once themselves. Set
``ELMO_FAST_RETAIN_MEMORY=0`` to leave the allocator alone.

**Threads that yield to other work** (:class:`ThreadGovernor`). torch's default is one intra-op thread per
core. The biLSTM runs thousands of small per-step operations, each a parallel region that waits for its
slowest thread; when another CPU-bound process holds a core, that thread is descheduled for whole
scheduler slices and every region waits for it, so one thread can be several times faster than two
(``benchmarks/contention.py`` measures it).
The governor measures how much CPU *other* processes use (``/proc/stat`` minus this process's own time),
uses the cores that are left (at least one), and re-checks every couple of seconds from the job's loop
(:func:`thread_tick`), so an idle machine keeps every core and a busy one does not collapse. ``--threads N``
fixes the count instead.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time

__all__ = ["retain_freed_memory", "ThreadGovernor", "configure_threads", "thread_tick", "available_cpus"]

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
    from . import settings
    if not settings.retain_memory():
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


# ---------------------------------------------------------------------------------------------- threads
def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _clock_ticks() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (ValueError, OSError, AttributeError):
        return 100


def _system_busy_and_total() -> tuple[int, int] | None:
    """(busy, total) jiffies summed over all CPUs from ``/proc/stat``; None where there is no /proc."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != b"cpu":
        return None
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle, total


def _own_busy() -> int:
    """This process's CPU time (all threads, user + system) in jiffies."""
    t = os.times()
    return int(round((t.user + t.system) * _clock_ticks()))


class ThreadGovernor:
    """Chooses torch's intra-op thread count from the CPU that other processes leave free.

    Args:
        requested: a fixed thread count (``--threads N``); None lets the governor decide.
        interval: seconds between re-checks in :meth:`tick`.
        cpus: CPUs to plan for (default: the affinity mask).

    The decision is ``round(cpus - busy_elsewhere)`` clamped to ``[1, cpus]``, where ``busy_elsewhere`` is the
    number of cores that other processes kept busy over the last interval. A change takes effect only when
    two consecutive measurements agree (no flapping on a single noisy sample).
    """

    def __init__(self, requested: int | None = None, interval: float = 2.0, cpus: int | None = None) -> None:
        if requested is not None and (not isinstance(requested, int) or isinstance(requested, bool)
                                      or requested < 1):
            raise ValueError(f"threads: expected a positive integer or None (automatic), found {requested!r}")
        self.requested = requested
        self.interval = float(interval)
        self.cpus = cpus or available_cpus()
        self._last: tuple[float, int, int, int] | None = None
        self._pending: int | None = None
        self.threads: int | None = None

    @staticmethod
    def choose(cpus: int, busy_elsewhere: float) -> int:
        """Threads to use on ``cpus`` cores when other processes keep ``busy_elsewhere`` cores busy."""
        return int(min(cpus, max(1, round(cpus - max(0.0, busy_elsewhere)))))

    def _sample(self) -> tuple[float, int, int, int] | None:
        sys_now = _system_busy_and_total()
        if sys_now is None:
            return None
        return (time.monotonic(), sys_now[0], sys_now[1], _own_busy())

    def _busy_elsewhere(self, a: tuple[float, int, int, int], b: tuple[float, int, int, int]) -> float | None:
        total = b[2] - a[2]
        if total <= 0:
            return None
        ncpu_seen = max(1, os.cpu_count() or 1)
        per_core = total / ncpu_seen  # jiffies that elapsed on one core
        others = (b[1] - a[1]) - (b[3] - a[3])
        return max(0.0, others / per_core)

    def _apply(self, threads: int) -> None:
        import torch
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
            if self.requested is not None:
                logger.debug("using %d CPU thread%s as requested", threads, "" if threads == 1 else "s")
            elif threads < self.cpus:
                logger.info("using %d of %d CPU threads: other processes keep the rest busy (--threads N fixes "
                            "the count)", threads, self.cpus)
            else:
                logger.info("using all %d CPU threads (the machine is otherwise idle)", threads)
        self.threads = threads

    def start(self, probe_seconds: float = 0.1) -> int:
        """Decide the first thread count (a short measurement unless fixed) and apply it; returns it."""
        if self.requested is not None:
            self._apply(self.requested)
            return self.requested
        first = self._sample()
        if first is None:  # no /proc: keep torch's default
            import torch
            self.threads = torch.get_num_threads()
            return self.threads
        time.sleep(probe_seconds)
        second = self._sample()
        busy = self._busy_elsewhere(first, second) if second else None
        self._apply(self.choose(self.cpus, busy or 0.0))
        self._last = second
        return int(self.threads)

    def tick(self) -> int | None:
        """Cheap unless ``interval`` has passed; then re-measure and, if two measurements agree, re-apply."""
        if self.requested is not None or self._last is None:
            return self.threads
        if time.monotonic() - self._last[0] < self.interval:
            return self.threads
        now = self._sample()
        if now is None:
            return self.threads
        busy = self._busy_elsewhere(self._last, now)
        self._last = now
        if busy is None:
            return self.threads
        want = self.choose(self.cpus, busy)
        if want != self.threads:
            if self._pending == want:
                self._apply(want)
                self._pending = None
            else:
                self._pending = want
        else:
            self._pending = None
        return self.threads


_governor: ThreadGovernor | None = None


def configure_threads(requested: int | None = None, interval: float = 2.0) -> ThreadGovernor:
    """Set up the process's thread policy: a fixed count, or automatic (the default; see the module docstring).

    Environment: ``ELMO_FAST_THREADS=N`` fixes the count when ``requested`` is None. Either is refused above
    :func:`elmo_fast.settings.thread_limit` (a :class:`~elmo_fast.settings.SettingsError` naming the source).
    """
    from . import settings
    global _governor
    if requested is None:
        requested = settings.threads()
        if requested is not None:
            settings.check_thread_count(requested, "ELMO_FAST_THREADS")
    elif isinstance(requested, int) and not isinstance(requested, bool) and requested > settings.thread_limit():
        settings.check_thread_count(requested, "threads")
    _governor = ThreadGovernor(requested, interval)
    _governor.start()
    return _governor


def thread_tick() -> None:
    """Call from a job's loop (every step or batch): re-checks the thread count every few seconds."""
    if _governor is not None:
        _governor.tick()
