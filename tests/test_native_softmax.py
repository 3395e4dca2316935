"""The sampled softmax row kernels (elmo_fast.fast.native: ``sampled_softmax.c``) against the torch op sequence they
replace in :mod:`elmo_fast.fast.sampled_softmax`.

Forward (shift, accidental hit, row max, ``exp``, row sum) on float32 and bfloat16 logits of awkward sizes (one row,
one column, odd widths, a row stride wider than the row), backward (scaling, bfloat16 copy, column sums); NaN/Inf
rows; no subnormal exponentials; bit-identical results at 1 and 2 threads; bad layouts refused. The whole loss
against the reference is tests/test_train_speedpaths.py (kernel on and off).

Tolerances (float32): ``exp`` here is fastmath.h's (a few ulp from torch's), so the exponentials are compared with
rtol 1e-6 / atol 1e-7 (values <= 1). Row sums are checked two ways: against the float64 sum of the kernel's own
exponentials, within the bound of its fixed summation order (each term goes through at most
``min(S, 1024) / 16 + 4 + ceil(S / 1024) + 1`` float32 additions, each of relative error <= 2^-24, and all terms are
non-negative: :func:`_sum_bound`), which holds on any CPU; and against torch's sum (another order, other
exponentials) within twice that bound plus the exponentials' 1e-6. The row max, the scaling and the bfloat16 rounding
are exact and
compared bit for bit.
"""
from __future__ import annotations

import pytest
import torch

from elmo_fast.fast import native

pytestmark = [pytest.mark.usefixtures("native_level"),
              pytest.mark.skipif(native.library() is None,
                                 reason="no C compiler: the native kernels are off here (the torch ops run instead; "
                                        "tests/test_train_speedpaths.py covers that path)")]

FLT_MIN_NORMAL = torch.finfo(torch.float32).tiny


def _torch_forward(logits, shift, true, hit_cols):
    """The torch path of elmo_fast.fast.sampled_softmax (float32 logits; bf16 widened first)."""
    x = logits.float() + shift
    if hit_cols is not None:
        rows = (hit_cols >= 0).nonzero().squeeze(1)
        x[rows, hit_cols[rows]] = torch.finfo(torch.float32).min
    m = x.amax(dim=1) if x.shape[1] else torch.full_like(true, -torch.inf)
    m = torch.maximum(m, true)
    e = (x - m.unsqueeze(1)).exp()
    te = torch.exp(true - m)
    return e, m, te, e.sum(dim=1) + te


def _case(N, S, seed, dtype=torch.float32, pad=0, hits=True):
    g = torch.Generator().manual_seed(seed)
    wide = torch.randn(N, S + pad, generator=g) * 4.0
    logits = wide.to(dtype)[:, :S]
    shift = torch.randn(S, generator=g)
    true = torch.randn(N, generator=g) * 4.0
    hit_cols = None
    if hits and S:
        hit_cols = torch.randint(-1, S, (N,), generator=g)
        if N:
            hit_cols[0] = S - 1  # the last column
    return logits, shift, true, hit_cols


def _sum_bound(S: int) -> float:
    """Relative error bound of the kernel's row total over ``S`` exponentials plus the true term (see above)."""
    adds = min(S, 1024) // 16 + 1 + 4 + -(-S // 1024) + 1
    u = 2.0 ** -24
    return adds * u / (1 - adds * u)


def _assert_totals(total, e, te, torch_total, S):
    """The kernel's ``total`` against the float64 sum of its own ``e`` and ``te`` (its summation bound), and
    against torch's total (that bound plus the exponentials' 1e-6 and torch's own order)."""
    exact = e.double().sum(dim=1) + te.double()
    bound = _sum_bound(S)
    err = (total.double() - exact).abs()
    assert bool((err <= bound * exact.abs()).all()), f"max relative error {float((err / exact.abs()).max())}"
    # torch's pairwise sum is at least as accurate as ours: its total is within ``bound`` of the exact sum of its
    # exponentials, which are within 1e-6 of ours
    torch.testing.assert_close(total, torch_total, rtol=2 * bound + 1e-6, atol=0)


def _run_forward(logits, shift, true, hit_cols):
    out = torch.empty(logits.shape, dtype=torch.float32)
    m, te, total = native.softmax_forward(logits, shift, true, hit_cols, out)
    return out, m, te, total


