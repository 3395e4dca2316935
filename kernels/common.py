"""Shared pieces of the Triton kernels: device checks, matmul input modes, tile modes, a strided batched matmul.

Matmul input modes (see :func:`input_mode`): how a ``tl.dot`` reads its float32 inputs. This is not the CPU
path's ``precision`` setting (:mod:`elmo_fast.numerics`, ``fp32``/``bf16``), which the Triton backend never reads;
the two have separate names (:data:`INPUT_MODES` here, ``numerics.PRECISIONS`` there). The environment variable
keeps its released name, ``ELMO_FAST_TRITON_PRECISION``.

* ``"tf32x3"`` (default): three-pass TF32 on tensor cores (``input_precision="tf32x3"``): each input is
  split into a TF32 high part (``cvt.rna``) and a float32 remainder, three tensor-core products
  (small x big, big x small, big x big) into one float32 accumulator: near-float32 accuracy at tensor-core
  speed. Made the default after measuring it without a GPU (``benchmarks/tf32_emulation.py``: the reference
  model with every product's operand roundings emulated as the PTX computes them reproduces the TensorFlow fixtures
  within 1.7e-6 (IEEE float32: 1.2e-6; the parity tolerance is 1e-5) and the LSTM layer within 2.8x the
  float32 reference's own error, forward and backward). Under the interpreter it runs the same three
  passes emulated (code 5: the rounding by integer bit operations, exact float32 products), so the
  interpreter tests check the default mode's numerics. The large plain matmuls stay in Triton (cuBLAS has
  no three-pass TF32).
* ``"ieee"`` (alias ``"fp32"``): every matmul takes float32 inputs with IEEE float32 products
  (``input_precision="ieee"``, FMA only, no tensor cores), so results differ from the reference only by
  summation order. On CUDA the large plain matmuls (no fused epilogue beyond a bias/add) go to cuBLAS
  (``torch.matmul``, TF32 off), far faster than an FMA-only Triton kernel (``ELMO_FAST_TRITON_MATMUL=triton``
  keeps them in Triton).
* ``"tf32"``: one TF32 pass (the tensor core reads the inputs' TF32 bits), float32 accumulation; measured
  1e-3 to 8e-3 off the fixtures: opt-in only.
* ``"bf16"``: matmul inputs cast to bfloat16 (8-bit mantissa), float32 accumulation.

Select with ``ELMO_FAST_TRITON_PRECISION`` (read through :func:`elmo_fast.settings.triton_input_mode`) or
:func:`set_input_mode`. Autograd functions capture the mode's code at forward time and use it in their backward.
In every mode, cell states, gate nonlinearities, clipping, max-pooling, log-sum-exp and all
reductions outside matmuls stay in float32.

Tile modes (see :func:`gpu_tiles`): compiled kernels use the GPU tile sizes; under the interpreter the host
code picks larger tiles (fewer programs: the interpreter pays per program) unless ``ELMO_FAST_TRITON_TILES=gpu``
or :func:`tile_mode` ``("gpu")`` forces the GPU's own tiles, so that tests run the numerics of the code that
will run on the device.

Deprecated names, kept for callers of earlier releases: ``PRECISIONS``, ``DEFAULT_PRECISION``,
``PRECISION_ENV``, ``precision`` and ``set_precision`` are :data:`INPUT_MODES`, :data:`DEFAULT_INPUT_MODE`,
:data:`INPUT_MODE_ENV`, :func:`input_mode` and :func:`set_input_mode`.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import triton
import triton.language as tl

from elmo_fast import settings
from elmo_fast.backend import BackendError

from .launch import is_recording, launch, read_setting

__all__ = ["interpreting", "check_device", "input_mode", "set_input_mode", "INPUT_MODES", "DEFAULT_INPUT_MODE",
           "precision_code", "matmul", "colsum", "gpu_tiles", "tile_mode", "launch"]

#: the matmul input modes (``fp32`` is an alias of ``ieee``); the list lives in :mod:`elmo_fast.settings`
INPUT_MODES = settings.TRITON_INPUT_MODES
#: the default input mode of the kernels (see the module docstring for the measurement behind it)
DEFAULT_INPUT_MODE = "tf32x3"
INPUT_MODE_ENV = "ELMO_FAST_TRITON_PRECISION"
_input_mode: str | None = None
TILES_ENV = "ELMO_FAST_TRITON_TILES"
_tile_mode: str | None = None
MATMUL_ENV = "ELMO_FAST_TRITON_MATMUL"


def interpreting() -> bool:
    """Whether these kernels were built for Triton's interpreter.

    ``TRITON_INTERPRET=1`` is read when a ``@triton.jit`` decorator runs, i.e. when the kernel modules are
    first imported; setting it later has no effect on them, so this checks the built kernel itself.
    """
    return type(_colsum_kernel).__name__ == "InterpretedFunction"


def gpu_tiles() -> bool:
    """Whether the host code picks the compiled GPU path's tile sizes: always for compiled kernels; under the
    interpreter only when forced (:func:`tile_mode` or ``ELMO_FAST_TRITON_TILES=gpu``)."""
    mode = _tile_mode or read_setting(settings.triton_tiles)
    return mode == "gpu" or not interpreting()


@contextlib.contextmanager
def tile_mode(mode: str) -> Iterator[None]:
    """``with tile_mode("gpu"):`` run the interpreter with the GPU's tile sizes (``"auto"``: the default)."""
    global _tile_mode
    if mode not in ("auto", "gpu"):
        raise ValueError(f"tile mode {mode!r}: expected 'auto' or 'gpu'")
    previous, _tile_mode = _tile_mode, mode
    try:
        yield
    finally:
        _tile_mode = previous


