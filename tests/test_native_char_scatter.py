"""The char-CNN backward scatter (elmo_fast.fast.native: ``char_cnn.c``) against the torch ops it replaces in
:class:`elmo_fast.fast.token_encoder._CharConvMax` (an int64 index gather and one ``scatter_add_`` per offset).

Each ``A[k, s, f]`` receives its terms in row order in both, so the results are compared bit for bit: on awkward
sizes (one row, one filter, filter counts that are not a multiple of the kernel's column block, several groups
accumulated into one ``A``), at 1 and 2 threads, and through the whole token encoder's gradients with the kernel on
and off. Bad ids and windows are refused.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from elmo_fast.fast import native

pytestmark = [pytest.mark.usefixtures("native_level"),
              pytest.mark.skipif(native.library() is None, reason="no C compiler: the native kernels are off here "
                                               "(the torch ops run instead; tests/test_fast.py covers that path)")]


def _torch_scatter(A, ids, j, g):
    j = j.long()
    for k in range(A.shape[0]):
        A[k].scatter_add_(0, ids.gather(1, j + k), g)


def _group(U, width, F, w_max, n_sym, seed):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, n_sym, (U, width), generator=gen)
    j = torch.randint(0, width - w_max + 1, (U, F), generator=gen).to(torch.uint8)
    g = torch.randn(U, F, generator=gen)
    return ids, j, g


@pytest.mark.parametrize("U,width,F,w_max,n_sym", [(1, 1, 1, 1, 3), (1, 9, 7, 3, 5), (13, 50, 257, 7, 262),
                                                   (40, 12, 600, 4, 30), (0, 5, 8, 2, 4)])
def test_scatter_matches_torch_bitwise(U, width, F, w_max, n_sym):
    groups = [_group(U, width, F, w_max, n_sym, seed=s) for s in range(3)]   # accumulated one after another
    want, got = torch.zeros(w_max, n_sym, F), torch.zeros(w_max, n_sym, F)
    for ids, j, g in groups:
        _torch_scatter(want, ids, j, g)
        native.char_scatter(got, ids, j, g)
    assert torch.equal(got, want)
    if U:
        assert float(got.abs().sum()) > 0


def test_scatter_reads_a_row_slice_of_the_gradient():
    ids, j, g = _group(9, 20, 300, 5, 40, seed=1)
    wide = torch.randn(30, 300)
    wide[11:20] = g
    want, got = torch.zeros(5, 40, 300), torch.zeros(5, 40, 300)
    _torch_scatter(want, ids, j, g)
    native.char_scatter(got, ids, j, wide[11:20])
    assert torch.equal(got, want)


def test_bitwise_same_at_one_and_two_threads():
    ids, j, g = _group(197, 17, 2048, 7, 262, seed=4)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            A = torch.zeros(7, 262, 2048)
            native.char_scatter(A, ids, j, g)
            results.append(A)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(*results)


def test_refuses_bad_ids_windows_and_layouts():
    ids, j, g = _group(4, 10, 16, 3, 8, seed=2)
    A = torch.zeros(3, 8, 16)
    bad = ids.clone()
    bad[2, :] = 8
    with pytest.raises(ValueError, match="outside"):
        native.char_scatter(A, bad, j, g)
    far = j.clone()
    far[0, 0] = 8                                     # 8 + 3 > 10 characters
    with pytest.raises(ValueError, match="window"):
        native.char_scatter(A, ids, far, g)
    with pytest.raises(ValueError, match="int64 ids"):
        native.char_scatter(A, ids.int(), j, g)
    with pytest.raises(ValueError, match="float32"):
        native.char_scatter(A, ids, j, g.double())


def test_token_encoder_gradients_same_with_the_kernel_on_and_off(monkeypatch):
    """The training token encoder (grouped windows, several groups) end to end: every parameter's gradient is
    bit-identical whether the scatter runs in the kernel or as torch ops."""
    from elmo_fast.chars import batch_to_ids
    from elmo_fast.nn.token_encoder import CharCNNTokenEncoder
    from elmo_fast.options import preset
    te = importlib.import_module("elmo_fast.fast.token_encoder")
    words = ["a", "of", "the", "ELMo", "tokenization", "x" * 45, "naïve", "co-operate", "1,234", "z"]
    chars = batch_to_ids([[w] for w in words])[:, 0]
    torch.manual_seed(0)
    enc = CharCNNTokenEncoder(preset("tiny").char_cnn, preset("tiny").lstm.projection_dim)
    for p in enc.parameters():
        torch.nn.init.normal_(p, std=0.3)
    grads = []
    for on in (True, False):
        if not on:  # the torch ops instead of the kernel (only the scatter: the rest of the path stays the same)
            monkeypatch.setattr(te.native, "char_scatter", lambda A, ids, j, g: _torch_scatter(A, ids, j, g))
        enc.zero_grad(set_to_none=True)
        out = te.token_encoder_fast(enc, chars)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append([p.grad.clone() for p in enc.parameters()])
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    assert any(float(a.abs().sum()) > 0 for a in grads[0])
