"""The fused CPU LSTM cell (elmo_fast.fast.native) against the PyTorch op sequence it replaces.

Forward and backward of one step on fresh random inputs of awkward sizes (one row, one cell, odd widths, strided
views as the recurrence passes them), with and without the cell clip, the saved tensors and the extra cell
gradient; sigmoid/tanh accuracy against float64; NaN/Inf propagation; bit-identical results at 1 and 2 threads;
the fallback when the kernel is turned off or cannot be built. Whole-model tests (tests/test_fast.py,
tests/test_train_speedpaths.py) run the fast biLSTM with the kernel against the reference.
"""
from __future__ import annotations

import logging

import pytest
import torch

from elmo_fast.fast import native
from elmo_fast.fast import lstm as fast_lstm

pytestmark = [pytest.mark.usefixtures("native_level"),
              pytest.mark.skipif(native.library() is None, reason="no C compiler: the fused cell is off here "
                                               "(the PyTorch ops run instead; test_fallback_* cover that path)")]

# float32 tolerances: sigmoid/tanh differ from torch's by a few ulp; the cell update amplifies that by |c| <= ~10
ATOL, RTOL = 4e-6, 1e-5


def _torch_forward(g, c_prev, clip):
    """The PyTorch path's op sequence (elmo_fast.fast.lstm.recurrence_forward, training variant)."""
    C = g.shape[-1] // 4
    g = g.clone()
    g[..., :3 * C].sigmoid_()
    g[..., 3 * C:].tanh_()
    i, f, o, j = g.split(C, dim=-1)
    raw = torch.mul(i, j) + torch.mul(f, c_prev)
    c = raw.clamp(-clip, clip) if clip is not None else raw.clone()
    t = torch.tanh(c)
    return g, raw, c, t, t * o


def _torch_backward(dc, g, tc, c_prev, dc_state, dc_out, mask):
    C = dc.shape[-1]
    i, f, o, j = g.split(C, dim=-1)
    d_o = dc * tc
    v = dc * o
    v = v - v * (tc * tc) + dc_state
    if dc_out is not None:
        v = v + dc_out
    if mask is not None:
        v = v * mask
    di, dj, df = v * j, v * i, v * c_prev
    new_state = v * f
    di, df, d_o = di * i, df * f, d_o * o
    di, df, d_o = di - di * i, df - df * f, d_o - d_o * o
    dj = dj - dj * (j * j)
    return torch.cat([di, df, d_o, dj], dim=-1), new_state


