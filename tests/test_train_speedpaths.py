"""The training step's fast paths equal the reference: fused sampled softmax, the fast biLSTM's backward,
the fused Adagrad step.

Tolerances (float32): loss and gradients of the fused sampled softmax against the reference composed of autograd
ops, rtol 1e-5 / atol 1e-6 x the largest magnitude (same sums, rounded in another order); the optimizer paths
are compared bit for bit where they promise it.
"""
from __future__ import annotations

import pytest
import torch

from elmo_fast.fast import native
from elmo_fast.fast import sampled_softmax as fast_softmax
from elmo_fast.fast.sampled_softmax import sampled_softmax_loss_fast
from elmo_fast.nn.softmax import log_uniform_expected_count, log_uniform_sample, sampled_softmax_loss


def _close(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    scale = float(want.abs().max()) if want.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * max(scale, 1.0), msg=name)


def _case(N: int, P: int, V: int, S: int, seed: int, force_hits: bool = True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, P, generator=g)
    weight = torch.randn(V, P, generator=g) * 0.3
    bias = torch.randn(V, generator=g) * 0.1
    ids, tries = log_uniform_sample(V, S, g)
    targets = torch.randint(0, V, (N,), generator=g)
    if force_hits and N > 2 and S > 1:
        targets[0], targets[2] = ids[0], ids[S - 1]  # accidental hits at the first and last sample
    q_t = log_uniform_expected_count(targets, tries, V, S)
    q_s = log_uniform_expected_count(ids, tries, V, S)
    return hidden, targets, weight, bias, ids, q_t, q_s


def _spy_rows_kernel(monkeypatch, on: bool) -> list[str]:
    """Turn the native row kernels off (``on`` False) or record their calls."""
    calls: list[str] = []
    if not on:
        monkeypatch.setattr(fast_softmax.native, "softmax_available", lambda *t: False)
        return calls
    for name in ("softmax_forward", "softmax_backward"):
        fn = getattr(native, name)
        monkeypatch.setattr(fast_softmax.native, name,
                            (lambda f, n: lambda *a, **k: (calls.append(n), f(*a, **k))[1])(fn, name))
    return calls


@pytest.mark.parametrize("N,P,V,S", [(37, 13, 211, 29), (1, 5, 17, 1), (64, 24, 500, 100), (0, 8, 50, 7),
                                     (19, 7, 40, 40)])
@pytest.mark.parametrize("remove_hits", [True, False])
@pytest.mark.parametrize("rows_kernel", [True, False])
def test_fused_sampled_softmax_equals_reference(N, P, V, S, remove_hits, rows_kernel, monkeypatch):
    """With the native row kernels (elmo_fast.fast.native, where a C compiler exists) and with the torch ops."""
    calls = _spy_rows_kernel(monkeypatch, rows_kernel)
    args = _case(N, P, V, S, seed=N + S)
    results = []
    for fn in (sampled_softmax_loss, sampled_softmax_loss_fast):
        h, t, w, b = (x.clone().requires_grad_(x.is_floating_point()) for x in args[:4])
        loss = fn(h, t, w, b, *args[4:], remove_accidental_hits=remove_hits)
        upstream = torch.linspace(0.5, 1.5, N)  # not all ones: the per-row gradient scale matters
        (loss * upstream).sum().backward()
        results.append((loss.detach(), h.grad, w.grad, b.grad))
    want, got = results
    assert bool(calls) == (rows_kernel and native.library() is not None)
    assert bool(torch.isfinite(got[0]).all())
    for name, x, y in zip(("loss", "hidden", "weight", "bias"), got, want):
        if N == 0:
            assert x is None or x.abs().sum() == 0, name
            continue
        _close(x, y, name)


def test_fused_sampled_softmax_duplicate_samples_fall_back_to_dense_hits(monkeypatch):
    """With repeated sample ids a row can hit several samples: every one of them must be removed (the torch ops
    do it: the row kernel takes one hit per row)."""
    calls = _spy_rows_kernel(monkeypatch, True)
    hidden, targets, weight, bias, _, q_t, _ = _case(9, 6, 30, 5, seed=4)
    ids = torch.tensor([3, 7, 3, 11, 3])
    targets[:3] = 3
    q_s = torch.full((5,), 0.5)
    want = sampled_softmax_loss(hidden, targets, weight, bias, ids, q_t, q_s)
    got = sampled_softmax_loss_fast(hidden, targets, weight, bias, ids, q_t, q_s)
    _close(got, want, "loss")
    assert "softmax_forward" not in calls


def test_fused_sampled_softmax_is_the_cpu_training_op():
    from elmo_fast.options import preset
    from elmo_fast.training import LanguageModel
    model = LanguageModel(preset("tiny"), 50)
    assert model.softmax_op("sampled_softmax_loss", torch.zeros(1)) is sampled_softmax_loss_fast
    ref = LanguageModel(preset("tiny"), 50, backend="reference")
    assert ref.softmax_op("sampled_softmax_loss", torch.zeros(1)) is sampled_softmax_loss


