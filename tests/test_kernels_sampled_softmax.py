"""Fused sampled softmax and chunked full softmax (kernels/sampled_softmax.py) vs the references in
elmo_fast/nn/softmax.py (``sampled_softmax_loss`` and ``full_softmax_loss_reference``), and vs a
dense float64 loss written here from the definition (logits over [true, samples]).

Interpreter on CPU (``TRITON_INTERPRET=1`` set before the kernels are imported), compiled on CUDA.
Tolerance rule as in test_kernels_char_cnn.py: ``|kernel - ref64| <= 4 |ref32 - ref64| + 1e-6 scale``.
"""
import math

import pytest
import torch

from triton_helpers import DEVICE, TRITON_MARKS, assert_as_accurate  # noqa: E402  (sets TRITON_INTERPRET first)

from elmo_fast.backend import BackendError  # noqa: E402
from elmo_fast.kernels.sampled_softmax import full_softmax_loss, sampled_softmax_grads, sampled_softmax_loss  # noqa: E402
from elmo_fast.nn import softmax as ref  # noqa: E402

pytestmark = TRITON_MARKS


def dense_definition(h, t, W, b, ids, q_t, q_s, remove_hits=True):
    """Straight from the definition, float64: logits [true, samples] - ln q; hits -> -inf (excluded)."""
    true = (h * W[t]).sum(1) + b[t] - torch.log(q_t)
    sampled = h @ W[ids].T + b[ids] - torch.log(q_s)
    if remove_hits:
        sampled = sampled.masked_fill(ids[None, :] == t[:, None], -math.inf)
    return torch.logsumexp(torch.cat([true[:, None], sampled], 1), 1) - true


def make(N, P, V, S, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, P, generator=g, dtype=torch.float64) * 0.7
    W = torch.randn(V, P, generator=g, dtype=torch.float64) / P ** 0.5 * 2
    b = torch.randn(V, generator=g, dtype=torch.float64)
    ids = torch.randperm(V, generator=g)[:S]
    t = torch.randint(0, V, (N,), generator=g)
    k = min(N, 6, S)
    t[:k] = ids[:k]                    # accidental hits in the first rows
    t[6:9] = t[0]                      # repeated targets (their W/b rows receive summed gradients)
    q_t = torch.rand(N, generator=g, dtype=torch.float64) * 0.9 + 0.05
    q_s = torch.rand(S, generator=g, dtype=torch.float64) * 0.9 + 0.05
    return h, t, W, b, ids, q_t, q_s


def run(fn, data, dtype, dev, remove_hits=True, seed=1):
    h, t, W, b, ids, q_t, q_s = data
    ps = [x.to(dev, dtype).requires_grad_() for x in (h, W, b)]
    loss = fn(ps[0], t.to(dev), ps[1], ps[2], ids.to(dev), q_t.to(dev, dtype), q_s.to(dev, dtype), remove_hits)
    g = torch.randn(loss.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dev, dtype)
    grads = torch.autograd.grad(loss, ps, g)
    return [loss.detach().cpu()] + [x.cpu() for x in grads]


@pytest.mark.parametrize("N,P,V,S,remove_hits", [(37, 19, 101, 23, True), (37, 19, 101, 23, False),
                                                 (1, 16, 50, 50, True), (20, 33, 300, 65, True)])
def test_sampled_softmax_matches_reference(N, P, V, S, remove_hits):
    data = make(N, P, V, S)
    kern = run(sampled_softmax_loss, data, torch.float32, DEVICE, remove_hits)
    r32 = run(ref.sampled_softmax_loss, data, torch.float32, "cpu", remove_hits)
    r64 = run(ref.sampled_softmax_loss, data, torch.float64, "cpu", remove_hits)
    for name, a, b, c in zip(["loss", "dh", "dW", "db"], kern, r32, r64):
        assert a.shape == b.shape, name
        assert_as_accurate(a, b, c, name)
    # and the definition written here (float64, hits excluded) agrees with the float64 reference
    assert torch.allclose(dense_definition(*data, remove_hits=remove_hits), r64[0], atol=1e-12)


def test_sampled_softmax_chunked_over_p(monkeypatch):
    """The kernels' P chunks (logits' dot in BK columns, backward programs over BPD columns) at small sizes:
    P = 33 in 16-wide chunks is three of each, as P = 513 is on the GPU (64 / 256)."""
    from elmo_fast.kernels import sampled_softmax as module
    monkeypatch.setattr(module, "BK_SAMPLED", 16)
    monkeypatch.setattr(module, "BPD_SAMPLED", 16)
    data = make(37, 33, 101, 40)
    kern = run(sampled_softmax_loss, data, torch.float32, DEVICE)
    r32 = run(ref.sampled_softmax_loss, data, torch.float32, "cpu")
    r64 = run(ref.sampled_softmax_loss, data, torch.float64, "cpu")
    for name, a, b, c in zip(["loss", "dh", "dW", "db"], kern, r32, r64):
        assert_as_accurate(a, b, c, name)


def test_gradients_touch_only_targets_and_samples():
    data = make(11, 17, 200, 13, seed=2)
    h, t, W, b, ids = data[:5]
    kern = run(sampled_softmax_loss, data, torch.float32, DEVICE)
    touched = torch.zeros(200, dtype=torch.bool)
    touched[t] = True
    touched[ids] = True
    assert float(kern[2][~touched].abs().max()) == 0.0 and float(kern[3][~touched].abs().max()) == 0.0
    assert (kern[3][touched] != 0).all()
    # the touched-row API gives the same numbers as the dense scatter
    dev_data = [x.to(DEVICE) for x in (h.float(), t, W.float(), b.float(), ids, data[5].float(), data[6].float())]
    with torch.no_grad():
        loss = sampled_softmax_loss(*dev_data)
    lse = loss + ((h * W[t]).sum(1) + b[t] - torch.log(data[5])).float().to(DEVICE)
    g = torch.ones(11, device=DEVICE)
    dh, dwt, dtrue, dws, dbs = sampled_softmax_grads(*dev_data, lse, g)
    dW = torch.zeros(200, 17, device=DEVICE).index_add_(0, t.to(DEVICE), dwt).index_add_(0, ids.to(DEVICE), dws)
    Wr = W.float().requires_grad_()
    lr = ref.sampled_softmax_loss(h.float(), t, Wr, b.float(), ids, data[5].float(), data[6].float()).sum()
    (gW,) = torch.autograd.grad(lr, [Wr])
    assert torch.allclose(dW.cpu(), gW, atol=2e-6)


@pytest.mark.parametrize("N,P,V,chunk", [(37, 19, 1001, 128), (70, 77, 300, 100), (3, 16, 7, 16384)])
def test_full_softmax_matches_reference(N, P, V, chunk):
    h, t, W, b = make(N, P, V, min(V, 5), seed=3)[:4]
    with torch.no_grad():
        kern = full_softmax_loss(h.float().to(DEVICE), t.to(DEVICE), W.float().to(DEVICE), b.float().to(DEVICE),
                                 chunk).cpu()
    r32 = ref.full_softmax_loss_reference(h.float(), t, W.float(), b.float())
    r64 = ref.full_softmax_loss_reference(h, t, W, b)
    assert_as_accurate(kern, r32, r64, "full softmax loss")


def test_full_softmax_refuses_gradients():
    h, t, W, b = (x.float().to(DEVICE) if x.is_floating_point() else x.to(DEVICE) for x in make(4, 16, 30, 3)[:4])
    with pytest.raises(BackendError, match="evaluation kernel"):
        full_softmax_loss(h.requires_grad_(), t, W, b)
