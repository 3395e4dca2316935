"""The one place where the Triton kernels are launched: :func:`launch`.

Every launch the host code makes goes through ``launch(kernel, grid, args, constexprs, num_warps, num_stages)``,
so that

* each launch runs under a device guard (``torch.cuda.device(tensor.device)``): a model on ``cuda:1`` runs
  there even while ``cuda:0`` is the current device (Triton launches on the current device and stream);
* the compile check (:mod:`elmo_fast.kernels.compile_check`, ``tests/test_gpu_compile.py``) can run the real
  host code on ``meta`` tensors under :func:`recording` and collect, instead of launching, exactly the
  launches (kernel, grid, argument types, constexprs, warps, stages) a GPU would get, then compile each with
  the real Triton compiler for sm_80 and sm_90 and check them against the hardware limits.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

__all__ = ["LaunchPlan", "launch", "recording", "is_recording", "NUM_STAGES"]

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
    if _RECORDER is not None:
        _RECORDER.add(LaunchPlan(kernel, tuple(grid), tuple(args), dict(constexprs), num_warps, num_stages))
        return
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
    if device is not None and device.type == "cuda":
        with torch.cuda.device(device):
            kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
    else:
        kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
