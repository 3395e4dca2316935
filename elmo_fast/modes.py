"""Autograd modes: values kept across calls are normal tensors, whatever mode made them.

Inside ``torch.inference_mode()`` every new tensor is an *inference tensor*: it has no version counter, cannot
be changed in place once inference mode is left, and cannot be saved for backward. A module whose first call
runs there would keep such tensors (prepared weights, carried LSTM states, cached word vectors) and then fail
under ``torch.no_grad()`` or with autograd. What a module keeps is therefore made inside :func:`normal_tensors`.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["normal_tensors"]


@contextlib.contextmanager
def normal_tensors() -> Iterator[None]:
    """Inside ``torch.inference_mode()``: make normal tensors (not inference tensors), without autograd, in this
    block; elsewhere nothing changes. For values kept across calls; reading inference tensors here is fine."""
    if not torch.is_inference_mode_enabled():
        yield
        return
    with torch.inference_mode(False), torch.no_grad():  # inference_mode(False) alone turns grad mode back on
        yield
