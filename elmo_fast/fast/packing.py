"""Weights prepared once and reused: reordered/fused matrices and oneDNN-packed linear weights.

A plain ``x @ W`` on CPU lets the BLAS repack ``W`` on every call; for the biLSTM's recurrent matmul
(e.g. 32 x 512 x 16384 once per time step) that repacking costs about half of the time. oneDNN
(``torch.ops.mkldnn``) can pack a weight once into its blocked layout; we keep those packed copies in a
cache keyed by the source parameters' identity and version counters, so an optimizer step (which bumps
``Tensor._version``) or ``load_state_dict`` invalidates them automatically.

**torch.inference_mode()**: everything prepared here is made as normal tensors, also when the first call runs
inside ``inference_mode`` (:func:`normal_tensors`), so a module first used there works afterwards under
``no_grad`` and with autograd (inference tensors cannot be changed in place or saved for backward outside it).
A source that is itself an inference tensor (a model *built* inside ``inference_mode``) has no version counter:
its cache entry is keyed by its storage alone, so an in-place change of it inside ``inference_mode`` is not
seen; call :func:`clear_cache` after such a change (``load_state_dict`` outside ``inference_mode`` cannot change
an inference tensor at all).

**bf16 products** (``numerics`` precision ``"bf16"``, opt-in): every product of this module (:class:`PackedLinear`,
:class:`PairLinear`, :func:`matmul`) takes bfloat16 inputs and accumulates in float32; the result comes back as
float32. The master weights stay float32: bf16 copies (and their oneDNN-packed form) are made on first bf16
use and live next to the float32 packed weights, so they are rebuilt when a parameter changes. Biases stay
float32 and are added in the float32 accumulator. Everything around the products (cell state, clips,
activations, softmax statistics) is float32, because every result handed back is float32.

Where the remaining error comes from: oneDNN's packed bf16 linear (and torch's CPU bf16 matmul) *writes* its
result as bfloat16 (there is no float32-output variant on CPU: ``torch.mm(..., out_dtype=torch.float32)`` is
CUDA-only in torch 2.13, and ``mkldnn::_linear_pointwise`` returns the input's dtype), so each product's result
is rounded once to 8 significant bits (relative error <= 2^-9) before it is widened to float32; together with
the rounding of the inputs that is the whole bf16 error. ``benchmarks/bf16.py`` measures what it does to the
model's outputs.

Without bf16 products (:data:`BF16_NATIVE` false: a CPU without AVX-512, e.g. an AVX2 laptop, or a torch build
without oneDNN) precision ``"bf16"`` runs **float32**, and says so once in a warning: emulated bf16 (torch's own
bfloat16 matmul there) is slower than float32 and less accurate, so it would give the user nothing. Tests set
:data:`BF16_EMULATE` to run the bf16 arithmetic through torch's bfloat16 matmul on any CPU (the same arithmetic:
bf16 inputs, float32 accumulation, the result rounded once). ``order`` does not apply to bf16 products (there is
no AllenNLP order to keep in bf16): they always take the fastest path.
"""
from __future__ import annotations

import logging
import os
import weakref
from typing import Callable, Sequence

import torch

from .. import numerics
from ..modes import normal_tensors

__all__ = ["BF16_NATIVE", "MKLDNN", "PackedLinear", "PairLinear", "bf16_products", "cached", "clear_cache",
           "matmul", "normal_tensors", "onednn_products", "operand", "pair_matmul"]

log = logging.getLogger(__name__)

