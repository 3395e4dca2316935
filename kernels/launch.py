"""The one place where the Triton kernels are launched: :func:`launch`.

Every launch the host code makes goes through ``launch(kernel, grid, args, constexprs, num_warps, num_stages)``,
so that

* each launch runs under a device guard (``torch.cuda.device(tensor.device)``): a model on ``cuda:1`` runs
  there even while ``cuda:0`` is the current device (Triton launches on the current device and stream);
* the compile check (:mod:`tools.compile_check`, ``tests/test_gpu_compile.py``) can run the real
  host code on ``meta`` tensors under :func:`recording` and collect, instead of launching, exactly the
  launches (kernel, grid, argument types, constexprs, warps, stages) a GPU would get, then compile each with
  the real Triton compiler for sm_80 and sm_90 and check them against the hardware limits;
* a loop of launches (the LSTM's per-step kernels) can be replayed from a CUDA graph: :func:`run_launches`.

CUDA graphs (``ELMO_FAST_CUDA_GRAPHS=1``, the default; ``0`` turns capture off): :func:`run_launches` first
collects a loop's launches without running them. A graph is replayed only when *every* launch of the loop is
identical to a captured one - same kernel, grid, constexprs, warps, stages and the same argument values, tensor
arguments compared by device address - so a replay performs exactly the launches the eager loop would. A loop
runs eagerly the first time it is seen (which also compiles and loads the kernels outside any capture), is
captured the second time and replayed from then on. In a training loop PyTorch's caching allocator hands out
the same addresses step after step, so the per-step launches of a layer are replayed from one graph; a
loop whose addresses change (other batch shapes) just runs eagerly. Nothing here allocates during capture
(the step loops are allocation-free). Graphs are never used for CPU tensors (the interpreter), while the
compile check records, or inside a capture the caller started. Collection is per thread (another thread's
launches run normally meanwhile) and the cache is locked.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

import torch

from elmo_fast import settings

__all__ = ["LaunchPlan", "launch", "recording", "is_recording", "NUM_STAGES", "run_launches", "GraphCache",
           "graphs_enabled", "GRAPHS_ENV", "read_setting"]

GRAPHS_ENV = "ELMO_FAST_CUDA_GRAPHS"

_T = TypeVar("_T")


def read_setting(read: Callable[[], _T]) -> _T:
    """A Triton backend setting through its :mod:`elmo_fast.settings` helper (``read``, e.g.
    ``settings.triton_lstm``): the kernels read no environment variable themselves. A bad value is a
    :class:`~elmo_fast.backend.BackendError` naming the variable (the backend cannot run as asked)."""
    try:
        return read()
    except settings.SettingsError as e:
        from elmo_fast.backend import BackendError
        raise BackendError(str(e)) from None


#: Triton's default software-pipelining depth on NVIDIA GPUs (what a launch without ``num_stages`` gets)
NUM_STAGES = 3


@dataclass
class LaunchPlan:
    """One kernel launch: what runs, on which grid, with which arguments and compile-time options."""

    kernel: Any
    grid: tuple[int, ...]
    args: tuple
    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = NUM_STAGES
    count: int = field(default=1, compare=False)  # how many identical launches (e.g. one per time step)

    @property
    def name(self) -> str:
        fn = getattr(self.kernel, "fn", self.kernel)
        return getattr(fn, "__name__", str(fn))


class _Recorder:
    """Collects launch plans, one per distinct compiled specialization and grid."""

    def __init__(self) -> None:
        self.plans: dict[tuple, LaunchPlan] = {}

    @staticmethod
    def _arg_key(a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            return ("ptr", str(a.dtype), (a.storage_offset() * a.element_size()) % 16 == 0)
        if isinstance(a, bool):
            return ("bool", a)
        if isinstance(a, int):  # what Triton specializes an int on: == 1, divisible by 16, needs 64 bits
            return ("int", a == 1, a % 16 == 0, not -2 ** 31 <= a < 2 ** 31)
        if isinstance(a, float):
            return ("float",)
        return ("other", repr(a))

    def add(self, plan: LaunchPlan) -> None:
        key = (plan.name, plan.grid, tuple(self._arg_key(a) for a in plan.args),
               tuple(sorted(plan.constexprs.items())), plan.num_warps, plan.num_stages)
        if key in self.plans:
            self.plans[key].count += 1
        else:
            self.plans[key] = plan


_RECORDER: _Recorder | None = None


@contextlib.contextmanager
def recording() -> Iterator[list[LaunchPlan]]:
    """Collect launches instead of running them (the host code may then run on ``meta`` tensors).

    Yields a list that is filled with the distinct :class:`LaunchPlan` s when the block exits."""
    global _RECORDER
    previous, _RECORDER = _RECORDER, _Recorder()
    out: list[LaunchPlan] = []
    try:
        yield out
    finally:
        out.extend(_RECORDER.plans.values())
        _RECORDER = previous


def is_recording() -> bool:
    """Whether launches are being recorded (then ``meta`` tensors are accepted by the device checks)."""
    return _RECORDER is not None


def launch(kernel: Any, grid: tuple[int, ...], args: tuple, constexprs: dict[str, Any], num_warps: int = 4,
           num_stages: int = NUM_STAGES, wide: bool = False) -> None:
    """Launch ``kernel[grid](*args, **constexprs, num_warps=..., num_stages=...)`` on the device of its first
    tensor argument (or record it, see :func:`recording`).

    ``wide``: the kernel computes its offsets in 64 bits. Other kernels index with 32-bit products, so a
    tensor of 2^31 or more elements raises :class:`BackendError` instead of wrapping addresses.
    """
    if not wide:
        for a in args:
            if isinstance(a, torch.Tensor) and a.numel() >= 2 ** 31:
                from elmo_fast.backend import BackendError
                name = getattr(getattr(kernel, "fn", kernel), "__name__", "kernel")
                raise BackendError(f"triton kernel {name}: a tensor of shape {tuple(a.shape)} has 2^31 or more "
                                   "elements; this kernel uses 32-bit offsets (split the batch)")
    plan = LaunchPlan(kernel, tuple(grid), tuple(args), dict(constexprs), num_warps, num_stages)
    if _RECORDER is not None:
        _RECORDER.add(plan)
        return
    collector = getattr(_LOCAL, "collector", None)
    if collector is not None:
        collector.append(plan)
        return
    _execute(plan)


def _device(plan: LaunchPlan) -> torch.device | None:
    return next((a.device for a in plan.args if isinstance(a, torch.Tensor)), None)


def _execute(plan: LaunchPlan) -> None:
    """Launch one plan on its first tensor's device (a device guard: Triton launches on the current device)."""
    device = _device(plan)
    run = plan.kernel[plan.grid]
    if device is not None and device.type == "cuda":
        with torch.cuda.device(device):
            run(*plan.args, **plan.constexprs, num_warps=plan.num_warps, num_stages=plan.num_stages)
    else:
        run(*plan.args, **plan.constexprs, num_warps=plan.num_warps, num_stages=plan.num_stages)


