"""Shared setup of the Triton kernel tests. Import it BEFORE any ``elmo_fast.kernels`` module: without CUDA it
sets ``TRITON_INTERPRET=1`` so that the same kernels run in Triton's interpreter on CPU tensors."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

#: marks for every kernel test module (``pytestmark = TRITON_MARKS``)
TRITON_MARKS = [pytest.mark.triton,  # sigmoid of large |x| in the interpreter: numpy warns, results are exact
                pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")]


def assert_as_accurate(out, ref32, ref64, name, factor=4.0, floor=1e-6):
    """``|out - ref64| <= factor * |ref32 - ref64| + floor * scale``: the kernel must be about as accurate as the
    float32 reference, both measured against a float64 run of the reference."""
    scale = max(1.0, float(ref64.abs().max())) if ref64.numel() else 1.0
    err = float((out.double() - ref64).abs().max()) if out.numel() else 0.0
    ref_err = float((ref32.double() - ref64).abs().max()) if out.numel() else 0.0
    assert err <= factor * ref_err + floor * scale, f"{name}: kernel error {err:.3g}, reference error {ref_err:.3g}"


def use_gpu_tiles(monkeypatch):
    """Make the host code pick the compiled GPU path's tile sizes under the interpreter (no-op on CUDA)."""
    from elmo_fast.kernels import common
    monkeypatch.setattr(common, "_tile_mode", "gpu")
    assert common.gpu_tiles()
