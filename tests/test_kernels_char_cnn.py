"""Fused char-CNN kernel (kernels/char_cnn.py) vs the reference ``char_cnn_features``, forward and backward.

Runs the Triton kernels in the interpreter on CPU (``TRITON_INTERPRET=1`` must be set before the kernel
modules are imported: ``@triton.jit`` reads it when it decorates) or compiled on CUDA when present.

Tolerance rule (used by every kernel test): the float32 kernel must be about as accurate as the float32
reference, both measured against the same math in float64:
``|kernel - ref64| <= 4 * |ref32 - ref64| + 1e-6 * scale`` with ``scale = max(1, max |ref64|)``. Both
compute the same sums in a different order, so their rounding errors are of the same size; the 1e-6
floor (~8 float32 ulps at scale 1) covers outputs whose reference error happens to be ~0.
"""

import pytest
import torch

from triton_helpers import DEVICE, TRITON_MARKS, use_gpu_tiles, assert_as_accurate  # noqa: E402  (sets TRITON_INTERPRET first)

from elmo_fast.kernels.char_cnn import char_cnn  # noqa: E402
from elmo_fast.kernels.common import set_precision  # noqa: E402
from elmo_fast.nn.token_encoder import char_cnn_features  # noqa: E402

pytestmark = TRITON_MARKS


def make_inputs(N, L, d, filters, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 262, (N, L), generator=g)
    if N > 3:
        ids[1] = 0                       # a padding token (embeds to zeros everywhere)
        ids[2, 4:] = 261                 # a short word: a run of identical padding-char windows (max ties)
        ids[3, 1:] = 261                 # a one-char word
    emb = torch.randn(261, d, generator=g, dtype=torch.float64)
    Ws = [torch.randn(1, w, d, n, generator=g, dtype=torch.float64) * 0.5 for w, n in filters]
    bs = [torch.randn(n, generator=g, dtype=torch.float64) * 0.5 for _, n in filters]
    return ids, emb, Ws, bs


def run_both(ids, emb, Ws, bs, act, grad_seed=1):
    """(kernel outputs+grads, float32 reference, float64 reference)."""
    results = []
    for dtype, fn in ((torch.float32, char_cnn), (torch.float32, char_cnn_features), (torch.float64,
                                                                                      char_cnn_features)):
        dev = DEVICE if fn is char_cnn else "cpu"
        params = [p.to(dev, dtype).requires_grad_() for p in [emb] + Ws + bs]
        k = len(Ws)
        y = fn(ids.to(dev), params[0], params[1:1 + k], params[1 + k:], act)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
        grads = torch.autograd.grad(y, params, gy.to(dev,
                                                     dtype)) if y.numel() else [torch.zeros_like(p) for p in params]
        results.append([y.detach().cpu()] + [g.cpu() for g in grads])
    return results


@pytest.mark.parametrize("act,block_n", [("relu", "gpu"), ("tanh", None)])
def test_forward_and_gradients_match_reference(monkeypatch, act, block_n):
    """block_n "gpu": the GPU path's tiles (token block 8, i.e. several token blocks here), forced under the
    interpreter through the tile mode, so the numerics tested are those of the compiled configuration."""
    if block_n == "gpu":
        use_gpu_tiles(monkeypatch)
    # non-powers of two everywhere; N=37 > one interpreter token block (32); d=5 pads to 16 in the dot
    filters = [[1, 5], [2, 3], [3, 33], [4, 7]]
    ids, emb, Ws, bs = make_inputs(37, 13, 5, filters)
    kern, ref32, ref64 = run_both(ids, emb, Ws, bs, act)
    names = ["features", "d char_embed"] + [f"d W_cnn_{i}" for i in range(4)] + [f"d b_cnn_{i}" for i in range(4)]
    for name, a, b, c in zip(names, kern, ref32, ref64):
        assert a.shape == b.shape, name
        assert_as_accurate(a, b, c, name)
    # the padding token's features are act(bias): its windows are all zeros
    act_fn = torch.relu if act == "relu" else torch.tanh
    assert torch.allclose(kern[0][1], act_fn(torch.cat(bs)).float(), atol=1e-6)


def test_fifty_characters_and_tiny_preset_filters():
    """The real token length (50 -> 64 padded window positions) with the tiny preset's filter bank."""
    filters = [[1, 4], [2, 8], [3, 16], [4, 32], [5, 64]]
    ids, emb, Ws, bs = make_inputs(5, 50, 4, filters, seed=3)
    kern, ref32, ref64 = run_both(ids, emb, Ws, bs, "relu")
    for i, (a, b, c) in enumerate(zip(kern, ref32, ref64)):
        assert_as_accurate(a, b, c, f"output {i}")


def test_no_tokens():
    ids, emb, Ws, bs = make_inputs(0, 9, 3, [[2, 5], [3, 6]])
    y = char_cnn(ids.to(DEVICE), emb.float().to(DEVICE), [w.float().to(DEVICE) for w in Ws],
                 [b.float().to(DEVICE) for b in bs], "relu")
    assert y.shape == (0, 11)


def test_bf16_fast_mode_tolerance():
    """Opt-in bf16 matmul inputs (float32 accumulation and max): embeddings and weights are rounded to 8
    mantissa bits (relative 2^-9 each), so a window sum of w*d <= 20 products moves by ~0.5% of its
    magnitude; features must stay within 3% of the largest feature (observed 1.6%). Gradients are not
    compared elementwise: a rounding-induced change of the argmax window reroutes them (observed 0.5-5%)."""
    filters = [[1, 5], [2, 3], [3, 33], [4, 7]]
    ids, emb, Ws, bs = make_inputs(11, 13, 5, filters, seed=5)
    _, _, ref64 = run_both(ids, emb, Ws, bs, "tanh")
    set_precision("bf16")
    try:
        kern, _, _ = run_both(ids, emb, Ws, bs, "tanh")
    finally:
        set_precision(None)
    err = float((kern[0].double() - ref64[0]).abs().max())
    assert 0.0 < err <= 3e-2 * float(ref64[0].abs().max())  # > 0: the bf16 path really was taken
    for a, c in zip(kern[1:], ref64[1:]):  # gradients: same direction, similar size
        cos = torch.nn.functional.cosine_similarity(a.double().flatten(), c.flatten(), dim=0)
        assert cos > 0.99