#: whether oneDNN packed linear is usable in this torch build
MKLDNN = bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _bf16_native() -> bool:
    """oneDNN's bf16 products run on this CPU, and oneDNN's instruction set is not capped below AVX-512 by the
    user (``ONEDNN_MAX_CPU_ISA``/``DNNL_MAX_CPU_ISA``: with ``AVX2`` oneDNN has no bf16 kernels to run)."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").strip().upper()
    if not cap.startswith(("ALL", "AVX512", "AVX10", "AMX")):
        return False
    try:
        return MKLDNN and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


#: whether oneDNN runs bfloat16 products on this CPU (AVX-512; natively fast with ``avx512_bf16`` or AMX)
BF16_NATIVE = _bf16_native()
#: run the bf16 arithmetic without oneDNN's bf16 products, through torch's bfloat16 matmul (tests: the bf16 path
#: on CPUs without them; users get float32 there, see the module docstring)
BF16_EMULATE = False
_WARNED: set[str] = set()


def bf16_products() -> bool:
    """Whether products take bfloat16 inputs now: ``numerics`` precision ``"bf16"`` on a CPU with bf16 products
    (else float32, with one warning)."""
    if numerics.current().precision != "bf16":
        return False
    if BF16_NATIVE or BF16_EMULATE:
        return True
    if "bf16" not in _WARNED:
        _WARNED.add("bf16")
        log.warning("precision='bf16': this CPU (or torch build) has no bf16 products (they need AVX-512, best "
                    "with AVX-512 BF16 or AMX); running float32 instead, which is faster and exact here")
    return False

#: id(anchor tensor) -> (weak reference to it, {key: (stamp, value)}); tensors cannot be WeakKeyDictionary
#: keys (their ``==`` is elementwise), so entries are keyed by id and dropped by a finalizer
_CACHE: dict[int, tuple[weakref.ref, dict]] = {}


def _drop(key: int) -> None:
    _CACHE.pop(key, None)


def _stamp(tensors: Sequence[torch.Tensor]) -> tuple:
    # an inference tensor has no version counter (reading ``_version`` raises): its storage identifies it
    return tuple((t.data_ptr(), None if t.is_inference() else t._version, tuple(t.shape), t.dtype, t.device)
                 for t in tensors)


def cached(key: str, sources: Sequence[torch.Tensor], build: Callable[[], object]) -> object:
    """``build()`` once per (key, state of ``sources``); rebuilt when any source changes (version/storage).

    The cache entry hangs off ``sources[0]`` (weakly), so it dies with the parameter.
    """
    anchor = sources[0]
    slot = _CACHE.get(id(anchor))
    if slot is None or slot[0]() is not anchor:
        slot = (weakref.ref(anchor), {})
        _CACHE[id(anchor)] = slot
        weakref.finalize(anchor, _drop, id(anchor))
    entry = slot[1]
    stamp = _stamp(sources)
    hit = entry.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    with normal_tensors():
        value = build()
    entry[key] = (stamp, value)
    return value


def clear_cache() -> None:
    """Drop every prepared weight (they are rebuilt on next use)."""
    _CACHE.clear()


def _row_bucket(n: int) -> int:
    """``n`` rounded up to one of at most 16 sizes per power of two (at most 1/16 extra rows).

    oneDNN's packed linear keeps memory for every distinct input row count it has seen, so a long embed run,
    where the number of distinct tokens per batch varies, would grow without bound; rounding bounds the count.
    """
    if n <= 64:
        return n
    step = 1 << (n.bit_length() - 5)
    return (n + step - 1) // step * step


class _SourceWeight:
    """A weight kept as the view it was given (``_source``, possibly transposed), with its float32 contiguous copy
    made only when a product asks for it (:attr:`weight`)."""

    __slots__ = ("_source", "_weight")

    def __init__(self, W: torch.Tensor) -> None:
        self._source = W.detach()
        self._weight: torch.Tensor | None = None

    @property
    def weight(self) -> torch.Tensor:
        """The weight (``(in, out)``, or ``(D, in, out)`` for a pair) float32, contiguous (made once)."""
        if self._weight is None:
            with normal_tensors():
                self._weight = self._source.contiguous()
        return self._weight


class PackedLinear(_SourceWeight):
    """``y = x @ W (+ b)`` for ``x`` ``(n, in)`` float32 CPU with ``W`` ``(in, out)`` packed once; ``y`` ``(n, out)``
    float32.

    Uses oneDNN's packed linear when available (weights reordered into its blocked layout a single time, on
    first use), otherwise ``torch.addmm``/``torch.mm`` on a contiguous copy. With ``numerics`` precision
    ``"bf16"`` the product takes bfloat16 inputs (a bf16 copy of ``W``, packed once, kept beside the float32
    one; the bias stays float32) and accumulates in float32; see the module docstring for the rounding of the
    result. Not differentiable: for inference and for the hand-written backward of :mod:`elmo_fast.fast.lstm` only.
    """

    __slots__ = ("bias", "_packed", "_packed16", "_weight16", "out_features", "in_features", "batch_hint")

    #: below this many multiply-adds per call the BLAS path is used: oneDNN always starts its thread team,
    #: which costs more than a tiny product (and stalls badly when the CPUs are shared)
    MIN_PACKED_MACS = 1 << 20

    def __init__(self, W: torch.Tensor, b: torch.Tensor | None = None, batch_hint: int = 32) -> None:
        # ``W`` may be a transposed view (the biLSTM backward's ``W_hᵀ``): oneDNN packs from it as it is, so the
        # float32 contiguous copy is made only if a BLAS product asks for it
        super().__init__(W)
        self.in_features, self.out_features = W.shape
        self.bias = None if b is None else b.detach().contiguous()
        self.batch_hint = max(int(batch_hint), 1)
        self._packed: object = False   # False: not built yet; None: oneDNN cannot pack this weight
        self._packed16: object = False
        self._weight16: torch.Tensor | None = None

    def _reorder(self, W: torch.Tensor, available: bool) -> torch.Tensor | None:
        """``W`` ``(in, out)`` in oneDNN's packed layout, or None where oneDNN cannot pack this weight."""
        if available and self._source.device.type == "cpu" and self._source.dtype == torch.float32:
            # oneDNN reorders from any strides: no transposing copy first (15 ms for a 512 x 16384 weight)
            return torch.ops.mkldnn._reorder_linear_weight(W.t(), self.batch_hint)
        return None

    @property
    def packed(self) -> torch.Tensor | None:
        """The float32 oneDNN-packed weight (built on first use), or None where oneDNN cannot pack it."""
        if self._packed is False:
            with normal_tensors():
                self._packed = self._reorder(self._source, MKLDNN)
        return self._packed  # type: ignore[return-value]

    @property
    def weight16(self) -> torch.Tensor:
        """``W`` ``(in, out)`` rounded to bfloat16 (made once, in the source's layout)."""
        if self._weight16 is None:
            with normal_tensors():
                self._weight16 = self._source.to(torch.bfloat16)
        return self._weight16

    @property
    def packed16(self) -> torch.Tensor | None:
        """The bfloat16 oneDNN-packed weight (built on first bf16 use), or None without native bf16 products."""
        if self._packed16 is False:
            with normal_tensors():
                self._packed16 = self._reorder(self.weight16, BF16_NATIVE)
        return self._packed16  # type: ignore[return-value]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:
            return x.new_zeros(0, self.out_features, dtype=torch.float32)
        if bf16_products():
            return self.bf16(x).float()
        if x.shape[0] * self.in_features * self.out_features >= self.MIN_PACKED_MACS and self.packed is not None:
            return self._onednn(x, self.packed)
        if self.bias is not None:
            return torch.addmm(self.bias, x, self.weight)
        return x @ self.weight

    def _onednn(self, x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        rows = _row_bucket(n)
        if rows != n:  # oneDNN keeps memory per distinct input shape: bound the number of shapes
            x = torch.cat([x, x.new_zeros(rows - n, x.shape[1])])
        y = torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")
        return y if rows == n else y[:n]

    def bf16(self, x: torch.Tensor) -> torch.Tensor:
        """The bf16 product ``x @ W (+ b)`` of ``x`` ``(n, in)`` (any float dtype; rounded to bf16 here), as it
        comes out: bfloat16 from oneDNN (bias added in float32 before the result is rounded), or float32
        (``bf16 @ bf16`` widened, then the float32 bias added) on the fallback path. ``n`` may be 0."""
        if x.shape[0] == 0:
            return x.new_zeros(0, self.out_features, dtype=torch.float32)
        x16 = x.to(torch.bfloat16)
        packed = self.packed16
        if packed is not None:  # no small-product threshold: torch's bf16 mm goes through oneDNN as well
            return self._onednn(x16, packed)
        y = torch.mm(x16, self.weight16)
        return y.float() if self.bias is None else torch.add(self.bias, y)


def onednn_products() -> bool:
    """Whether large products go through oneDNN-packed weights (``numerics`` order ``"fast"``, the default).

    Their sums are ordered differently from the BLAS's, which AllenNLP uses: on long sentences of the original
    model this alone makes the biLSTM drift from AllenNLP by several times its own 1-vs-2-thread difference; with
    order ``"allennlp"`` (or ``ELMO_FAST_ONEDNN=0``) every product is a BLAS product in AllenNLP's grouping
    (:mod:`elmo_fast.fast.lstm`) and the biLSTM gives AllenNLP's bits (``benchmarks/allennlp_parity.py --order
    allennlp,fast``), at a speed cost on large models (``benchmarks/exact_order.py``).
    """
    return numerics.current().order == "fast"


# ----------------------------------------------------------------------------------------------------------
# Products over the stacked directions
# ----------------------------------------------------------------------------------------------------------
class PairLinear(_SourceWeight):
    """``y[d] = x[d] @ W[d] (+ b[d])`` for ``D`` stacked directions, weights prepared once.

    Products of a single row, and all products with a small weight (at most :attr:`BMM_MAX_WEIGHT`
    elements per direction, e.g. the ``small`` model's 128 x 4096), are latency/memory bound: one
    ``torch.bmm`` over the directions runs them on all cores at once and streams both weights in one call.
    Otherwise each direction's oneDNN-packed weight (:class:`PackedLinear`) is used: it is what makes a
    32-row recurrent product of the original model fast. Not differentiable.

    With ``numerics`` precision ``"bf16"``: bfloat16 inputs, float32 accumulation, float32 results (written into
    the float32 ``out`` / accumulator). Weights of at most :attr:`BMM_MAX_WEIGHT` elements whose output is at most
    :attr:`BF16_BMM_MAX_OUT` wide take one bf16 ``torch.bmm`` over the directions (no per-direction calls, no
    packing; on the 2-core VM at 2 threads and 32 rows, bmm vs packed for both directions: ``1024 -> 128`` 76 vs
    111 us, ``128 -> 1024`` 79 vs 112 us, ``4096 -> 128`` 226 vs 255 us; ``benchmarks/products.py --precision
    bf16``); the others go through the bf16 oneDNN-packed weights when the CPU has them (a bf16 packed product of
    one row reads half the bytes, so it beats the float32 bmm there too), else the bf16 bmm as well. The bmm rounds
    the product to bf16 before the float32 bias is added, the packed product after. ``order`` is ignored for bf16
    products.

    Args:
        W: ``(D, in, out)``; b: ``(D, out)`` or None; batch_hint: typical row count for oneDNN's packing.
    """

    __slots__ = ("bias", "_batch_hint", "_packed", "_weight16")

    #: ``benchmarks/products.py`` on the 2-core AMD EPYC VM: for the small model's weights one bmm is as fast or
    #: faster at almost every row count (1-997); for 512 x 16384 only at one row
    BMM_MAX_WEIGHT = 1 << 20
    #: bf16: widest output for which a small weight takes the bf16 bmm (the small model's ``128 -> 4096`` recurrent
    #: product is faster packed at 32 rows: 243 vs 262 us at 2 threads)
    BF16_BMM_MAX_OUT = 1024

    def __init__(self, W: torch.Tensor, b: torch.Tensor | None = None, batch_hint: int = 32) -> None:
        # made lazily: a pair built on a transposed view (the biLSTM backward) that only runs bf16 bmm products
        # converts the view to bf16 directly and never makes the float32 contiguous copy
        super().__init__(W)
        self._packed: list[PackedLinear] | None = None
        self._batch_hint = batch_hint
        self.bias = None if b is None else b.detach().contiguous()
        self._weight16: torch.Tensor | None = None

    @property
    def packed(self) -> list[PackedLinear]:
        """One :class:`PackedLinear` per direction (made once; each packs on first use)."""
        if self._packed is None:
            self._packed = [PackedLinear(self._source[d], None if self.bias is None else self.bias[d],
                                         self._batch_hint) for d in range(self._source.shape[0])]
        return self._packed

    def _bmm(self, n: int) -> bool:
        _, k, m = self._source.shape
        return (n == 1 or k * m <= self.BMM_MAX_WEIGHT or not self.packed or self.packed[0].packed is None
                or not onednn_products())

    def _bf16_packed(self) -> bool:
        """Whether bf16 products take the per-direction packed weights (packing them on first use)."""
        _, k, m = self._source.shape
        if k * m <= self.BMM_MAX_WEIGHT and m <= self.BF16_BMM_MAX_OUT:
            return False
        return bool(self.packed) and self.packed[0].packed16 is not None

    def _bf16_bmm(self, x: torch.Tensor) -> torch.Tensor:
        """Fallback bf16 product over the pair, float32 result (bias added after widening)."""
        if self._weight16 is None:  # (a transposed source stays transposed: torch.bmm takes it as it is)
            with normal_tensors():
                self._weight16 = self._source.to(torch.bfloat16)
        y = torch.bmm(x.to(torch.bfloat16), self._weight16)
        return y.float() if self.bias is None else torch.add(self.bias.unsqueeze(1), y)

    def _call_bf16(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        D, n, _ = x.shape
        if not self._bf16_packed():
            y = self._bf16_bmm(x)
            return y if out is None else out.copy_(y)
        if out is None:
            out = x.new_empty(D, n, self._source.shape[2], dtype=torch.float32)
        x16 = x.to(torch.bfloat16)      # one conversion for all directions (per-step calls are op-count bound)
        for d, p in enumerate(self.packed):
            out[d].copy_(p.bf16(x16[d]))  # widened while copied: no separate float32 temporary
        return out

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(D, n, in)`` -> ``(D, n, out)`` float32 (written into ``out`` when given)."""
        if bf16_products():
            return self._call_bf16(x, out)
        if self._bmm(x.shape[1]):
            if self.bias is None:
                return torch.bmm(x, self.weight, out=out)
            return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight, out=out)
        ys = [p(x[d]) for d, p in enumerate(self.packed)]
        if out is None:
            return torch.stack(ys)
        for d, y in enumerate(ys):
            out[d].copy_(y)
        return out

    def add_into_fn(self, n: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
        """``(acc, x) -> acc += (x @ W + b)`` for ``acc`` ``(D, n, out)`` and ``x`` ``(D, n, in)`` (the bias,
        if any, is added to the product before the product is added to ``acc``: AllenNLP's order), the
        product's path chosen once for ``n`` rows (for per-step loops; the precision is read now too)."""
        if bf16_products():
            if self._bf16_packed():
                packed16 = self.packed

                def add16(acc: torch.Tensor, x: torch.Tensor) -> None:
                    x16 = x.to(torch.bfloat16)
                    for d, p in enumerate(packed16):
                        acc[d].add_(p.bf16(x16[d]))  # bf16 result widened inside the float32 add
                return add16
            return lambda acc, x: acc.add_(self._bf16_bmm(x))
        if self._bmm(n):
            W = self.weight
            if self.bias is not None:
                b = self.bias.unsqueeze(1)
                return lambda acc, x: acc.add_(torch.baddbmm(b, x, W))
            return lambda acc, x: acc.add_(torch.bmm(x, W))  # in-place baddbmm_ on the strided view: 2x slower
        packed = self.packed

        def add(acc: torch.Tensor, x: torch.Tensor) -> None:
            for d, p in enumerate(packed):
                acc[d].add_(p(x[d]))
        return add

    def fn(self, n: int) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
        """``(x, out) -> x @ W`` for ``n`` rows (no bias), the product's path chosen once (precision too)."""
        if bf16_products():
            return lambda x, out: self._call_bf16(x, out)
        if self._bmm(n):
            W = self.weight
            return lambda x, out: torch.bmm(x, W, out=out)
        return lambda x, out: self(x, out)


def operand(t: torch.Tensor) -> torch.Tensor:
    """``t`` as :func:`matmul` will multiply it in the current setting: a bfloat16 copy with precision ``"bf16"``,
    else ``t`` itself. For an operand used in several products: converted once here, :func:`matmul` then takes it
    as it is (the same bits as converting it per product, one pass instead of several)."""
    if bf16_products() and t.is_floating_point() and t.dtype != torch.bfloat16:
        return t.to(torch.bfloat16)
    return t


def matmul(a: torch.Tensor, b: torch.Tensor, widen: bool = True) -> torch.Tensor:
    """``a @ b`` for the fast path's large one-off products (e.g. weight gradients over all steps), in the
    precision of the current :mod:`elmo_fast.numerics` setting; differentiable through torch.

    Shapes as :func:`torch.matmul` (``(n, k) @ (k, m)`` or batched ``(D, n, k) @ (D, k, m)``; transposed views are
    fine). float32 in, float32 out. With precision ``"bf16"`` both operands are rounded to bfloat16 for the
    product (float32 accumulation inside oneDNN / torch's CPU bf16 GEMM) and the bf16 result is widened to float32;
    under autograd the gradient products are bf16 products too (the casts' gradients cast back to float32), and
    the operands' gradients are float32. bf16 copies are made per call (a weight's copy costs ``k * m`` element
    conversions against ``n * k * m`` multiply-adds: negligible for the large products this is for).
    ``widen=False`` returns the bf16 result as it is (for a caller that reduces it first, e.g. a max). (Adding it
    to a float32 tensor directly is no saving: torch's mixed-dtype add is slower than the widening copy plus a
    float32 add.) Operands already converted by :func:`operand` are used as they are.
    """
    if not bf16_products() or not (a.is_floating_point() and b.is_floating_point()):
        return a @ b
    y = a.to(torch.bfloat16) @ b.to(torch.bfloat16)
    return y.float() if widen else y


#: one-off float32 products of at least this many multiply-adds per direction go through oneDNN's GEMM in
#: :func:`pair_matmul`: on the 2-core VM the original model's biLSTM backward products run 7-13% faster there
#: than through torch's BLAS at 2 threads (``dz W_xᵀ`` 2560 x 16384 x 512: 403-408 vs 446-471 ms for both
#: directions; ``[x; h]ᵀ dz`` 1024 x 2560 x 16384: 903-906 vs 968-1015 ms), while the small model's (640 x 4096 x
#: 128: 0.3 G multiply-adds) are as fast or faster through the BLAS (dW 22.5 vs 14.9 ms);
#: ``benchmarks/onednn_gemm.py --threads 2``
ONEDNN_MM_MIN_MACS = 1 << 32


def pair_matmul(a: torch.Tensor, b: torch.Tensor, stack: bool = True, fixed_shapes: bool = True
                ) -> torch.Tensor | list[torch.Tensor]:
    """``a[d] @ b[d]`` for ``D`` stacked directions (``(D, n, k) @ (D, k, m)``; transposed views are fine), not
    differentiable: the large one-off products of the biLSTM's hand-written backward.

    With order ``"fast"`` in float32 on the CPU, products of at least :data:`ONEDNN_MM_MIN_MACS` multiply-adds run
    through oneDNN's GEMM (``b[d]`` packed for the call), which is faster than torch's BLAS at those sizes here
    and, like the per-step packed products, gives the same bits at any thread count (``tests/test_fast.py``); other
    products (and bf16, see :func:`matmul`) as :func:`matmul`. ``stack=False`` returns the directions' results as a
    list (no stacked copy for a caller that uses them one by one).

    ``fixed_shapes``: the caller's shapes repeat (training streams: B x T rows every step). oneDNN keeps memory for
    every distinct product shape it has run (megabytes per distinct row count for the large weights), so callers
    whose shapes vary from call to call (sentences of any length) pass False and get the BLAS.
    """
    D, n, k = a.shape
    m = b.shape[2]
    if (not fixed_shapes or bf16_products() or not onednn_products() or not MKLDNN or n * k * m < ONEDNN_MM_MIN_MACS
            or a.dtype != torch.float32 or b.dtype != torch.float32 or a.device.type != "cpu"):
        y = matmul(a, b)
        return y if stack else list(y.unbind(0))
    ys = [torch.ops.mkldnn._linear_pointwise(a[d].contiguous(), torch.ops.mkldnn._reorder_linear_weight(b[d].t(), n),
                                             None, "none", [], "") for d in range(D)]
    return torch.stack(ys) if stack else ys
