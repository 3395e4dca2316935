"""Native CPU kernels, compiled on first use and called through :mod:`ctypes`: the fused LSTM cell (``lstm_cell.c``),
the sampled softmax rows (``sampled_softmax.c``) and the char-CNN backward scatter (``char_cnn.c``), one library,
with the shared math in ``fastmath.h``.

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

The sampled softmax rows (:func:`softmax_forward`, :func:`softmax_backward`): the forward's shift, max, ``exp``
and sum over each ``(S,)`` row of logits in one kernel (the torch ops make four passes over the ``(N, S)`` matrix,
e.g. 21 MB per direction on the small model), reading bfloat16 products directly in the bf16 setting; the backward's
scaling, bias column sums and bfloat16 copy for the two products in one pass. Rows (forward) and columns (backward
sums) are each owned by one thread, so results do not depend on the thread count.

The char-CNN backward scatter (:func:`char_scatter`): the max-over-windows gradient summed per (offset,
character, filter) in one pass over the ``(U, F)`` gradient for all offsets, instead of an int64 index gather and a
``scatter_add_`` per offset. Threads own filter columns; every sum runs over the rows in order (thread-invariant).

In-place sigmoid / tanh (:func:`activation_`, ``activations.c``): torch's CPU sigmoid and tanh give an element
other bits when it falls in a thread range's scalar remainder instead of its vector body, so their results depend
on the thread count (for ~1 row count in 3 of the fixture model's highway gate); these compute every element the
same way.

Build: ``$CC`` (default ``cc``) ``-O3 -fopenmp -ffp-contract=off`` plus the flags of one instruction-set level,
into ``$ELMO_FAST_NATIVE_CACHE`` (default ``~/.cache/elmo-fast/native``), one file per (level, source, compiler,
flags), written to a temporary name and renamed, so concurrent processes (torchrun ranks) are safe. The levels
(:data:`LEVELS`) are portable targets, not ``-march=native``: on x86-64 ``baseline`` (SSE2), ``v3`` (AVX2 + FMA)
and ``v4`` (AVX-512); on aarch64 ``baseline`` (NEON). The best level the CPU runs is chosen at run time from its
feature flags; ``ELMO_FAST_NATIVE_ISA=baseline|v3|v4|native`` forces one (``native``: ``-march=native``, for tuning).
**Every level gives the same bits**: the elementwise code is the same operations in any vector width (no FMA
contraction, no approximate reciprocals; ``-fno-trapping-math`` only lets the compiler turn the branch-free selects
into blends on AVX2, it changes no value), and every reduction runs in a fixed lane order (``sampled_softmax.c``);
``tests/test_native_levels.py`` checks it on every level the host runs. If no compiler works, a warning is logged
once and the PyTorch path is used. ``ELMO_FAST_NATIVE=0`` turns the kernels off.
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
from contextlib import contextmanager
from typing import Iterator

import torch

from ... import settings

__all__ = ["LEVELS", "activation_", "available", "cell_forward", "cell_backward", "char_scatter", "host_levels",
           "level", "library", "requested_level", "reset", "softmax_available", "softmax_backward", "softmax_forward",
           "use_level"]

log = logging.getLogger(__name__)

_HERE = os.path.dirname(os.path.abspath(__file__))
#: the C sources compiled into the one library, and the header they share (part of the build key)
SOURCES = [os.path.join(_HERE, name) for name in ("lstm_cell.c", "sampled_softmax.c", "char_cnn.c", "activations.c")]
HEADERS = [os.path.join(_HERE, "fastmath.h")]
#: flags of every build; the instruction-set level's flags (:data:`LEVELS`) are added to them
BASE_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-std=c11", "-shared",
              "-fPIC"]
ENABLE_ENV = "ELMO_FAST_NATIVE"
_OFF = "native CPU kernels off (LSTM cell, sampled softmax rows, char-CNN scatter, activations)"
CACHE_ENV = "ELMO_FAST_NATIVE_CACHE"


#: per-thread argument blocks (int64: sizes, then pointer and strides per operand): one ctypes call with a pointer
#: costs ~1.5 us, against ~16 us for the same arguments as ctypes structures
_FWD_ARGS, _BWD_ARGS = ctypes.c_int64 * 21, ctypes.c_int64 * 27
_SM_FWD_ARGS, _SM_BWD_ARGS, _SCATTER_ARGS = ctypes.c_int64 * 11, ctypes.c_int64 * 8, ctypes.c_int64 * 10
_ACT_ARGS = ctypes.c_int64 * 4
_local = threading.local()
_lock = threading.Lock()
_state: dict[str, object] = {}
#: level -> (library, level it was built for) or None (failed), per process
_built: dict[str, tuple[ctypes.CDLL, str] | None] = {}


def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


_V3 = ("avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe")
_V4 = _V3 + ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")


def _levels_for(machine: str) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    """Instruction-set levels of an architecture, lowest first: name -> (compiler flags, CPU flags it needs)."""
    if machine in ("x86_64", "amd64", "AMD64"):
        return {"baseline": (["-march=x86-64"], ()),
                "v3": (["-march=x86-64-v3"], _V3),
                # 512-bit vectors: the generic tuning would prefer 256-bit halves on AVX-512 machines
                "v4": (["-march=x86-64-v4", "-mprefer-vector-width=512"], _V4)}
    if machine in ("aarch64", "arm64"):
        return {"baseline": (["-march=armv8-a"], ())}
    return {"baseline": ([], ())}


#: this machine's levels: name -> (compiler flags, CPU feature flags required), lowest first
LEVELS = _levels_for(platform.machine())
#: the forcing variable; its values: a name of :data:`LEVELS` or ``native``
ISA_ENV = "ELMO_FAST_NATIVE_ISA"


def host_levels() -> tuple[str, ...]:
    """The levels of :data:`LEVELS` this CPU can run, lowest first (``baseline`` always)."""
    flags = _cpu_flags()
    return tuple(name for name, (_, needs) in LEVELS.items() if all(f in flags for f in needs))


def requested_level() -> str:
    """The level the kernels are built for: a level forced by :func:`use_level`, else ``$ELMO_FAST_NATIVE_ISA``,
    else the best of :func:`host_levels`. ValueError naming the variable for a name that is not a level or a level
    this CPU cannot run."""
    forced = _state.get("forced")
    if isinstance(forced, str):
        return forced
    value = (settings.raw(ISA_ENV) or "").strip()
    if not value:
        return host_levels()[-1]
    _check_level(value, f"{ISA_ENV}={value!r}")
    return value


def _check_level(name: str, what: str) -> None:
    if name == "native":
        return
    if name not in LEVELS:
        raise ValueError(f"{what}: expected one of {', '.join([*LEVELS, 'native'])}")
    if name not in host_levels():
        raise ValueError(f"{what}: this CPU cannot run it (it runs {', '.join(host_levels())})")


def _compiler_id(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _attempts(level: str) -> list[tuple[str, list[str]]]:
    """(level, flags) to try, best first: the level with and without OpenMP (without it the kernels run on one
    thread), then each lower level (a compiler too old to know a level's name), then no target flag at all."""
    if level == "native":
        targets = [("native", ["-march=native"])]
    else:
        names = list(LEVELS)
        targets = [(n, LEVELS[n][0]) for n in reversed(names[:names.index(level) + 1])]
    targets.append(("generic", []))
    out = []
    for name, target in targets:
        out += [(name, [*BASE_FLAGS, *target]), (name, [f for f in [*BASE_FLAGS, *target] if f != "-fopenmp"])]
    return out


def _compile(cc: str, flags: list[str], target: str, cache: str) -> str | None:
    """Compile into ``target`` (temporary file + rename); None on success, else the compiler's last line."""
    os.makedirs(cache, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".elmo_fast_native-", suffix=".so", dir=cache)
    os.close(fd)
    try:
        res = subprocess.run([cc, *flags, "-o", tmp, *SOURCES], capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            return (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
        os.replace(tmp, target)
        return None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _build(level: str) -> tuple[ctypes.CDLL, str] | None:
    """Build (or find in the cache) and load the library for ``level``: (library, the level it was built for)."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        log.warning("%s: no C compiler %r on PATH (set CC); using the PyTorch ops", _OFF, cc)
        return None
    source = b""
    for path in SOURCES + HEADERS:
        with open(path, "rb") as f:
            source += f.read() + b"\0"
    cache = settings.native_cache()
    compiler = _compiler_id(cc).encode()
    error = ""
    for built, flags in _attempts(level):
        # -march=native compiles for this CPU's features: a cache shared by different CPUs keeps one per feature set
        host = " ".join(sorted(_cpu_flags())).encode() if built == "native" else b""
        key = hashlib.sha256(b"\0".join([source, compiler, " ".join(flags).encode(), host,
                                         platform.machine().encode()])).hexdigest()[:20]
        target = os.path.join(cache, f"elmo_fast_native-{built}-{key}.so")
        if os.path.exists(target):
            break
        try:
            failed = _compile(cc, flags, target, cache)
        except (OSError, subprocess.SubprocessError) as e:
            log.warning("%s: could not build them in %s (%s); using the PyTorch ops", _OFF, cache, e)
            return None
        if failed is None:
            log.debug("built %s with %s %s", target, cc, " ".join(flags))
            break
        error = failed
    else:
        log.warning("%s: %s failed to compile %s: %s; using the PyTorch ops", _OFF, cc,
                    " ".join(SOURCES), error)
        return None
    if built != level:
        log.warning("native CPU kernels: %s could not build level %r; built %r instead", cc, level, built)
    try:
        lib = ctypes.CDLL(target)
    except OSError as e:
        log.warning("%s: could not load %s (%s); using the PyTorch ops", _OFF, target, e)
        return None
    lib.lstm_cell_forward.argtypes = [ctypes.c_void_p, ctypes.c_float, ctypes.c_float, ctypes.c_int]
    lib.lstm_cell_forward.restype = ctypes.c_int
    lib.lstm_cell_backward.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.lstm_cell_backward.restype = ctypes.c_int
    for name in ("sampled_softmax_forward", "sampled_softmax_backward", "char_conv_scatter"):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_int]
        getattr(lib, name).restype = ctypes.c_int
    lib.activation_inplace.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.activation_inplace.restype = ctypes.c_int
    return lib, built


def library() -> ctypes.CDLL | None:
    """The loaded kernel library for :func:`requested_level`, building it on first use; None when it is turned off
    or cannot be built."""
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                on = settings.native()
                level = requested_level()
                if on and level not in _built:
                    _built[level] = _build(level)
                found = _built.get(level) if on else None
                _state["level"] = found[1] if found else None
                _state["lib"] = found[0] if found else None
    return _state["lib"]  # type: ignore[return-value]


def level() -> str | None:
    """The instruction-set level of the loaded library (None: no library)."""
    library()
    return _state.get("level")  # type: ignore[return-value]


@contextmanager
def use_level(name: str) -> Iterator[ctypes.CDLL | None]:
    """Run the enclosed code on the library built for level ``name`` (tests and tuning; not thread-safe)."""
    _check_level(name, f"level {name!r}")
    with _lock:
        saved = _state.copy()
        _state.clear()
        _state["forced"] = name
    try:
        yield library()
    finally:
        with _lock:
            _state.clear()
            _state.update(saved)


def reset() -> None:
    """Forget the loaded libraries (tests: re-read ``ELMO_FAST_NATIVE``, the level and the cache on the next call)."""
    with _lock:
        forced = _state.get("forced")
        _state.clear()
        _built.clear()
        if forced is not None:
            _state["forced"] = forced


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


def _blocks() -> tuple[ctypes.Array, ...]:
    """This thread's argument blocks: cell forward, cell backward, softmax forward, softmax backward, scatter,
    activation."""
    try:
        return _local.blocks
    except AttributeError:
        _local.blocks = (_FWD_ARGS(), _BWD_ARGS(), _SM_FWD_ARGS(), _SM_BWD_ARGS(), _SCATTER_ARGS(), _ACT_ARGS())
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


def softmax_available(*tensors: torch.Tensor | None) -> bool:
    """Whether :func:`softmax_forward` / :func:`softmax_backward` can run on these tensors: the library loads, and
    all are float32 or bfloat16 CPU tensors whose last axis is contiguous."""
    if library() is None:
        return False
    return all(t is None or (t.dtype in (torch.float32, torch.bfloat16) and t.device.type == "cpu"
                             and (t.dim() == 1 or t.stride(-1) == 1)) for t in tensors)


def _rows(t: torch.Tensor, dtype: torch.dtype, what: str) -> tuple[int, int]:
    if t.dim() != 2 or t.stride(1) != 1 or t.dtype != dtype or t.device.type != "cpu":
        raise ValueError(f"sampled softmax rows: {what}: a {dtype} CPU (N, S) tensor with contiguous rows expected, "
                         f"found {t.dtype} {tuple(t.shape)} of strides {t.stride()} on {t.device}")
    return t.data_ptr(), t.stride(0)


def _vector(t: torch.Tensor, n: int, dtype: torch.dtype, what: str) -> int:
    if t.shape != (n,) or t.dtype != dtype or not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError(f"sampled softmax rows: {what}: a contiguous {dtype} CPU vector of {n} expected, found "
                         f"{t.dtype} {tuple(t.shape)}")
    return t.data_ptr()


def softmax_forward(logits: torch.Tensor, shift: torch.Tensor, true_logits: torch.Tensor,
                    hit_cols: torch.Tensor | None, out: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sampled softmax forward's row passes (``sampled_softmax.c``).

    Args:
        logits: ``(N, S)`` float32 or bfloat16 products ``h Wₛᵀ``. shift: ``(S,)`` float32, ``b - ln q`` of the
            samples. true_logits: ``(N,)`` float32. hit_cols: ``(N,)`` int64, the sample position equal to the row's
            target (the accidental hit, masked to ``finfo.min``) or -1; None: no hits.
        out: ``(N, S)`` float32 (may be ``logits`` itself when it is float32): ``exp(l - row max)``.

    Returns:
        ``row_max``, ``true_exp`` = ``exp(true - row_max)`` and ``total`` (sum of the row's exponentials and
        ``true_exp``), each ``(N,)`` float32.
    """
    N, S = logits.shape
    lp, ls = _rows(logits, torch.bfloat16 if logits.dtype == torch.bfloat16 else torch.float32, "logits")
    op, os_ = _rows(out, torch.float32, "out")
    if out.shape != logits.shape:
        raise ValueError(f"sampled softmax rows: out {tuple(out.shape)} must match logits {tuple(logits.shape)}")
    stats = torch.empty(3, N, dtype=torch.float32)
    hp = 0 if hit_cols is None else _vector(hit_cols, N, torch.int64, "hit_cols")
    block = _blocks()[2]
    block[:] = (N, S, lp, ls, int(logits.dtype == torch.bfloat16), _vector(shift, S, torch.float32, "shift"),
                _vector(true_logits, N, torch.float32, "true_logits"), hp, op, os_, stats.data_ptr())
    library().sampled_softmax_forward(block, torch.get_num_threads())
    return stats[0], stats[1], stats[2]


def softmax_backward(e: torch.Tensor, scale: torch.Tensor, d16: torch.Tensor | None,
                     colsum: torch.Tensor | None) -> None:
    """The sampled softmax backward's pass (``sampled_softmax.c``): ``e`` ``(N, S)`` float32 scaled in place by
    ``scale`` ``(N,)`` per row; its bfloat16 rounding written into ``d16`` (``(N, S)``, None: not made) and its
    column sums into ``colsum`` (``(S,)`` float32, None: not made)."""
    N, S = e.shape
    ep, es = _rows(e, torch.float32, "e")
    dp, ds = (0, 0) if d16 is None else _rows(d16, torch.bfloat16, "d16")
    if d16 is not None and d16.shape != e.shape:
        raise ValueError(f"sampled softmax rows: d16 {tuple(d16.shape)} must match e {tuple(e.shape)}")
    block = _blocks()[3]
    block[:] = (N, S, ep, es, _vector(scale, N, torch.float32, "scale"), dp, ds,
                0 if colsum is None else _vector(colsum, S, torch.float32, "colsum"))
    library().sampled_softmax_backward(block, torch.get_num_threads())


def char_scatter(A: torch.Tensor, ids: torch.Tensor, argmax: torch.Tensor, grad: torch.Tensor) -> None:
    """``A[k, ids[u, argmax[u, f] + k], f] += grad[u, f]`` for every ``k < A.shape[0]`` (``char_cnn.c``).

    Args:
        A: ``(w_max, n_sym, F)`` float32, contiguous; accumulated into.
        ids: ``(U, width)`` int64 character ids, rows contiguous; ``argmax + k < width`` for every window.
        argmax: ``(U, F)`` uint8 window index, contiguous. grad: ``(U, F)`` float32, rows contiguous.
    """
    w_max, n_sym, F_ = A.shape
    U = ids.shape[0]
    if not (A.dtype == torch.float32 and A.is_contiguous() and ids.dtype == torch.int64 and ids.dim() == 2
            and ids.stride(1) == 1 and argmax.dtype == torch.uint8 and argmax.shape == (U, F_)
            and argmax.is_contiguous() and grad.dtype == torch.float32 and grad.shape == (U, F_)
            and grad.stride(1) == 1 and all(t.device.type == "cpu" for t in (A, ids, argmax, grad))):
        raise ValueError(f"char-CNN scatter: float32 A (w, S, F) contiguous, int64 ids (U, width), uint8 argmax and "
                         f"float32 grad (U, F) with contiguous rows expected; found A {A.dtype} {tuple(A.shape)}, "
                         f"ids {ids.dtype} {tuple(ids.shape)}, argmax {argmax.dtype} {tuple(argmax.shape)}, grad "
                         f"{grad.dtype} {tuple(grad.shape)}")
    if U == 0 or F_ == 0:
        return
    if int(argmax.max()) + w_max > ids.shape[1]:
        raise ValueError(f"char-CNN scatter: a window index + {w_max} exceeds the {ids.shape[1]} characters of a row")
    block = _blocks()[4]
    block[:] = (U, F_, w_max, n_sym, ids.data_ptr(), ids.stride(0), argmax.data_ptr(), grad.data_ptr(),
                grad.stride(0), A.data_ptr())
    if library().char_conv_scatter(block, torch.get_num_threads()):
        raise ValueError(f"char-CNN scatter: a character id outside [0, {n_sym})")


def activation_(t: torch.Tensor, kind: str) -> torch.Tensor:
    """``t.sigmoid_()`` / ``t.tanh_()`` (``kind`` "sigmoid" / "tanh") for a float32 CPU ``(rows, cols)`` tensor with
    contiguous rows (``activations.c``), the same bits at any thread count; returns ``t``."""
    if t.dim() != 2 or t.dtype != torch.float32 or t.device.type != "cpu" or (t.shape[1] > 1 and t.stride(1) != 1):
        raise ValueError(f"activation: a float32 CPU (rows, cols) tensor with contiguous rows expected, found "
                         f"{t.dtype} {tuple(t.shape)} of strides {t.stride()} on {t.device}")
    if t.numel():
        block = _blocks()[5]
        block[:] = (t.data_ptr(), t.shape[0], t.shape[1], t.stride(0))
        library().activation_inplace(block, {"sigmoid": 0, "tanh": 1}[kind], torch.get_num_threads())
    return t
