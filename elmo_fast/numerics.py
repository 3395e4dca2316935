"""How the fast CPU path multiplies: the precision of the products' inputs and the floating-point order.

Two independent choices, carried by a context variable so that the ops of :mod:`elmo_fast.fast` read them
without threading extra arguments through every call:

* ``precision``: ``"fp32"`` (default) or ``"bf16"`` (products take bfloat16 inputs and accumulate in float32;
  cell state, clips, softmax statistics and everything elementwise stay float32; weights stay float32 and their
  bf16 copies are made and cached by :mod:`elmo_fast.fast.packing`, where the arithmetic and its error are
  described). Only the fast CPU backend reads it: the reference (and the Triton kernels) always compute in
  float32, so for them it is a no-op; the user-facing wrappers (``ElmoEmbedder``, the CLI's ``--precision``)
  refuse ``"bf16"`` there instead of silently running float32.
* ``order``: ``"fast"`` (default: large products through oneDNN-packed weights, sums in oneDNN's blocking
  order, and the biLSTM cell's activations from the fused CPU kernel of :mod:`elmo_fast.fast.native`) or
  ``"allennlp"`` (every product through the BLAS in the operand layout AllenNLP uses, so that long sequences stay
  within float32 noise of AllenNLP's own numbers, at a speed cost on large models).

Autograd: the setting is **captured at forward time and used by that forward's backward**. Every hand-written
backward of :mod:`elmo_fast.fast` (biLSTM, highway, sampled softmax) stores :func:`current` on its autograd
context in ``forward`` and re-enters it with :func:`use` in ``backward``, so the backward multiplies exactly as
its forward did, whatever setting is in effect when autograd runs it (``loss.backward()`` outside the block, or
from autograd's own threads, where the context variable has its default). Code adding a custom
``torch.autograd.Function`` to the fast path must do the same; nothing may read the setting in a backward.

A model carries its own choice (:class:`elmo_fast.BiLM` ``precision=`` / ``order=``) and enters it around
each op with :func:`use`; code that calls the fast ops directly can do the same. The environment variable
``ELMO_FAST_ONEDNN=0`` makes ``"allennlp"`` the process-wide default order (kept from earlier releases).
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Iterator

__all__ = ["ORDERS", "PRECISIONS", "Numerics", "check", "configure", "current", "use"]

PRECISIONS = ("fp32", "bf16")
ORDERS = ("fast", "allennlp")


@dataclass(frozen=True)
class Numerics:
    """One setting of the fast path's arithmetic (see the module docstring)."""

    precision: str = "fp32"
    order: str = "fast"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, found {self.precision!r}")
        if self.order not in ORDERS:
            raise ValueError(f"order: expected one of {ORDERS}, found {self.order!r}")


def _process_default() -> Numerics:
    from . import settings
    try:
        onednn = settings.onednn()
    except settings.SettingsError:  # reported by the CLI's settings.check_all() before any work; not at import
        onednn = True
    return Numerics(order="fast" if onednn else "allennlp")


# a frozen dataclass: safe as the shared default
_CURRENT: ContextVar[Numerics] = ContextVar("elmo_fast_numerics", default=_process_default())  # noqa: B039


def current() -> Numerics:
    """The setting in effect for the calling code."""
    return _CURRENT.get()


@contextmanager
def use(precision: str | None = None, order: str | None = None) -> Iterator[Numerics]:
    """Run the enclosed code with ``precision`` and/or ``order`` (None keeps the surrounding value)."""
    base = _CURRENT.get()
    setting = replace(base, **{k: v for k, v in (("precision", precision), ("order", order)) if v is not None})
    token = _CURRENT.set(setting)
    try:
        yield setting
    finally:
        _CURRENT.reset(token)


def check(precision: str | None = None, order: str | None = None) -> None:
    """Validate a ``precision`` / ``order`` pair (None = keep the surrounding value): ValueError naming the field."""
    Numerics(precision or "fp32", order or "fast")


def configure(module: object, precision: str | None = None, order: str | None = None) -> None:
    """Set a model's ``precision`` / ``order`` (validated; None leaves the model's current value).

    Models read these in :meth:`elmo_fast.BiLM.numerics_context` around each op; the wrappers
    (``ElmoEmbedder``, ``Elmo``, the compat classes) call this on the biLM they hold.
    """
    check(precision, order)
    if precision is not None:
        module.precision = precision  # type: ignore[attr-defined]
    if order is not None:
        module.order = order  # type: ignore[attr-defined]
