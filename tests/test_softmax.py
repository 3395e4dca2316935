"""Sampled and full softmax (elmo_fast.nn.softmax): sampler law, expected counts, accidental hits, gradients.

Tolerances: float32 comparisons of two float32 computations of the same sum use atol/rtol 1e-5; hand-made
values are computed in float64 by the test and compared at 1e-6.
"""
from __future__ import annotations

import math

import pytest
import torch

import elmo_fast
from elmo_fast.nn import softmax as sm
from elmo_fast.nn.softmax import (full_softmax_loss, full_softmax_loss_reference, log_uniform_draw,
                                  log_uniform_expected_count, log_uniform_probability, log_uniform_sample,
                                  sampled_softmax_loss)



def _law(V: int) -> list[float]:
    return [(math.log(k + 2) - math.log(k + 1)) / math.log(V + 1) for k in range(V)]


def _chi2_critical(df: int, z: float) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile for the normal quantile z."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


# false-alarm rate of each goodness-of-fit test: 0.1 % (z = 3.0902); the seeds are fixed, so a pass is stable
Z_999 = 3.0902


def test_exports():
    # the public function dispatches through the backend (tests/test_backend.py, tests/test_switch.py); on CPU
    # without a request it runs the fused fast op, the reference's function up to float32 rounding
    from elmo_fast import functional
    assert elmo_fast.sampled_softmax_loss is functional.sampled_softmax_loss
    assert elmo_fast.full_softmax_loss is functional.full_softmax_loss
    assert elmo_fast.log_uniform_sample is log_uniform_sample


def test_probabilities_sum_to_one_and_match_law():
    V = 37
    p = log_uniform_probability(torch.arange(V), V)
    assert abs(float(p.sum()) - 1.0) < 1e-12
    assert torch.allclose(p, torch.tensor(_law(V), dtype=torch.float64), atol=1e-15)


def test_raw_draws_follow_log_uniform_law():
    """Chi-square goodness of fit of 200k raw draws over V = 20 (19 degrees of freedom), alpha = 0.001."""
    V, n = 20, 200_000
    draws = log_uniform_draw(V, n, torch.Generator().manual_seed(1234))
    assert draws.min() >= 0 and draws.max() < V
    observed = torch.bincount(draws, minlength=V).double()
    expected = torch.tensor(_law(V), dtype=torch.float64) * n
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < _chi2_critical(V - 1, Z_999), chi2
    # power check: the same statistic rejects a slightly wrong law (uniform over the first half mixed in)
    wrong = 0.9 * expected + 0.1 * n / V
    assert float(((observed - wrong) ** 2 / wrong).sum()) > _chi2_critical(V - 1, Z_999)


def test_public_sampler_single_draws_follow_law():
    """log_uniform_sample with S = 1 is one raw draw (num_tries 1): 6000 draws, V = 8, alpha = 0.001."""
    V, n = 8, 6000
    g = torch.Generator().manual_seed(99)
    counts = torch.zeros(V, dtype=torch.float64)
    for _ in range(n):
        ids, tries = log_uniform_sample(V, 1, g)
        assert tries == 1 and ids.shape == (1,)
        counts[ids[0]] += 1
    expected = torch.tensor(_law(V), dtype=torch.float64) * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < _chi2_critical(V - 1, Z_999), chi2


def test_unique_sampler_on_scripted_draws(monkeypatch):
    """First-occurrence order and the try count, on a scripted draw sequence."""
    script = torch.tensor([3, 3, 0, 3, 1, 0, 2, 4, 4, 1, 5, 6, 7, 8])
    calls = []

    def fake(num_words, n, generator=None):
        start = sum(calls)
        calls.append(n)
        out = script[start:start + n]
        if out.numel() < n:  # the sampler asked beyond the script: repeat the last value
            out = torch.cat([out, torch.full((n - out.numel(),), int(script[-1]))])
        return out.clone()

    monkeypatch.setattr(sm, "log_uniform_draw", fake)
    ids, tries = log_uniform_sample(10, 3)
    assert ids.tolist() == [3, 0, 1] and tries == 5
    calls.clear()
    ids, tries = log_uniform_sample(10, 5)
    assert ids.tolist() == [3, 0, 1, 2, 4] and tries == 8


def test_unique_sampler_real_draws():
    g = torch.Generator().manual_seed(0)
    for V, S in ((50, 50), (1000, 200), (7, 3), (793_471, 8192)):
        ids, tries = log_uniform_sample(V, S, g)
        assert ids.shape == (S,) and ids.dtype == torch.long
        assert ids.unique().numel() == S and ids.min() >= 0 and ids.max() < V
        assert tries >= S
    with pytest.raises(ValueError):
        log_uniform_sample(5, 6)
    with pytest.raises(ValueError):
        log_uniform_sample(5, 0)