def check_device(op: str, *tensors: torch.Tensor) -> None:
    """Raise :class:`BackendError` unless every tensor can run through a Triton kernel.

    CUDA tensors run compiled kernels; CPU tensors only run under ``TRITON_INTERPRET=1`` (which must be
    set before ``triton`` is first imported).
    """
    for t in tensors:
        if t is None:
            continue
        if t.device.type == "cuda":
            continue
        if t.device.type == "cpu" and interpreting():
            continue
        if t.device.type == "meta" and is_recording():  # the compile check runs the host code on meta tensors
            continue
        raise BackendError(
            f"triton backend, op '{op}': tensor on device '{t.device}' cannot run; expected CUDA tensors "
            f"(or CPU tensors with TRITON_INTERPRET=1 set before triton is imported)")
    for t in tensors:
        if t is not None and t.is_floating_point() and t.dtype != torch.float32:
            raise BackendError(f"triton backend, op '{op}': expected float32 tensors, found {t.dtype}")


def input_mode() -> str:
    """The active matmul input mode: the :func:`set_input_mode` value, else ``$ELMO_FAST_TRITON_PRECISION``, else
    :data:`DEFAULT_INPUT_MODE` (tf32x3). A bad variable is a :class:`BackendError` naming it."""
    return _input_mode or read_setting(settings.triton_input_mode)


def set_input_mode(name: str | None) -> None:
    """Set the matmul input mode for this process (``None`` returns to the environment/default)."""
    global _input_mode
    if name is not None and name not in INPUT_MODES:
        raise ValueError(f"input mode (precision) {name!r}: expected one of {INPUT_MODES}")
    _input_mode = name


# deprecated names of the above (earlier releases called the input mode "precision")
PRECISIONS = INPUT_MODES
DEFAULT_PRECISION = DEFAULT_INPUT_MODE
PRECISION_ENV = INPUT_MODE_ENV
precision = input_mode
set_precision = set_input_mode


#: kernel constexpr per mode (under the interpreter 3 is bf16 and 5 tf32x3, emulated with exact float32 products)
PREC_CODES = {"fp32": 0, "ieee": 0, "tf32": 1, "bf16": 2, "tf32x3": 4}


def precision_code(name: str | None = None) -> int:
    """The kernels' ``PREC`` constexpr for input mode ``name`` (default the active :func:`input_mode`): 0 = IEEE,
    1 = tf32, 2 = bf16, 4 = tf32x3. Under the interpreter bf16 runs as 3 and tf32x3 as 5 (the same roundings
    emulated on float32 dots); one-pass tf32 runs as IEEE there."""
    code = PREC_CODES[name or input_mode()]
    if interpreting():
        code = {2: 3, 4: 5, 1: 0}.get(code, code)
    return code