def _inputs(D, n, C, seed, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(D, n, 4 * C, generator=gen) * scale
    # c_prev as the recurrence passes it: the first n rows of a longer step (another row stride than the outputs)
    c_prev = (torch.randn(D, n + 3, C, generator=gen) * 2)[:, :n]
    return g, c_prev, gen


@pytest.mark.parametrize("D,n,C", [(1, 1, 1), (2, 1, 7), (2, 3, 33), (1, 17, 130), (2, 32, 1024)])
@pytest.mark.parametrize("clip", [None, 3.0])
@pytest.mark.parametrize("save", [True, False])
def test_forward_matches_torch_ops(D, n, C, clip, save):
    g, c_prev, _ = _inputs(D, n, C, seed=D * 1000 + n * 10 + C)
    want = _torch_forward(g, c_prev, clip)
    gg = g.clone()
    # outputs as views into packed (D, total, C) buffers, as the recurrence writes them
    buf = torch.full((4, D, n + 5, C), float("nan"))
    c_raw, c, tc, hc = (buf[k, :, 2:2 + n] for k in range(4))
    native.cell_forward(gg, c_prev, c_raw if save and clip is not None else None, c, tc if save else None, hc, clip)
    names = ["gates", "c_raw", "c", "tanh_c", "hc"]
    got = [gg, c_raw, c, tc, hc]
    for name, w, x in zip(names, want, got):
        if name == "c_raw" and not (save and clip is not None):
            assert torch.isnan(x).all(), "c_raw written although not asked for"
            continue
        if name == "tanh_c" and not save:
            assert torch.isnan(x).all(), "tanh_c written although not asked for"
            continue
        torch.testing.assert_close(x, w, atol=ATOL, rtol=RTOL, msg=lambda m: f"{name}: {m}")
    assert torch.isnan(buf[:, :, :2]).all() and torch.isnan(buf[:, :, 2 + n:]).all(), "wrote outside the step"
    if clip is not None:
        assert c.abs().max() <= clip
    if clip is not None and C > 8:
        assert (want[1].abs() > clip).any(), "the clip was never active: the test would not see a missing clip"


@pytest.mark.parametrize("D,n,C", [(1, 1, 1), (2, 3, 33), (1, 17, 130), (2, 32, 1024)])
@pytest.mark.parametrize("extra", [False, True])
@pytest.mark.parametrize("clip", [None, 3.0])
def test_backward_matches_torch_ops(D, n, C, extra, clip):
    g, c_prev, gen = _inputs(D, n, C, seed=7 + n + C)
    act, raw, c, tc, _ = _torch_forward(g, c_prev, clip)
    dc = torch.randn(D, n, C, generator=gen)
    state = torch.randn(D, n + 2, C, generator=gen)[:, :n]
    dc_out = torch.randn(D, n, C, generator=gen) if extra else None
    mask = ((raw >= -clip) & (raw <= clip)) if clip is not None else None
    want_dz, want_state = _torch_backward(dc, act, tc, c_prev, state, dc_out, mask)
    dz = torch.full((D, n, 4 * C), float("nan"))
    got_state = state.clone()
    native.cell_backward(dc.clone(), act, dz, tc, c_prev, got_state, dc_out, mask)
    torch.testing.assert_close(dz, want_dz, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got_state, want_state, atol=1e-6, rtol=1e-5)
    if mask is not None and C > 8:
        assert not mask.all(), "no cell was clipped: the mask would not be exercised"
        assert (got_state[~mask] == 0).all()


def test_activations_within_two_ulp_of_float64():
    """sigmoid and tanh (computed from the kernel's exp/expm1) against float64, over [-30, 30] and tiny values:
    at most 2 float32 ulp (torch's own: 2 and 1); tiny arguments keep their relative accuracy."""
    xs = torch.cat([torch.linspace(-30, 30, 200_001), torch.logspace(-30, 0.5, 20_000),
                    -torch.logspace(-30, 0.5, 20_000)])
    g = torch.zeros(1, xs.numel(), 4)
    g[0, :, 0] = xs
    g[0, :, 3] = xs
    out = [torch.empty(1, xs.numel(), 1) for _ in range(3)]
    native.cell_forward(g, torch.zeros(1, xs.numel(), 1), None, out[0], out[1], out[2], None)
    for got, fn in ((g[0, :, 0], torch.sigmoid), (g[0, :, 3], torch.tanh)):
        want = fn(xs.double()).float()
        ulp = torch.nextafter(want.abs(), torch.tensor(float("inf"))) - want.abs()
        err = ((got.double() - want.double()).abs() / ulp.double()).max()
        assert err <= 2.0, f"{fn.__name__}: {float(err)} ulp"
    assert g[0, 200_001 + 20_000, 3] == pytest.approx(-1e-30, rel=1e-6)  # tanh(x) ~ x for tiny x, no cancellation


def test_saturation_and_non_finite_propagate():
    """Huge gates saturate exactly as torch's (no overflow NaN); NaN and Inf inputs give torch's NaN/Inf pattern."""
    C = 8
    g = torch.zeros(1, 3, 4 * C)
    g[0, 0] = 1e4
    g[0, 1] = -1e4
    g[0, 2, 0], g[0, 2, C + 1], g[0, 2, 3 * C + 2] = float("nan"), float("inf"), float("-inf")
    c_prev = torch.zeros(1, 3, C)
    c_prev[0, 2, 5] = float("nan")
    want = _torch_forward(g, c_prev, 3.0)
    c, tc, hc, raw = (torch.empty(1, 3, C) for _ in range(4))
    gg = g.clone()
    native.cell_forward(gg, c_prev, raw, c, tc, hc, 3.0)
    for w, x in zip(want, (gg, raw, c, tc, hc)):
        assert torch.equal(torch.isnan(w), torch.isnan(x))
        fin = torch.isfinite(w)
        assert torch.equal(fin, torch.isfinite(x))
        torch.testing.assert_close(x[fin], w[fin], atol=1e-7, rtol=0)
    assert torch.isnan(hc[0, 2, 0]) and torch.isnan(c[0, 2, 5]), "a NaN was clipped away"


def test_bitwise_same_at_one_and_two_threads():
    g, c_prev, gen = _inputs(2, 32, 1024, seed=11)
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            gg = g.clone()
            outs = [torch.empty(2, 32, 1024) for _ in range(4)]
            native.cell_forward(gg, c_prev, outs[0], outs[1], outs[2], outs[3], 3.0)
            dz, state = torch.empty(2, 32, 4096), torch.ones(2, 32, 1024)
            native.cell_backward(outs[3].clone(), gg, dz, outs[2], c_prev, state, None, outs[0].abs() <= 3.0)
            results.append([gg, *outs, dz, state])
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_recurrence_uses_the_kernel_only_in_fast_order(monkeypatch):
    from elmo_fast import numerics
    t = torch.zeros(2, 3, 8)
    assert fast_lstm.use_fused_cell(t, t)
    with numerics.use(order="allennlp"):
        assert not fast_lstm.use_fused_cell(t, t)   # AllenNLP's bits need torch's own activations
    assert not fast_lstm.use_fused_cell(t.double())
    assert not fast_lstm.use_fused_cell(t.transpose(1, 2))


def test_fallback_when_turned_off(monkeypatch):
    monkeypatch.setenv(native.ENABLE_ENV, "0")
    native.reset()
    try:
        assert native.library() is None
        assert not fast_lstm.use_fused_cell(torch.zeros(2, 3, 8))
    finally:
        monkeypatch.delenv(native.ENABLE_ENV)
        native.reset()
    assert native.library() is not None


def test_fallback_without_a_compiler_warns_once(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path / "cache"))
    native.reset()
    try:
        with caplog.at_level(logging.WARNING, logger="elmo_fast.fast.native"):
            assert native.library() is None
            assert native.library() is None
        msgs = [r.getMessage() for r in caplog.records if r.name == "elmo_fast.fast.native"]
        assert len(msgs) == 1 and "no-such-cc" in msgs[0] and "PyTorch ops" in msgs[0]
    finally:
        monkeypatch.delenv("CC")
        native.reset()


