"""In-place sigmoid / tanh (elmo_fast.fast.native: ``activations.c``) and the token encoder that uses them.

torch's CPU sigmoid gives an element other bits when it lands in a thread range's scalar remainder instead of the
vector body, so with 1 and 2 threads the same highway gate came out different for ~1 row count in 3 (found embedding
WikiText-2 with the AllenNLP fixture model: 336 of 2,891 sentences differed by up to 5e-7 at 1 vs 2 threads). The
kernel computes every element the same way. Tolerance against torch: rtol 1e-6 / atol 1e-7 (a few float32 ulp,
values in [-1, 1]); across thread counts: bit for bit.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from elmo_fast.fast import native

pytestmark = [pytest.mark.usefixtures("native_level"),
              pytest.mark.skipif(native.library() is None, reason="no C compiler: the native kernels are off here "
                                               "(torch's activations run instead)")]

te = importlib.import_module("elmo_fast.fast.token_encoder")


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
@pytest.mark.parametrize("rows,cols,wide", [(1, 1, 1), (3, 17, 17), (281, 124, 248), (295, 124, 248), (64, 2048, 4096),
                                            (0, 5, 5)])
def test_matches_torch_and_is_thread_invariant(kind, rows, cols, wide, restore_threads):
    gen = torch.Generator().manual_seed(rows + cols)
    z = torch.randn(rows, wide, generator=gen) * 4.0
    want = getattr(torch, kind)(z[:, wide - cols:])
    got = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        x = z.clone()
        out = native.activation_(x[:, wide - cols:], kind)       # a column slice, as the highway gate is
        assert torch.equal(x[:, :wide - cols], z[:, :wide - cols])  # the rest of the row untouched
        got.append(out)
    assert torch.equal(got[0], got[1])
    torch.testing.assert_close(got[0], want, rtol=1e-6, atol=1e-7)


def test_nan_and_inf():
    x = torch.tensor([[float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 100.0, -100.0]])
    s = native.activation_(x.clone(), "sigmoid")
    t = native.activation_(x.clone(), "tanh")
    assert torch.isnan(s[0, 0]) and torch.isnan(t[0, 0])
    # saturation: exp's argument is limited to [-87.3, 88], so sigmoid(-inf) is ~6e-39, not 0 (as the fused cell)
    assert s[0, 1:].tolist() == [1.0, pytest.approx(0.0, abs=1e-38), 0.5, 0.5, 1.0, pytest.approx(0.0, abs=1e-38)]
    assert t[0, 1:].tolist() == [1.0, -1.0, 0.0, 0.0, 1.0, -1.0]


def test_refuses_bad_layouts():
    with pytest.raises(ValueError, match="contiguous rows"):
        native.activation_(torch.zeros(5, 4).t(), "sigmoid")
    with pytest.raises(ValueError, match="float32"):
        native.activation_(torch.zeros(2, 3, dtype=torch.float64), "tanh")


@pytest.mark.parametrize("activation,grad", [("relu", False), ("relu", True), ("tanh", False)])
def test_token_encoder_same_bits_at_one_and_two_threads(activation, grad, restore_threads):
    """The fast token encoder (inference and training forward) with 124 filters, at row counts where torch's
    sigmoid differed between thread counts. (Training with a tanh char-CNN keeps autograd's ``torch.tanh``, which
    is not thread-invariant: not covered.)"""
    from elmo_fast.nn.token_encoder import CharCNNTokenEncoder
    from elmo_fast.options import CharCNNOptions
    opts = CharCNNOptions(filters=((1, 4), (2, 8), (3, 16), (4, 32), (5, 64)), embedding_dim=4, n_highway=2,
                          activation=activation, n_characters=262, max_characters_per_token=50)
    torch.manual_seed(0)
    enc = CharCNNTokenEncoder(opts, 16)
    for p in enc.parameters():
        torch.nn.init.normal_(p, std=0.5)
    gen = torch.Generator().manual_seed(1)
    for U in range(261, 300, 2):
        ids = torch.zeros(U, 50, dtype=torch.long)
        for i in range(U):
            n = int(torch.randint(1, 20, (1,), generator=gen))
            ids[i, 0], ids[i, n + 1] = 259, 260
            ids[i, 1:n + 1] = torch.randint(1, 256, (n,), generator=gen)
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.set_grad_enabled(grad):
                outs.append(te.token_encoder_fast(enc, ids).detach())
        assert torch.equal(*outs), U