def _adagrad_run(cls, steps: int = 4):
    g = torch.Generator().manual_seed(11)
    dense = torch.nn.Parameter(torch.randn(37, 29, generator=g))
    table = torch.nn.Parameter(torch.randn(50, 7, generator=g))
    opt = cls([dense, table], lr=0.2, initial_accumulator_value=1.0, eps=0.0)
    for k in range(steps):
        opt.zero_grad(set_to_none=True)
        rows = torch.randint(0, 50, (9,), generator=g)
        loss = (dense * torch.randn(37, 29, generator=g)).sum() * (k + 1) \
            + torch.nn.functional.embedding(rows, table, sparse=True).square().sum()
        loss.backward()
        opt.step()
    return dense.detach(), table.detach(), opt


def test_dense_fused_adagrad_is_adagrad(monkeypatch):
    """Same update as torch's Adagrad (dense: the fused kernel, within float32 rounding of the update; sparse rows:
    the touched rows only, bit for bit), and state dicts that load into either class."""
    torch.sparse.check_sparse_tensor_invariants.disable()  # as the Trainer does (torch warns otherwise)
    from elmo_fast.training import trainer as trainer_mod
    from elmo_fast.training.trainer import DenseFusedAdagrad
    calls = []
    real = trainer_mod._sparse_rows_adagrad
    monkeypatch.setattr(trainer_mod, "_sparse_rows_adagrad", lambda *a: (calls.append(a[0].shape), real(*a)))
    d_want, t_want, opt_want = _adagrad_run(torch.optim.Adagrad)
    d_got, t_got, opt_got = _adagrad_run(DenseFusedAdagrad)
    assert calls == [(50, 7)] * 4                                      # the sparse table took the rows path
    moved = (d_want - _adagrad_run(torch.optim.Adagrad, steps=0)[0]).abs()
    assert float(moved.mean()) > 0.1                                   # the updates are not negligible
    torch.testing.assert_close(d_got, d_want, rtol=1e-6, atol=1e-7)
    assert torch.equal(t_got, t_want)
    sd_want, sd_got = opt_want.state_dict(), opt_got.state_dict()
    for k in sd_want["state"]:
        assert float(sd_got["state"][k]["step"]) == float(sd_want["state"][k]["step"]) == 4.0
        torch.testing.assert_close(sd_got["state"][k]["sum"], sd_want["state"][k]["sum"], rtol=1e-6, atol=0)
    assert torch.equal(sd_got["state"][1]["sum"], sd_want["state"][1]["sum"])   # the sparse table's, bitwise
    fresh = DenseFusedAdagrad([torch.nn.Parameter(d_want.clone()), torch.nn.Parameter(t_want.clone())], lr=0.2)
    fresh.load_state_dict(sd_want)
    back = torch.optim.Adagrad([torch.nn.Parameter(d_want.clone()), torch.nn.Parameter(t_want.clone())], lr=0.2)
    back.load_state_dict(fresh.state_dict())


@pytest.mark.parametrize("loss_on", ["top_outputs", "final_c", "final_h_and_lower_outputs"])
def test_fast_streams_backward_with_missing_output_gradients(loss_on):
    """The fast biLSTM's backward when some outputs get no gradient (autograd passes None, not zeros): the
    training case (only the top outputs reach the loss; the carried state is detached), only the final cells,
    only the final h and a lower layer. float64 against the reference op, atol/rtol 1e-9."""
    import elmo_fast.fast as fast
    from elmo_fast.nn.bilm import BiLM
    from elmo_fast.nn.ops import bilstm_streams as reference_streams
    from elmo_fast.options import options_from_dict
    from helpers import random_weights, tiny_options

    d = tiny_options(lstm__n_layers=3)
    results = []
    for op in (reference_streams, fast.bilstm_streams):
        model = BiLM(options_from_dict(d), stateful=False, backend="reference")
        model.load_bilm_tf_weights(random_weights(d, seed=9))
        lstm = model.lstm.double()
        gen = torch.Generator().manual_seed(3)
        B, T, P = 5, 7, lstm.options.projection_dim
        fw = torch.randn(B, T, P, generator=gen, dtype=torch.float64, requires_grad=True)
        bw = torch.randn(B, T, P, generator=gen, dtype=torch.float64, requires_grad=True)
        h0, c0 = (torch.randn(s.shape, generator=gen, dtype=torch.float64) for s in lstm.zero_state(B, fw))
        h0.requires_grad_(True)
        c0.requires_grad_(True)
        f_out, b_out, (h, c) = op(lstm, fw, bw, (h0, c0), 0.0)
        if loss_on == "top_outputs":
            loss = (f_out[-1] * torch.linspace(-1, 1, P, dtype=torch.float64)).sum() + b_out[-1].square().sum()
        elif loss_on == "final_c":
            loss = (c * torch.linspace(-1, 1, c.shape[-1], dtype=torch.float64)).sum()
        else:
            loss = h.square().sum() + f_out[0].sum()
        loss.backward()
        grads = [fw.grad, bw.grad, h0.grad, c0.grad] + [p.grad for p in lstm.parameters()]
        results.append([torch.zeros(()) if g is None else g for g in grads])
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert any(float(g.abs().sum()) > 0 for g in results[1])
