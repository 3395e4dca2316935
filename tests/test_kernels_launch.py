"""kernels/launch.py: every launch goes through one function (device guard, 32-bit offset guard, recording
for the compile check), and the tile mode that makes the interpreter run the GPU path's tiles."""
import pytest
import torch

from triton_helpers import TRITON_MARKS, use_gpu_tiles  # noqa: E402  (sets TRITON_INTERPRET first)

from elmo_fast.backend import BackendError  # noqa: E402
from elmo_fast.kernels import common, lstm_cell  # noqa: E402
from elmo_fast.kernels.launch import launch, recording  # noqa: E402

pytestmark = TRITON_MARKS


def test_tensors_past_int32_offsets_raise_unless_the_kernel_is_wide():
    big = torch.empty(2 ** 31, device="meta")
    out = torch.empty(1, device="meta")
    with pytest.raises(BackendError, match="2\\^31"):
        launch(common._colsum_kernel, (1,), (big, out, 2 ** 31, 1, 1, 1), dict(BM=32, BN=64))
    with recording() as plans:  # a wide (64-bit offset) kernel is accepted: recorded here, not run
        launch(common._colsum_kernel, (1,), (big, out, 2 ** 31, 1, 1, 1), dict(BM=32, BN=64), wide=True)
    assert len(plans) == 1 and plans[0].name == "_colsum_kernel"


def test_recording_runs_the_host_code_on_meta_tensors_with_gpu_tiles(monkeypatch):
    """What the compile check does, in process: the LSTM layer's host code on meta tensors, GPU tiles forced;
    one plan per distinct launch, the per-step launches counted, nothing executed."""
    use_gpu_tiles(monkeypatch)
    B, T, P, C = 3, 4, 19, 23
    with torch.device("meta"):
        args = [torch.empty(2, B, T, P), torch.empty(2, 2 * P, 4 * C), torch.empty(2, 4 * C), torch.empty(2, C, P),
                torch.empty(2, B, P), torch.empty(2, B, C), torch.full((B,), T)]
    with recording() as plans:
        lstm_cell.lstm_bidirectional_layer(*args, 3.0, 3.0, False, persistent=False)
    steps = {p.name: p for p in plans if p.name in ("_cell_step", "_proj_step")}
    assert set(steps) == {"_cell_step", "_proj_step"}
    BB, BC, BP, BK = lstm_cell.GPU_TILES
    assert steps["_cell_step"].constexprs["BB"] == BB and steps["_cell_step"].constexprs["BC"] == BC
    assert steps["_cell_step"].grid == (1, 1, 2)
    assert sum(p.count for p in plans if p.name == "_cell_step") == T
    with pytest.raises(BackendError, match="device 'meta'"):  # outside a recording, meta tensors cannot run
        lstm_cell.lstm_bidirectional_layer(*args, 3.0, 3.0, False, persistent=False)


def test_tile_mode_values(monkeypatch):
    monkeypatch.setenv(common.TILES_ENV, "gpu")
    assert common.gpu_tiles()
    monkeypatch.setenv(common.TILES_ENV, "huge")
    with pytest.raises(BackendError, match="ELMO_FAST_TRITON_TILES"):
        common.gpu_tiles()
    monkeypatch.delenv(common.TILES_ENV)
    assert common.gpu_tiles() == (not common.interpreting())
    with common.tile_mode("gpu"):
        assert common.gpu_tiles()


def test_precision_modes_include_tf32x3():
    assert "tf32x3" in common.PRECISIONS
    common.set_precision("tf32x3")
    try:
        # the interpreter has no TF32: it runs the IEEE path (the compiled kernels get code 4)
        assert common.precision_code() == (0 if common.interpreting() else 4)
    finally:
        common.set_precision(None)
