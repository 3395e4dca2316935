"""The one place that picks an implementation per op: ``reference`` | ``fast`` | ``triton``.

* ``reference``: the pure-PyTorch float32 modules in :mod:`elmo_fast.nn` (the spec in code).
* ``fast``: the optimized pure-PyTorch CPU path (:mod:`elmo_fast.fast`), numerically the same function.
* ``triton``: the fused Triton kernels (:mod:`elmo_fast.kernels`); taken automatically for CUDA tensors.

Choice order: an explicit ``backend=`` argument, else the environment variable ``ELMO_FAST_BACKEND``,
else by device (CUDA -> triton, CPU -> the best CPU path available). When a backend is asked for and an
op cannot run on it, :class:`BackendError` is raised; there is no silent fallback.
"""
from __future__ import annotations

import importlib
from typing import Callable

import torch

from .errors import UserError

__all__ = ["BACKENDS", "BackendError", "resolve", "get_op", "register", "available"]

BACKENDS = ("reference", "fast", "triton")
ENV_VAR = "ELMO_FAST_BACKEND"

#: (backend, op name) -> implementation; filled by the modules listed in _PROVIDERS on first use
_REGISTRY: dict[tuple[str, str], Callable] = {}
_PROVIDERS = {"reference": "elmo_fast.nn.ops", "fast": "elmo_fast.fast", "triton": "elmo_fast.kernels.ops"}
_LOADED: dict[str, bool] = {}
_LOAD_ERRORS: dict[str, str] = {}


class BackendError(UserError, RuntimeError):
    """The requested backend cannot run this op (no silent fallback); a user error (the choice is the user's)."""


def register(backend: str, op: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as ``backend``'s implementation of ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")

    def deco(fn: Callable) -> Callable:
        _REGISTRY[(backend, op)] = fn
        return fn
    return deco


def _load(backend: str) -> bool:
    if backend not in _LOADED:
        try:
            importlib.import_module(_PROVIDERS[backend])
            _LOADED[backend] = True
        except ImportError as e:  # e.g. triton not installed
            _LOADED[backend] = False
            _LOAD_ERRORS[backend] = str(e)
    return _LOADED[backend]


def available(backend: str, op: str) -> bool:
    """Whether ``backend`` provides ``op`` in this installation."""
    return _load(backend) and (backend, op) in _REGISTRY


def resolve(requested: str | None, device: torch.device | str, op: str) -> str:
    """Pick the backend name for ``op`` on tensors on ``device``.

    Without an explicit request, CPU tensors get ``fast`` for the ops it provides and ``reference`` for the
    rest; CUDA tensors get ``triton``.
    """
    from . import settings
    name = requested or settings.raw(ENV_VAR) or None
    if name is not None:
        name = name.strip().lower()
        if name not in BACKENDS:
            raise BackendError(f"unknown backend {name!r} (from {'argument' if requested else ENV_VAR}); "
                               f"expected one of {BACKENDS}")
        return name
    device = torch.device(device)
    if device.type == "cuda":
        return "triton"
    return "fast" if available("fast", op) else "reference"


def get_op(backend: str, op: str) -> Callable:
    """The implementation of ``op`` on ``backend``; raises :class:`BackendError` if there is none."""
    if not _load(backend):
        raise BackendError(f"backend '{backend}' is not available: {_LOAD_ERRORS.get(backend)}")
    fn = _REGISTRY.get((backend, op))
    if fn is None:
        raise BackendError(f"backend '{backend}' has no implementation of op '{op}'")
    return fn