# ---------------------------------------------------------------------------------------------- CUDA graphs
_LOCAL = threading.local()  # .collector: the launches run_launches is collecting in this thread (or None)


def graphs_enabled() -> bool:
    """``ELMO_FAST_CUDA_GRAPHS``: ``1`` (default) replays repeated launch loops from CUDA graphs, ``0`` never."""
    return read_setting(settings.cuda_graphs)


def _exact_key(plan: LaunchPlan) -> tuple:
    """Everything a launch depends on: kernel, grid, options and argument *values* (tensors by address)."""
    args = tuple(("tensor", a.device.type, a.device.index, a.data_ptr(), a.dtype) if isinstance(a, torch.Tensor)
                 else (type(a).__name__, a) for a in plan.args)
    return (id(plan.kernel), plan.grid, args, tuple(sorted(plan.constexprs.items())), plan.num_warps,
            plan.num_stages)


def _capture_cuda(plans: list[LaunchPlan], device: torch.device) -> Any:
    """Capture the launches into a ``torch.cuda.CUDAGraph`` (not run by the capture itself)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.device(device):
        # the low-level calls, not ``with torch.cuda.graph(...)``: that one empties the allocator's cache first,
        # which would move the next calls' tensors to new addresses and defeat the replay rule
        current = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(current)  # the capture follows the work already queued (e.g. the input products)
        with torch.cuda.stream(side):
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                for plan in plans:
                    _execute(plan)
            finally:
                graph.capture_end()
        current.wait_stream(side)
    return graph


class GraphCache:
    """Launch loops seen before (by exact key) and the CUDA graphs captured for the repeated ones.

    Args:
        max_graphs: graphs kept (least recently used dropped first).
        max_seen: keys of loops run once, remembered to capture on the second occurrence.
        capture: ``(plans, device) -> graph with .replay()``; tests substitute a stand-in.
        device_types: device types whose loops may be captured (``("cuda",)``).
    """

    def __init__(self, max_graphs: int = 16, max_seen: int = 64,
                 capture: Callable[[list[LaunchPlan], torch.device], Any] = _capture_cuda,
                 device_types: tuple[str, ...] = ("cuda",)) -> None:
        self.graphs: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self.seen: collections.OrderedDict[tuple, None] = collections.OrderedDict()
        self.max_graphs, self.max_seen = max_graphs, max_seen
        self.capture, self.device_types = capture, device_types
        self.stats = {"eager": 0, "captured": 0, "replayed": 0}
        self._lock = threading.Lock()

    def run(self, plans: list[LaunchPlan]) -> None:
        """Run the launches eagerly, or capture and/or replay them (see the module docstring)."""
        with self._lock:
            self._run(plans)

    def _run(self, plans: list[LaunchPlan]) -> None:
        device = _device(plans[0]) if plans else None
        if (device is None or device.type not in self.device_types
                or (device.type == "cuda" and torch.cuda.is_current_stream_capturing())):
            for plan in plans:
                _execute(plan)
            self.stats["eager"] += 1
            return
        key = tuple(_exact_key(p) for p in plans)
        graph = self.graphs.get(key)
        if graph is None:
            if key not in self.seen:  # first time: eager (compiles and loads the kernels outside a capture)
                self.seen[key] = None
                if len(self.seen) > self.max_seen:
                    self.seen.popitem(last=False)
                for plan in plans:
                    _execute(plan)
                self.stats["eager"] += 1
                return
            del self.seen[key]
            try:
                graph = self.capture(plans, device)
            except Exception as e:  # a driver/stream that cannot capture: eager from now on, said once
                logging.getLogger(__name__).warning("CUDA graph capture failed (%s: %s); launching eagerly from now "
                                                    "on (set %s=0 to skip capture)", type(e).__name__, e, GRAPHS_ENV)
                self.device_types = ()
                for plan in plans:
                    _execute(plan)
                self.stats["eager"] += 1
                return
            self.graphs[key] = graph
            if len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
            self.stats["captured"] += 1
        else:
            self.graphs.move_to_end(key)
        if device.type == "cuda":
            with torch.cuda.device(device):
                graph.replay()
        else:
            graph.replay()
        self.stats["replayed"] += 1


#: the process-wide cache used by the kernels' host code
GRAPHS = GraphCache()


def run_launches(body: Callable[[], None], cache: GraphCache | None = None) -> None:
    """Run ``body`` (a loop that only calls :func:`launch`) eagerly or from a CUDA graph (module docstring).

    While the compile check records, or with ``ELMO_FAST_CUDA_GRAPHS=0``, ``body`` just runs."""
    if _RECORDER is not None or getattr(_LOCAL, "collector", None) is not None or not graphs_enabled():
        body()
        return
    plans: list[LaunchPlan] = []
    _LOCAL.collector = plans
    try:
        body()
    finally:
        _LOCAL.collector = None
    (cache or GRAPHS).run(plans)
