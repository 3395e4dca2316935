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


def test_input_modes_default_is_tf32x3_and_ieee_stays_selectable(monkeypatch):
    monkeypatch.delenv(common.INPUT_MODE_ENV, raising=False)
    assert common.input_mode() == "tf32x3" == common.DEFAULT_INPUT_MODE
    # compiled: tensor-core tf32x3 (4); the interpreter runs the same three passes emulated (5)
    assert common.precision_code() == (5 if common.interpreting() else 4)
    for name in ("ieee", "fp32"):
        monkeypatch.setenv(common.INPUT_MODE_ENV, name)
        assert common.input_mode() == name and common.precision_code() == 0
    monkeypatch.delenv(common.INPUT_MODE_ENV)
    common.set_input_mode("ieee")
    try:
        assert common.precision_code() == 0
    finally:
        common.set_input_mode(None)
    with pytest.raises(ValueError, match="precision"):
        common.set_input_mode("fp16")


def test_input_mode_is_not_the_cpu_precision_and_old_names_still_work():
    from elmo_fast import numerics, settings
    assert common.INPUT_MODES == settings.TRITON_INPUT_MODES and "tf32x3" in common.INPUT_MODES
    assert numerics.PRECISIONS == ("fp32", "bf16")  # the CPU path's setting: another concept, another name
    # the names of earlier releases are aliases of the input-mode ones
    assert common.PRECISIONS is common.INPUT_MODES and common.DEFAULT_PRECISION == common.DEFAULT_INPUT_MODE
    assert common.precision is common.input_mode and common.set_precision is common.set_input_mode


def test_interpreter_tf32x3_dot_matches_the_hand_computed_three_passes():
    """The interpreter's tf32x3 (``mm`` code 5, bit operations in the kernel) on the hand case of
    tests/test_tf32_emulation.py: the product is 1 + 3078 * 2^-22 (not the float32 product). Each output has one
    nonzero term (the other 15 of the 16-wide block are zeros), so the interpreter's BLAS adds only exact zeros and
    the value cannot depend on its summation order or on fused multiply-adds (16 equal terms would: their
    partial sums need 25 bits). Compiled kernels (code 4) get the same value from the tensor cores when they read
    the remainders' TF32 bits."""
    if not common.interpreting():
        pytest.skip("the emulated code path (5) only runs under the interpreter; compiled kernels use code 4")
    a0, b0 = 1 + 2 ** -11 + 2 ** -20 + 2 ** -23, 1 + 2 ** -12
    a = torch.zeros(16, 16)
    a[:, 3] = a0
    b = torch.zeros(16, 16)
    b[3, :] = b0
    out = common.matmul(a, b, prec=5)
    assert torch.equal(out, torch.full((16, 16), 1 + 3078 * 2 ** -22))
    ieee = common.matmul(a, b, prec=0)
    assert torch.equal(ieee, torch.full((16, 16), float(torch.tensor(a0) * torch.tensor(b0))))  # one rounding
    assert float(ieee[0, 0]) == 1 + 3077 * 2 ** -22
    assert not torch.equal(out, ieee)


class _StandInGraph:
    """What a captured CUDA graph does on replay, for CPU tensors: the same launches, same arguments."""

    def __init__(self, plans):
        self.plans = list(plans)
        self.replays = 0

    def replay(self):
        from elmo_fast.kernels import launch as launch_mod
        self.replays += 1
        for p in self.plans:
            launch_mod._execute(p)