def test_sampler_reproducible_with_generator():
    a = log_uniform_sample(1000, 64, torch.Generator().manual_seed(5))
    b = log_uniform_sample(1000, 64, torch.Generator().manual_seed(5))
    c = log_uniform_sample(1000, 64, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert not torch.equal(a[0], c[0])


def test_expected_count_hand_made():
    # V = 3: P = (ln 2, ln 1.5, ln(4/3)) / ln 4
    P = [math.log(2) / math.log(4), math.log(1.5) / math.log(4), math.log(4 / 3) / math.log(4)]
    ids = torch.tensor([0, 1, 2])
    # no rejected draw (T == S): TF uses P * S
    q = log_uniform_expected_count(ids, num_tries=2, num_words=3, num_samples=2)
    assert torch.allclose(q, torch.tensor([2 * p for p in P], dtype=torch.float32), atol=1e-7)
    # T = 5 > S: 1 - (1 - P)^5
    q = log_uniform_expected_count(ids, num_tries=5, num_words=3, num_samples=2)
    assert torch.allclose(q, torch.tensor([1 - (1 - p) ** 5 for p in P], dtype=torch.float32), atol=1e-7)
    assert abs(float(q[0]) - 0.96875) < 1e-7
    # stable for tiny probabilities: q ~ T * P when T * P << 1 (1 - (1-P)^T would cancel in float32)
    V = 10_000_000
    q = log_uniform_expected_count(torch.tensor([V - 1]), 3, V, 2)
    p = (math.log(V + 1) - math.log(V)) / math.log(V + 1)
    assert abs(float(q[0]) / (3 * p) - 1) < 1e-5


def test_sampled_loss_hand_made_accidental_hits():
    hidden = torch.tensor([[1.0], [2.0]])
    weight = torch.tensor([[0.0], [1.0], [2.0]])
    bias = torch.zeros(3)
    targets = torch.tensor([1, 2])
    sampled = torch.tensor([1, 0])
    ones2 = torch.ones(2)
    loss = sampled_softmax_loss(hidden, targets, weight, bias, sampled, ones2, ones2)
    # row 0: true logit 1; sample 1 is the target (removed); sample 0 has logit 0
    # row 1: true logit 4; samples: id 1 -> 2, id 0 -> 0
    want = [math.log(math.e ** 1 + 1.0) - 1.0, math.log(math.e ** 4 + math.e ** 2 + 1.0) - 4.0]
    assert torch.allclose(loss, torch.tensor(want), atol=1e-6)
    kept = sampled_softmax_loss(hidden, targets, weight, bias, sampled, ones2, ones2, remove_accidental_hits=False)
    assert abs(float(kept[0]) - (math.log(2 * math.e + 1.0) - 1.0)) < 1e-6
    # log-q correction: q_target = 0.5 adds ln 2 to the true logit, q_sample = (0.25, 4)
    loss = sampled_softmax_loss(hidden, targets, weight, bias, sampled, torch.tensor([0.5, 0.5]),
                                torch.tensor([0.25, 4.0]))
    t0 = 1.0 - math.log(0.5)
    s0 = 0.0 - math.log(4.0)  # sample id 0 (id 1 removed)
    assert abs(float(loss[0]) - (math.log(math.exp(t0) + math.exp(s0)) - t0)) < 1e-6
    t1 = 4.0 - math.log(0.5)
    s1 = [2.0 - math.log(0.25), 0.0 - math.log(4.0)]
    assert abs(float(loss[1]) - (math.log(math.exp(t1) + sum(math.exp(x) for x in s1)) - t1)) < 1e-5


def test_sampled_loss_all_samples_hit_gives_zero_loss():
    hidden = torch.randn(3, 4)
    weight = torch.randn(5, 4)
    loss = sampled_softmax_loss(hidden, torch.tensor([2, 2, 2]), weight, torch.zeros(5), torch.tensor([2]),
                                torch.ones(3), torch.ones(1))
    assert torch.all(loss.abs() < 1e-6) and torch.isfinite(loss).all()


def test_sampled_loss_matches_independent_float64():
    g = torch.Generator().manual_seed(3)
    N, P, V, S = 13, 7, 41, 9
    h, W, b = torch.randn(N, P, generator=g), torch.randn(V, P, generator=g), torch.randn(V, generator=g)
    t = torch.randint(0, V, (N,), generator=g)
    ids, tries = log_uniform_sample(V, S, g)
    qt, qs = log_uniform_expected_count(t, tries, V, S), log_uniform_expected_count(ids, tries, V, S)
    got = sampled_softmax_loss(h, t, W, b, ids, qt, qs)
    want = []
    for i in range(N):
        true = float((h[i].double() @ W[t[i]].double()) + b[t[i]]) - math.log(float(qt[i]))
        terms = [true]
        for j, k in enumerate(ids.tolist()):
            if k == int(t[i]):
                continue
            terms.append(float(h[i].double() @ W[k].double() + b[k]) - math.log(float(qs[j])))
        m = max(terms)
        want.append(m + math.log(sum(math.exp(x - m) for x in terms)) - true)
    assert torch.allclose(got.double(), torch.tensor(want, dtype=torch.float64), atol=1e-5, rtol=1e-5)


def _flat_grads(fn, h, W, b):
    hh, WW, bb = (x.clone().requires_grad_() for x in (h, W, b))
    fn(hh, WW, bb).sum().backward()
    return torch.cat([hh.grad.flatten(), WW.grad.flatten(), bb.grad])


def test_sampled_gradient_agrees_in_expectation_with_full_softmax():
    """V = 100, S = 40, frequent targets: the mean of 1500 sampled-loss gradients is within 4 % (relative L2)
    of the full-softmax gradient, while the same estimate without the log-q correction is off by > 6 %."""
    g = torch.Generator().manual_seed(0)
    V, S, P = 100, 40, 8
    t = torch.tensor([0, 1, 2, 0, 1])
    h = torch.randn(len(t), P, generator=g)
    W, b = torch.randn(V, P, generator=g) * 0.3, torch.randn(V, generator=g) * 0.3
    full = _flat_grads(lambda hh, WW, bb: full_softmax_loss_reference(hh, t, WW, bb), h, W, b)
    sampler = torch.Generator().manual_seed(1)
    K = 1500
    draws = [log_uniform_sample(V, S, sampler) for _ in range(K)]

    def summed(hh, WW, bb, correct):
        # the gradient of a sum is the sum of the gradients: one backward for all K sample sets
        total = hh.new_zeros(())
        for ids, tries in draws:
            qs, qt = log_uniform_expected_count(ids, tries, V, S), log_uniform_expected_count(t, tries, V, S)
            if not correct:
                qs, qt = torch.ones_like(qs), torch.ones_like(qt)
            total = total + sampled_softmax_loss(hh, t, WW, bb, ids, qt, qs).sum()
        return total

    corrected = _flat_grads(lambda hh, WW, bb: summed(hh, WW, bb, True), h, W, b)
    uncorrected = _flat_grads(lambda hh, WW, bb: summed(hh, WW, bb, False), h, W, b)
    rel = float((corrected / K - full).norm() / full.norm())
    rel_wrong = float((uncorrected / K - full).norm() / full.norm())
    assert rel < 0.04, rel
    assert rel_wrong > 0.06, rel_wrong


@pytest.mark.parametrize("N,V,P,chunk", [(7, 37, 5, 5), (1, 1, 3, 4), (0, 10, 3, 3), (11, 29, 6, 64), (5, 16, 4, 16)])
def test_full_softmax_chunked_matches_unchunked(N, V, P, chunk):
    g = torch.Generator().manual_seed(N * 100 + V)
    h, W, b = torch.randn(N, P, generator=g), torch.randn(V, P, generator=g), torch.randn(V, generator=g)
    t = torch.randint(0, V, (N,), generator=g)
    got = full_softmax_loss(h, t, W, b, chunk_size=chunk)
    want = full_softmax_loss_reference(h.double(), t, W.double(), b.double())
    assert got.shape == (N,)
    assert torch.allclose(got.double(), want, atol=1e-5, rtol=1e-5)
    if N:
        w = torch.randn(N, generator=g)
        ga = _flat_grads(lambda hh, WW, bb: full_softmax_loss(hh, t, WW, bb, chunk_size=chunk) * w, h, W, b)
        gb = _flat_grads(lambda hh, WW, bb: full_softmax_loss_reference(hh, t, WW, bb) * w,
                         h.double(), W.double(), b.double())
        assert torch.allclose(ga.double(), gb, atol=1e-5, rtol=1e-5)


def test_full_softmax_large_logits_stable():
    h = torch.tensor([[100.0], [-100.0]])
    W = torch.tensor([[1.0], [2.0], [-1.0]])
    got = full_softmax_loss(h, torch.tensor([1, 2]), W, torch.zeros(3), chunk_size=2)
    want = full_softmax_loss_reference(h.double(), torch.tensor([1, 2]), W.double(),
                                       torch.zeros(3, dtype=torch.float64))
    assert torch.isfinite(got).all() and torch.allclose(got.double(), want, atol=1e-4)


def test_shape_errors():
    with pytest.raises(ValueError, match="hidden"):
        sampled_softmax_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.zeros(4, 5), torch.zeros(4),
                             torch.zeros(1, dtype=torch.long), torch.ones(2), torch.ones(1))
    with pytest.raises(ValueError, match="chunk_size"):
        full_softmax_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.zeros(4, 3), torch.zeros(4), 0)