def test_build_goes_to_the_cache_by_rename(monkeypatch, tmp_path):
    """A fresh cache gets one library, named by the build key, and no temporary file is left behind."""
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
    native.reset()
    try:
        assert native.library() is not None
        files = sorted(p.name for p in tmp_path.iterdir())
        assert len(files) == 1 and files[0].startswith("elmo_fast_native-") and files[0].endswith(".so"), files
    finally:
        monkeypatch.delenv(native.CACHE_ENV)
        native.reset()


def test_fallback_when_the_compiler_fails(monkeypatch, tmp_path, caplog):
    """A compiler that fails every flag variant: one warning naming the source and the compiler's last line,
    no library and no temporary file left in the cache."""
    bad = tmp_path / "badcc"
    bad.write_text("#!/bin/sh\necho 'error: this compiler always fails' >&2\nexit 1\n")
    bad.chmod(0o755)
    monkeypatch.setenv("CC", str(bad))
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path / "cache"))
    native.reset()
    try:
        with caplog.at_level(logging.WARNING, logger="elmo_fast.fast.native"):
            assert native.library() is None
        msgs = [r.getMessage() for r in caplog.records if r.name == "elmo_fast.fast.native"]
        assert len(msgs) == 1 and "lstm_cell.c" in msgs[0] and "always fails" in msgs[0], msgs
        assert list((tmp_path / "cache").iterdir()) == []
    finally:
        monkeypatch.delenv("CC")
        native.reset()


def test_refuses_a_strided_last_axis():
    """The kernel reads rows as contiguous runs: a transposed or non-float32 operand is an error, not garbage."""
    g = torch.zeros(1, 2, 8)
    c = torch.zeros(1, 2, 2)
    with pytest.raises(ValueError, match="contiguous last axis"):
        native.cell_forward(g, torch.zeros(1, 2, 2).transpose(1, 2), None, c, None, c.clone(), None)
    with pytest.raises(ValueError, match="float32"):
        native.cell_forward(g.double(), c, None, c, None, c.clone(), None)