def test_launch_loops_are_captured_on_the_second_identical_run_and_replayed(monkeypatch, caplog):
    """The graph cache's rule (kernels/launch.py): eager the first time, capture + replay the second, replay
    after; any changed argument (here a tensor at another address) runs eagerly; capture off with
    ELMO_FAST_CUDA_GRAPHS=0; a failing capture falls back to eager launches. CUDA graphs themselves need a
    GPU: a stand-in graph replays the captured launches on CPU (the interpreter)."""
    from elmo_fast.kernels import launch as launch_mod
    if not common.interpreting():
        pytest.skip("CPU stand-in for the capture; on CUDA the real graphs run in the kernel suite")
    captured = []

    def capture(plans, device):
        captured.append(_StandInGraph(plans))
        return captured[-1]
    cache = launch_mod.GraphCache(capture=capture, device_types=("cpu",))
    x = torch.arange(12.0).view(4, 3)
    out = torch.zeros(3)

    def body(dst=out):
        for _ in range(2):  # a loop of launches (same kernel twice)
            launch(common._colsum_kernel, (1,), (x, dst, 4, 3, 3, 1), dict(BM=32, BN=64))
    want = x.sum(0)
    for i, stats in enumerate([dict(eager=1, captured=0, replayed=0), dict(eager=1, captured=1, replayed=1),
                               dict(eager=1, captured=1, replayed=2)]):
        out.zero_()
        launch_mod.run_launches(body, cache)
        assert torch.equal(out, want) and cache.stats == stats, (i, cache.stats)
    assert len(captured) == 1 and captured[0].replays == 2 and len(captured[0].plans) == 2
    other = torch.zeros(3)
    launch_mod.run_launches(lambda: body(other), cache)  # another address: not the captured loop
    assert torch.equal(other, want) and cache.stats["eager"] == 2 and cache.stats["replayed"] == 2
    monkeypatch.setenv(launch_mod.GRAPHS_ENV, "0")
    out.zero_()
    launch_mod.run_launches(body, cache)
    assert torch.equal(out, want) and cache.stats == dict(eager=2, captured=1, replayed=2)
    monkeypatch.setenv(launch_mod.GRAPHS_ENV, "yes")
    with pytest.raises(BackendError, match=launch_mod.GRAPHS_ENV):
        launch_mod.run_launches(body, cache)
    monkeypatch.delenv(launch_mod.GRAPHS_ENV)
    # the compile check's recording sees the launches, nothing runs
    out.zero_()
    with recording() as plans:
        launch_mod.run_launches(body, cache)
    assert [p.count for p in plans] == [2] and float(out.abs().sum()) == 0.0

    def broken(plans, device):
        raise RuntimeError("capture unsupported")
    bad = launch_mod.GraphCache(capture=broken, device_types=("cpu",))
    for _ in range(3):
        out.zero_()
        launch_mod.run_launches(body, bad)
        assert torch.equal(out, want)
    assert bad.stats == dict(eager=3, captured=0, replayed=0) and "capture failed" in caplog.text


def test_lstm_step_loops_go_through_the_graph_cache(monkeypatch):
    """Forward and backward step loops of the LSTM layer run through run_launches (results unchanged)."""
    from elmo_fast.kernels import launch as launch_mod
    cache = launch_mod.GraphCache(capture=lambda plans, device: _StandInGraph(plans), device_types=("cpu",))
    monkeypatch.setattr(launch_mod, "GRAPHS", cache)
    g = torch.Generator().manual_seed(0)
    B, T, P, C = 2, 3, 16, 16
    x = torch.randn(2, B, T, P, generator=g, requires_grad=True)
    W0, bias = torch.randn(2, 2 * P, 4 * C, generator=g) * 0.3, torch.zeros(2, 4 * C)
    WP = torch.randn(2, C, P, generator=g) * 0.3
    W0.requires_grad_()
    h0, c0 = torch.zeros(2, B, P), torch.zeros(2, B, C)
    y, h, c = lstm_cell.lstm_bidirectional_layer(x, W0, bias, WP, h0, c0, torch.tensor([3, 2]), 3.0, 3.0, False,
                                                 persistent=False)
    y.sum().backward()
    assert cache.stats["eager"] + cache.stats["replayed"] == 2  # one forward loop, one backward loop
    monkeypatch.setenv(launch_mod.GRAPHS_ENV, "0")
    x2 = x.detach().clone().requires_grad_()
    y2, _, _ = lstm_cell.lstm_bidirectional_layer(x2, W0, bias, WP, h0, c0, torch.tensor([3, 2]), 3.0, 3.0, False,
                                                  persistent=False)
    y2.sum().backward()
    assert torch.equal(y, y2) and torch.equal(x.grad, x2.grad)
