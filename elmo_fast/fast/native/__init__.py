"""The fused CPU LSTM cell (``lstm_cell.c``), compiled on first use and called through :mod:`ctypes`.

Why: per biLSTM step the PyTorch path runs ~11 elementwise ops in the forward (sigmoid, tanh, products, the
cell update, clip, ``tanh(c)``, ``o * tanh(c)``) and ~15 in the backward, each a pass over ``(D, n, C)`` tensors
with its own dispatch. On the small model that is ~90 ms of an ~870 ms training step at one thread. The C kernel
does each step's elementwise work in one vectorised pass (one for the forward, one for the backward).

Numerics: the same op sequence and rounding as :func:`elmo_fast.fast.lstm.recurrence_forward` (``i*j`` and
``f*c_prev`` rounded separately, then added; built with ``-ffp-contract=off`` so no fused multiply-add), except
sigmoid and tanh, which are computed from a polynomial ``exp`` (a few float32 ulp; the tests bound it against
``torch.sigmoid``/``torch.tanh``). Every element is computed alone, so results do not depend on the thread count
or the vector width. NaN propagates as with the torch ops. It is used for order ``"fast"`` only; order
``"allennlp"`` (bit parity with AllenNLP) keeps torch's activations.

Build: ``$CC`` (default ``cc``) ``-O3 -march=native -fopenmp -ffp-contract=off -shared``, into
``$ELMO_FAST_NATIVE_CACHE`` (default ``~/.cache/elmo-fast/native``), one file per (source, compiler, flags, CPU
features), written to a temporary name and renamed, so concurrent processes (torchrun ranks) are safe. If no
compiler works, a warning is logged once and the PyTorch path is used. ``ELMO_FAST_NATIVE=0`` turns it off.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading

import torch

__all__ = ["available", "cell_forward", "cell_backward", "library", "reset"]

log = logging.getLogger(__name__)

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lstm_cell.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-std=c11", "-shared", "-fPIC"]
ENABLE_ENV = "ELMO_FAST_NATIVE"
CACHE_ENV = "ELMO_FAST_NATIVE_CACHE"


#: per-thread argument blocks (int64: sizes, then pointer and strides per operand): one ctypes call with a pointer
#: costs ~1.5 us, against ~16 us for the same arguments as ctypes structures
_FWD_ARGS, _BWD_ARGS = ctypes.c_int64 * 21, ctypes.c_int64 * 27
_local = threading.local()
_lock = threading.Lock()
_state: dict[str, object] = {}


def _cpu_features() -> str:
    """The CPU's feature flags (``-march=native`` compiles for them: a cache shared by different CPUs keeps one
    library per feature set)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _compiler_id(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _flag_variants() -> list[list[str]]:
    """Flags to try, best first: without ``-march=native`` (a compiler that lacks it) and without OpenMP (then
    the kernels run on one thread)."""
    portable = [f for f in FLAGS if f != "-march=native"]
    return [FLAGS, portable, [f for f in portable if f != "-fopenmp"]]


def _compile(cc: str, flags: list[str], target: str, cache: str) -> str | None:
    """Compile into ``target`` (temporary file + rename); None on success, else the compiler's last line."""
    os.makedirs(cache, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".lstm_cell-", suffix=".so", dir=cache)
    os.close(fd)
    try:
        res = subprocess.run([cc, *flags, "-o", tmp, SOURCE], capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            return (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
        os.replace(tmp, target)
        return None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _build() -> ctypes.CDLL | None:
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        log.warning("fused CPU LSTM cell off: no C compiler %r on PATH (set CC); using the PyTorch ops", cc)
        return None
    with open(SOURCE, "rb") as f:
        source = f.read()
    cache = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "elmo-fast", "native")
    compiler, features = _compiler_id(cc).encode(), _cpu_features().encode()
    error = ""
    for flags in _flag_variants():
        key = hashlib.sha256(b"\0".join([source, compiler, " ".join(flags).encode(), features,
                                         platform.machine().encode()])).hexdigest()[:20]
        target = os.path.join(cache, f"lstm_cell-{key}.so")
        if os.path.exists(target):
            break
        try:
            failed = _compile(cc, flags, target, cache)
        except (OSError, subprocess.SubprocessError) as e:
            log.warning("fused CPU LSTM cell off: could not build it in %s (%s); using the PyTorch ops", cache, e)
            return None
        if failed is None:
            log.debug("built %s with %s %s", target, cc, " ".join(flags))
            break
        error = failed
    else:
        log.warning("fused CPU LSTM cell off: %s failed to compile %s: %s; using the PyTorch ops", cc, SOURCE, error)
        return None
    try:
        lib = ctypes.CDLL(target)
    except OSError as e:
        log.warning("fused CPU LSTM cell off: could not load %s (%s); using the PyTorch ops", target, e)
        return None
    lib.lstm_cell_forward.argtypes = [ctypes.c_void_p, ctypes.c_float, ctypes.c_float, ctypes.c_int]
    lib.lstm_cell_forward.restype = ctypes.c_int
    lib.lstm_cell_backward.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.lstm_cell_backward.restype = ctypes.c_int
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, building it on first use; None when it is turned off or cannot be built."""
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                on = os.environ.get(ENABLE_ENV, "1").strip() != "0"
                _state["lib"] = _build() if on else None
    return _state["lib"]  # type: ignore[return-value]


def reset() -> None:
    """Forget the loaded library (tests: re-read ``ELMO_FAST_NATIVE`` and the cache on the next call)."""
    with _lock:
        _state.clear()


def available(*tensors: torch.Tensor | None) -> bool:
    """Whether the kernels can run on these tensors: the library loads, and all are float32 CPU tensors whose
    last axis is contiguous."""
    if library() is None:
        return False
    return all(t is None or (t.dtype == torch.float32 and t.device.type == "cpu" and t.dim() == 3
                             and t.stride(2) == 1) for t in tensors)


def _desc(t: torch.Tensor | None) -> tuple[int, int, int]:
    if t is None:
        return (0, 0, 0)
    sd, sr, sc = t.stride()  # (one call: each tensor attribute read costs ~0.2 us, and this runs per step)
    if sc != 1 or t.dtype is not torch.float32:
        raise ValueError(f"fused LSTM cell: float32 (D, n, C) tensors with a contiguous last axis expected, found "
                         f"{t.dtype} of strides {t.stride()}")
    return (t.data_ptr(), sd, sr)


def _blocks() -> tuple[ctypes.Array, ctypes.Array]:
    try:
        return _local.blocks
    except AttributeError:
        _local.blocks = (_FWD_ARGS(), _BWD_ARGS())
        return _local.blocks


def cell_forward(g: torch.Tensor, c_prev: torch.Tensor, c_raw: torch.Tensor | None, c: torch.Tensor,
                 tanh_c: torch.Tensor | None, hc: torch.Tensor, cell_clip: float | None) -> None:
    """One step's cell update, in place.

    Args:
        g: ``(D, n, 4C)`` pre-activation gates (i, f, o, j); overwritten with the activated gates.
        c_prev: ``(D, n, C)`` previous cells. c_raw: the unclipped cells out (None: not kept).
        c: ``(D, n, C)`` clipped cells out. tanh_c: ``tanh(c)`` out (None: not kept). hc: ``o * tanh(c)`` out.
        cell_clip: clip of the cells (None: none).
    """
    D, n, four_c = g.shape
    block = _blocks()[0]
    block[:] = (D, n, four_c // 4, *_desc(g), *_desc(c_prev), *_desc(c_raw), *_desc(c), *_desc(tanh_c), *_desc(hc))
    lo, hi = (-cell_clip, cell_clip) if cell_clip is not None else (-math.inf, math.inf)
    if library().lstm_cell_forward(block, lo, hi, torch.get_num_threads()):
        raise MemoryError("fused CPU LSTM cell: out of memory for a scratch row")


def cell_backward(dc: torch.Tensor, g: torch.Tensor, dz: torch.Tensor, tanh_c: torch.Tensor, c_prev: torch.Tensor,
                  dc_state: torch.Tensor, dc_out: torch.Tensor | None, mask: torch.Tensor | None) -> None:
    """One step's backward through the cell, in place.

    Args:
        dc: ``(D, n, C)`` gradient of ``o * tanh(c)``. g: the activated gates the forward left.
        dz: ``(D, n, 4C)`` out: gradient of the pre-activation gates.
        tanh_c: ``tanh`` of the clipped cells. c_prev: the previous cells.
        dc_state: ``(D, n, C)`` in: gradient carried into this step's clipped cells; out: the gradient of ``c_prev``.
        dc_out: extra gradient of the clipped cells (None: none). mask: bool ``(D, n, C)``, where the clip passed
            the gradient (None: no clip).
    """
    D, n, C = dc.shape
    if mask is None:
        m = (0, 0, 0)
    elif mask.dtype != torch.bool or mask.stride(2) != 1:
        raise ValueError("mask: a bool tensor with a contiguous last axis expected")
    else:
        m = (mask.data_ptr(), mask.stride(0), mask.stride(1))
    block = _blocks()[1]
    block[:] = (D, n, C, *_desc(dc), *_desc(g), *_desc(dz), *_desc(tanh_c), *_desc(c_prev), *_desc(dc_state),
                *_desc(dc_out), *m)
    if library().lstm_cell_backward(block, torch.get_num_threads()):
        raise MemoryError("fused CPU LSTM cell: out of memory for a scratch row")