@pytest.mark.parametrize("N,S", [(1, 1), (1, 7), (3, 33), (17, 130), (64, 8192), (5, 0), (0, 9)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hits", [False, True])
def test_forward_matches_torch_ops(N, S, dtype, hits):
    logits, shift, true, hit_cols = _case(N, S, seed=N * 31 + S, dtype=dtype, pad=3, hits=hits)
    assert N == 0 or S == 0 or logits.stride(0) == S + 3  # a row stride wider than the row
    e, m, te, total = _run_forward(logits, shift, true, hit_cols)
    we, wm, wte, wtotal = _torch_forward(logits, shift, true, hit_cols)
    assert torch.equal(m, wm)
    torch.testing.assert_close(e, we, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(te, wte, rtol=1e-6, atol=1e-7)
    _assert_totals(total, e, te, wtotal, S)
    if hit_cols is not None and N:
        assert e[0, S - 1] == 0.0  # the masked hit contributes nothing


def test_forward_in_place_on_float32_logits():
    logits, shift, true, hit_cols = _case(6, 50, seed=3)
    want = _torch_forward(logits, shift, true, hit_cols)
    logits = logits.contiguous()
    m, te, total = native.softmax_forward(logits, shift, true, hit_cols, logits)
    torch.testing.assert_close(logits, want[0], rtol=1e-6, atol=1e-7)
    _assert_totals(total, logits, te, want[3], 50)


def test_far_below_the_max_is_exactly_zero_not_subnormal():
    logits = torch.tensor([[0.0, -87.0, -88.0, -100.0, -1e30, -3e38]])
    e, m, te, total = _run_forward(logits, torch.zeros(6), torch.tensor([-200.0]), None)
    assert e[0, 0] == 1.0 and e[0, 1] > 0 and bool((e[0, 2:] == 0).all()), e
    assert te[0] == 0.0 and total[0] == pytest.approx(1.0 + float(torch.exp(torch.tensor(-87.0))), rel=1e-6)
    assert not bool(((e != 0) & (e.abs() < FLT_MIN_NORMAL)).any())


def test_non_finite_rows_stay_non_finite_and_alone():
    logits, shift, true, _ = _case(5, 40, seed=9)
    logits[1, 7] = float("nan")
    logits[2, 0] = float("inf")
    true[3] = float("nan")
    e, m, te, total = _run_forward(logits, shift, true, None)
    we, wm, wte, wtotal = _torch_forward(logits, shift, true, None)
    for r in (1, 2, 3):
        assert torch.isnan(total[r]) and torch.isnan(wtotal[r]), r
    assert torch.isnan(m[1]) and torch.isnan(m[3]) and m[2] == float("inf")
    ok = [0, 4]
    assert bool(torch.isfinite(total[ok]).all())
    _assert_totals(total[ok], e[ok], te[ok], wtotal[ok], 40)


@pytest.mark.parametrize("N,S", [(1, 1), (3, 33), (17, 130), (64, 8192), (0, 5), (4, 0), (7, 513)])
@pytest.mark.parametrize("with_d16", [False, True])
def test_backward_matches_torch_ops(N, S, with_d16):
    g = torch.Generator().manual_seed(N + 7 * S)
    e = torch.rand(N, S, generator=g)
    scale = torch.randn(N, generator=g)
    want = e * scale.unsqueeze(1)
    d16 = torch.empty(N, S, dtype=torch.bfloat16) if with_d16 else None
    colsum = torch.empty(S)
    native.softmax_backward(e, scale, d16, colsum)
    assert torch.equal(e, want)                       # one rounded product per element, as torch's
    if with_d16:
        assert torch.equal(d16, want.to(torch.bfloat16))  # round to nearest even, as torch's conversion
    torch.testing.assert_close(colsum, want.sum(dim=0), rtol=2e-6, atol=2e-6 * max(N, 1) ** 0.5)


def test_bf16_rounding_of_ties_nan_and_inf():
    # 1 + 2^-8 is a tie between two bf16 values: nearest even keeps 1.0; 1 + 3 * 2^-8 rounds up
    e = torch.tensor([[1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, float("inf"), -float("inf"), float("nan"), -0.0, 3e38]])
    want = e.to(torch.bfloat16)
    d16 = torch.empty_like(want)
    native.softmax_backward(e.clone(), torch.ones(1), d16, None)
    assert torch.equal(d16[0, :4], want[0, :4]) and torch.isnan(d16[0, 4])
    assert d16[0, 5] == 0 and torch.equal(d16[0, 6:], want[0, 6:])


def test_bitwise_same_at_one_and_two_threads():
    logits, shift, true, hit_cols = _case(97, 3001, seed=5)
    scale = torch.randn(97)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            e, m, te, total = _run_forward(logits, shift, true, hit_cols)
            d16, colsum = torch.empty(e.shape, dtype=torch.bfloat16), torch.empty(e.shape[1])
            native.softmax_backward(e, scale, d16, colsum)
            results.append((e, m, te, total, d16, colsum))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_refuses_bad_layouts():
    logits, shift, true, _ = _case(4, 10, seed=1)
    out = torch.empty(4, 10)
    with pytest.raises(ValueError, match="logits"):
        native.softmax_forward(logits.t().contiguous().t(), shift, true, None, out)   # strided last axis
    with pytest.raises(ValueError, match="logits"):
        native.softmax_forward(logits.double(), shift, true, None, out)
    with pytest.raises(ValueError, match="shift"):
        native.softmax_forward(logits, shift[:9], true, None, out)
    with pytest.raises(ValueError, match="hit_cols"):
        native.softmax_forward(logits, shift, true, torch.zeros(4, dtype=torch.int32), out)
    with pytest.raises(ValueError, match="out"):
        native.softmax_forward(logits, shift, true, None, torch.empty(4, 11)[:, :10].t())
    with pytest.raises(ValueError, match="d16"):
        native.softmax_backward(out, torch.ones(4), torch.empty(4, 10), None)
    with pytest.raises(ValueError, match="scale"):
        native.softmax_backward(out, torch.ones(5), None, None)