@triton.jit
def _tf32_rna(x):
    """float32 -> TF32 (10 mantissa bits) rounded to nearest, ties away from zero, as ``cvt.rna.tf32.f32``
    (integer add of half a TF32 ulp to the magnitude bits, then mask; for the interpreter's emulation)."""
    bits = x.to(tl.int32, bitcast=True)
    return ((bits + 0x1000) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def _tf32_read(x):
    """What a TF32 tensor-core pass reads of a float32 register: its TF32 bits (13 low mantissa bits dropped)."""
    return (x.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def mm(a, b, PREC: tl.constexpr):
    """``a @ b`` with float32 accumulation in the requested input precision (0 ieee, 1 tf32, 2 bf16, 4 tf32x3;
    3 and 5: bf16 and tf32x3 emulated with exact float32 products, for the interpreter)."""
    if PREC == 4:
        return tl.dot(a, b, input_precision="tf32x3")
    elif PREC == 5:  # tf32x3 as Triton's F32DotTC pass lowers it: rna big parts, remainders read as TF32
        a_big = _tf32_rna(a)
        b_big = _tf32_rna(b)
        acc = tl.dot(_tf32_read(a - a_big), b_big, input_precision="ieee")
        acc = tl.dot(a_big, _tf32_read(b - b_big), acc, input_precision="ieee")
        return tl.dot(a_big, b_big, acc, input_precision="ieee")
    elif PREC == 3:  # bf16 rounding emulated with float32 products (exact): the interpreter's bf16 dot is broken
        return tl.dot(a.to(tl.bfloat16).to(tl.float32), b.to(tl.bfloat16).to(tl.float32), input_precision="ieee")
    elif PREC == 2:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), out_dtype=tl.float32)
    elif PREC == 1:
        return tl.dot(a, b, input_precision="tf32")
    else:
        return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _matmul_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, add_ptr, M, N, K,
                   s_az, s_am, s_ak, s_bz, s_bk, s_bn, s_cz, s_cm, s_cn, s_dz, s_dm, s_dn,
                   HAS_BIAS: tl.constexpr, HAS_ADD: tl.constexpr, PREC: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    z = tl.program_id(2).to(tl.int64)  # 64-bit offsets: a (2, B*T, 4C) output passes 2^31 elements
    rm = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    a_base = a_ptr + z * s_az
    b_base = b_ptr + z * s_bz
    for k0 in range(0, K, BK):
        ka = k0 + rk
        a = tl.load(a_base + rm[:, None] * s_am + ka[None, :] * s_ak,
                    mask=(rm[:, None] < M) & (ka[None, :] < K), other=0.0)
        b = tl.load(b_base + ka[:, None] * s_bk + rn[None, :] * s_bn,
                    mask=(ka[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc += mm(a, b, PREC)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
    cmask = (rm[:, None] < M) & (rn[None, :] < N)
    if HAS_ADD:
        acc += tl.load(add_ptr + z * s_dz + rm[:, None] * s_dm + rn[None, :] * s_dn, mask=cmask, other=0.0)
    tl.store(c_ptr + z * s_cz + rm[:, None] * s_cm + rn[None, :] * s_cn, acc, mask=cmask)


#: GPU tiles of the Triton matmul (used for the tensor-core modes; fp32 products go to cuBLAS on CUDA)
MATMUL_TILES = (64, 64, 32)


def _as3(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    if t.dim() == 2:
        return t, (0, t.stride(0), t.stride(1))
    return t, (t.stride(0), t.stride(1), t.stride(2))


def cublas_matmul(prec: int, a: torch.Tensor) -> bool:
    """Whether :func:`matmul` hands this product to cuBLAS: CUDA tensors (or the compile check's recording,
    which stands for them) in the fp32 mode, unless ``ELMO_FAST_TRITON_MATMUL=triton``."""
    choice = read_setting(settings.triton_matmul)
    return prec == 0 and choice == "cublas" and (a.device.type == "cuda" or (is_recording() and not interpreting()))


def matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None, add: torch.Tensor | None = None,
           prec: int | None = None) -> torch.Tensor:
    """``a @ b (+ bias) (+ add)`` in one Triton kernel (or cuBLAS, see :func:`cublas_matmul`), float32 output
    and accumulation.

    Args:
        a: ``(M, K)`` or ``(Z, M, K)`` (any strides, e.g. a transposed view).
        b: ``(K, N)`` or ``(Z, K, N)``; a 2-D operand is shared by every batch entry.
        bias: optional ``(N,)`` added to every row.
        add: optional tensor of the output's shape added in the epilogue.
        prec: precision code (see :func:`precision_code`); default the active mode.

    Returns:
        ``(M, N)`` or ``(Z, M, N)`` float32.
    """
    prec = precision_code() if prec is None else prec
    Z = max(a.shape[0] if a.dim() == 3 else 1, b.shape[0] if b.dim() == 3 else 1)
    M, K = a.shape[-2], a.shape[-1]
    N = b.shape[-1]
    if b.shape[-2] != K:
        raise ValueError(f"matmul: inner sizes differ: a {tuple(a.shape)} @ b {tuple(b.shape)}")
    batched = a.dim() == 3 or b.dim() == 3
    out = torch.empty((Z, M, N) if batched else (M, N), device=a.device, dtype=torch.float32)
    if out.numel() == 0:
        return out
    if K == 0:
        out.zero_()
        if bias is not None:
            out += bias
        if add is not None:
            out += add
        return out
    if cublas_matmul(prec, a):  # IEEE float32 GEMM (torch's default: TF32 off), then the epilogue
        with torch.cuda.device(a.device) if a.device.type == "cuda" else contextlib.nullcontext():
            out = torch.matmul(a, b)
            if bias is not None:
                out += bias
            if add is not None:
                out += add
        return out
    _, sa = _as3(a)
    _, sb = _as3(b)
    _, sc = _as3(out)
    sd = _as3(add)[1] if add is not None else (0, 0, 0)
    BM, BN, BK = MATMUL_TILES if gpu_tiles() else (128, 128, 64)  # interpreter: fewer programs
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN), Z)
    launch(_matmul_kernel, grid, (a, b, out, bias if bias is not None else out, add if add is not None else out,
                                  M, N, K, *sa, *sb, *sc, *sd),
           dict(HAS_BIAS=bias is not None, HAS_ADD=add is not None, PREC=prec, BM=BM, BN=BN, BK=BK),
           num_warps=8 if prec in (4, 5) else 4, wide=True)  # tf32x3 at 4 warps spills 20-56 B on sm_80 (compile check)
    return out


@triton.jit(do_not_specialize=["M"])
def _colsum_kernel(x_ptr, out_ptr, M, N, s_m, s_n, BM: tl.constexpr, BN: tl.constexpr):
    pid = tl.program_id(0)
    rn = pid * BN + tl.arange(0, BN)
    acc = tl.zeros((BN,), dtype=tl.float32)
    for m0 in range(0, M, BM):
        rm = m0 + tl.arange(0, BM)
        x = tl.load(x_ptr + rm[:, None] * s_m + rn[None, :] * s_n,
                    mask=(rm[:, None] < M) & (rn[None, :] < N), other=0.0)
        acc += tl.sum(x, axis=0)
    tl.store(out_ptr + rn, acc, mask=rn < N)


def colsum(x: torch.Tensor) -> torch.Tensor:
    """``(M, N) -> (N,)`` column sums (bias gradients), deterministic (one program per column block)."""
    M, N = x.shape
    out = torch.empty(N, device=x.device, dtype=torch.float32)
    if N == 0:
        return out
    BN = 64
    launch(_colsum_kernel, (triton.cdiv(N, BN),), (x, out, M, N, x.stride(0), x.stride(1)), dict(BM=32, BN=BN))
    return out


@triton.jit
def tanh(x):
    """float32 tanh from one exp (no libdevice call, so it also runs in the interpreter); abs error ~1e-7."""
    e = tl.exp(-2.0 * tl.abs(x))
    return tl.where(x >= 0, 1.0, -1.0) * (1.0 - e) / (1.0 + e)
