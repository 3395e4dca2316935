"""The tensor-core product precisions of the kernels, emulated in PyTorch on any device (no GPU needed).

Triton's ``tl.dot`` on float32 inputs computes, per ``input_precision``:

* ``"ieee"``: float32 products and sums (FMA): :func:`product` mode ``"ieee"``.
* ``"tf32"``: one tensor-core pass on the float32 registers as they are: Triton 3.9 emits no conversion
  for a plain TF32 dot (checked in the PTX for sm_80 ``mma.sync ... .tf32`` and sm_90 ``wgmma ... .tf32``),
  so the tensor core reads only the TF32 bits of each operand (10 explicit mantissa bits, float32's exponent
  range): the 13 low mantissa bits are dropped, i.e. truncation (``read="trunc"``, the default here;
  ``read="rna"`` models a rounding conversion instead).
* ``"tf32x3"`` (Triton's ``F32DotTC`` pass, the CUTLASS "3xTF32" trick): ``a_big = cvt.rna.tf32.f32(a)``
  (round to nearest, **ties away from zero**, PTX ISA ``cvt``; :func:`round_tf32`),
  ``a_small = a - a_big`` (exact in float32), same for ``b``; then ``acc = dot(a_small, b_big, acc)``,
  ``acc = dot(a_big, b_small, acc)``, ``acc = dot(a_big, b_big, acc)``, three TF32 tensor-core passes into
  one float32 accumulator. The small parts are *not* converted again (the PTX has exactly one ``cvt.rna``
  per operand element): the tensor core reads their TF32 bits (``read="trunc"``). ``read="rna"`` rounds them
  instead and ``read="exact"`` keeps all their bits (an upper bound on what three passes can give), so a
  caller can see how much the hardware's reading matters.

What is not emulated: the tensor core's own accumulation inside one MMA instruction (its internal
alignment and rounding of the partial sums is not IEEE round-to-nearest); here every pass is an IEEE float32
product/sum of the rounded operands (the products of two TF32 values are exact in float32). The passes are
summed in the kernel's order (small terms first, then the big product).

:func:`emulated_products` is a ``TorchFunctionMode`` that replaces every product of a reference model
(``F.linear``, ``addmm``, ``matmul``/``@``, ``mm``, ``bmm``, ``F.conv1d``) by its emulation, so that the
pure-PyTorch reference runs with the products of the Triton kernels in a given mode
(``benchmarks/tf32_emulation.py`` measures the shared fixtures that way). A development tool: it lives in the
repository's ``tools/`` folder, not in the installed package.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["round_tf32", "read_tf32", "split_tf32", "product", "emulated_products", "MODES", "READS"]

MODES = ("ieee", "tf32", "tf32x3")
READS = ("trunc", "rna", "exact")
_LOW = 13                      # float32 has 23 explicit mantissa bits, TF32 10: 13 are dropped
_HALF = 1 << (_LOW - 1)        # 0x1000: half a TF32 unit in the last place, in float32 bits
_KEEP = ~((1 << _LOW) - 1)     # 0xFFFFE000 as int32


def round_tf32(x: torch.Tensor, mode: str = "rna") -> torch.Tensor:
    """Round float32 values to TF32 (10 explicit mantissa bits), returned as float32.

    Args:
        x: float32 tensor (any shape).
        mode: ``"rna"`` round to nearest, ties away from zero (``cvt.rna.tf32.f32``); ``"trunc"`` drop the
            low 13 mantissa bits (toward zero).

    Float32's sign-magnitude bit pattern makes both exact integer operations: adding half an ulp of TF32 to
    the magnitude bits and masking rounds half away from zero (a carry out of the mantissa moves to the
    next binade, as it should). Infinities and NaNs are returned unchanged.
    """
    if x.dtype != torch.float32:
        raise TypeError(f"round_tf32: expected a float32 tensor, found {x.dtype}")
    if mode not in ("rna", "trunc"):
        raise ValueError(f"round_tf32: mode {mode!r}: expected 'rna' or 'trunc'")
    bits = x.contiguous().view(torch.int32)
    if mode == "rna":
        bits = bits + _HALF  # magnitude + half an ulp (the sign bit is not touched: no carry reaches it
        # except from the largest finite binade, which rounds to infinity exactly as the conversion does)
    out = (bits & _KEEP).view(torch.float32)
    return torch.where(torch.isfinite(x), out, x)


def read_tf32(x: torch.Tensor, read: str = "trunc") -> torch.Tensor:
    """A float32 operand as a TF32 tensor-core pass reads it: ``"trunc"`` its TF32 bits (the hardware),
    ``"rna"`` rounded to nearest (ties away), ``"exact"`` unchanged (no loss)."""
    if read == "exact":
        return x
    return round_tf32(x, read)


def split_tf32(x: torch.Tensor, read: str = "trunc") -> tuple[torch.Tensor, torch.Tensor]:
    """``x -> (big, small)`` as tf32x3 feeds them to the tensor core: ``big = rna(x)``, ``small = x - big``
    as read by a TF32 pass (:func:`read_tf32`)."""
    big = round_tf32(x, "rna")
    rest = x - big  # exact: |rest| <= half a TF32 ulp of x, representable in float32
    return big, read_tf32(rest, read)


def product(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], a: torch.Tensor, b: torch.Tensor,
            mode: str, read: str = "trunc") -> torch.Tensor:
    """``fn(a, b)`` (a bilinear float32 product: matmul, linear without bias, conv without bias) as the
    kernels' ``tl.dot`` computes it in ``mode`` (``"ieee"``, ``"tf32"``, ``"tf32x3"``)."""
    if mode == "ieee":
        return fn(a, b)
    if mode == "tf32":
        return fn(read_tf32(a, read), read_tf32(b, read))
    if mode == "tf32x3":
        a_big, a_small = split_tf32(a, read)
        b_big, b_small = split_tf32(b, read)
        return (fn(a_small, b_big) + fn(a_big, b_small)) + fn(a_big, b_big)
    raise ValueError(f"product mode {mode!r}: expected one of {MODES}")


class _EmulatedMM(torch.autograd.Function):
    """``a @ b`` for 2-D float32 operands, emulated in the forward *and* in both gradient products (the
    kernels compute every product of the backward pass in the same mode)."""

    @staticmethod
    def forward(ctx, a, b, mode, read):  # type: ignore[override]
        ctx.save_for_backward(a, b)
        ctx.mode, ctx.read = mode, read
        return product(torch.mm, a, b, mode, read)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        a, b = ctx.saved_tensors
        ga = product(torch.mm, g, b.t(), ctx.mode, ctx.read) if ctx.needs_input_grad[0] else None
        gb = product(torch.mm, a.t(), g, ctx.mode, ctx.read) if ctx.needs_input_grad[1] else None
        return ga, gb, None, None


def _mm(a: torch.Tensor, b: torch.Tensor, mode: str, read: str) -> torch.Tensor:
    """Emulated ``a @ b`` with emulated gradients; ``a`` may have leading batch dims, ``b`` is 2-D."""
    lead = a.shape[:-1]
    return _EmulatedMM.apply(a.reshape(-1, a.shape[-1]), b, mode, read).reshape(*lead, b.shape[-1])


class emulated_products(TorchFunctionMode):
    """``with emulated_products("tf32x3"):`` every float32 product of the enclosed PyTorch code is computed
    as the kernels' ``tl.dot`` in that mode (see the module docstring). Float64 code is left alone.

    ``counts`` records how many products of each kind were replaced (a run that replaced none is a bug in
    the caller's assumption about which ops its model uses). Gradients of 2-D products (``linear``, ``mm``,
    ``addmm``, ``matmul`` with a 2-D right operand) are emulated too; other products' gradients run in
    IEEE float32 and are counted as ``backward_not_emulated``.
    """

    def __init__(self, mode: str, read: str = "trunc") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"emulated_products: mode {mode!r}: expected one of {MODES}")
        if read not in READS:
            raise ValueError(f"emulated_products: read {read!r}: expected one of {READS}")
        self.mode, self.read = mode, read
        self.counts: dict[str, int] = {}

    def _p(self, name: str, fn: Callable, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.counts[name] = self.counts.get(name, 0) + 1
        if fn is torch.mm or fn is torch.matmul:
            if b.dim() == 2 and a.dim() >= 1:  # gradients emulated too
                return _mm(a, b, self.mode, self.read) if a.dim() >= 2 else _mm(a[None], b, self.mode, self.read)[0]
        if fn is F.linear:
            return _mm(a, b.t(), self.mode, self.read)
        if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
            self.counts["backward_not_emulated"] = self.counts.get("backward_not_emulated", 0) + 1
        return product(fn, a, b, self.mode, self.read)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if self.mode == "ieee" or not tensors or any(t.dtype != torch.float32 for t in tensors[:3]):
            return func(*args, **kwargs)
        if func is F.linear:
            x, w = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            y = self._p("linear", F.linear, x, w)
            return y if bias is None else y + bias
        if func is torch.addmm and not kwargs:
            bias, a, b = args
            return bias + self._p("addmm", torch.mm, a, b)
        if func in (torch.matmul, torch.Tensor.__matmul__, torch.Tensor.matmul) and not kwargs:
            return self._p("matmul", torch.matmul, args[0], args[1])
        if func in (torch.mm, torch.Tensor.mm) and not kwargs:
            return self._p("mm", torch.mm, args[0], args[1])
        if func in (torch.bmm, torch.Tensor.bmm) and not kwargs:
            return self._p("bmm", torch.bmm, args[0], args[1])
        if func in (F.conv1d, torch.conv1d):
            x, w = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            rest = dict(kwargs)
            rest.pop("bias", None)
            y = self._p("conv1d", lambda a, b: F.conv1d(a, b, None, *args[3:], **rest), x, w)
            return y if bias is None else y + bias[None, :, None]
        if func in (torch.addmm, torch.baddbmm, torch.einsum, F.conv2d, torch.Tensor.addmm):
            raise NotImplementedError(f"emulated_products: {func} with these arguments is not emulated")
        return func(*args, **kwargs)
