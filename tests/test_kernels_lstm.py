"""Fused bidirectional LSTM layer (kernels/lstm_cell.py), step kernels and persistent kernel, vs
``lstm_layer_reference`` run per direction: outputs, final states and every gradient.

Interpreter on CPU (``TRITON_INTERPRET=1`` set before the kernels are imported), compiled on CUDA.
Tolerance rule as in test_kernels_char_cnn.py, ``|kernel - ref64| <= k |ref32 - ref64| + 1e-6 scale``,
with k = 4 for outputs and states and k = 12 for gradients. A recurrence amplifies rounding step after
step (gradients reach ~50 here) and the float32 reference is amplified the same way, which is why the
bound is relative to the reference's own float32 error; but two differently-ordered float32 runs of a
chaotic recurrence differ from float64 by amounts whose ratio scatters (observed up to 3.6 for dB; 9 for
dc0 once the reference adopted AllenNLP's operation order, whose float32 error on dc0 is smaller),
so gradients get the wider factor.
"""

import pytest
import torch

from triton_helpers import DEVICE, TRITON_MARKS, assert_as_accurate, use_gpu_tiles  # noqa: E402  (sets TRITON_INTERPRET first)

from elmo_fast.kernels import lstm_cell  # noqa: E402
from elmo_fast.kernels.common import set_precision  # noqa: E402
from elmo_fast.kernels.lstm_cell import lstm_bidirectional_layer, persistent_fits  # noqa: E402
from elmo_fast.nn.lstm import lstm_layer_reference  # noqa: E402

pytestmark = TRITON_MARKS


def make(B, T, P, C, lengths, shared, seed=0, w_scale=0.6):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    lengths = torch.tensor(lengths)
    x = r(B, T, P) if shared else r(2, B, T, P)
    valid = (torch.arange(T)[None, :] < lengths[:, None]).double()
    x = x * (valid[:, :, None] if shared else valid[None, :, :, None])  # padded positions are zero (as in the biLM)
    return dict(x=x, W_0=r(2, 2 * P, 4 * C) * w_scale, B=r(2, 4 * C), W_P=r(2, C, P) * 0.8,
                h0=r(2, B, P), c0=r(2, B, C) * 2.0), lengths


def run(tensors, lengths, shared, clip, residual, reverse, dtype, kernel, persistent=None, seed=1):
    dev = DEVICE if kernel else "cpu"
    ps = {k: v.to(dev, dtype).requires_grad_() for k, v in tensors.items()}
    x = ps["x"]
    x2 = x.unsqueeze(0).expand(2, *x.shape) if shared else x
    if kernel:
        y, h, c = lstm_bidirectional_layer(x2, ps["W_0"], ps["B"], ps["W_P"], ps["h0"], ps["c0"], lengths.to(dev),
                                           clip, clip, residual, persistent=persistent, reverse=reverse)
    else:
        outs = [lstm_layer_reference(x2[d], lengths, ps["h0"][d], ps["c0"][d], ps["W_0"][d], ps["B"][d], ps["W_P"][d],
                                     clip, clip, reverse=reverse and d == 1) for d in (0, 1)]
        y, h, c = (torch.stack([o[i] for o in outs]) for i in range(3))
        if residual:
            y = y + x2
    g = torch.Generator().manual_seed(seed)
    gs = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(dev, dtype) for t in (y, h, c)]
    loss = sum((t * gt).sum() for t, gt in zip((y, h, c), gs))
    grads = torch.autograd.grad(loss, list(ps.values()))
    return [t.detach().cpu() for t in (y, h, c)] + [gr.cpu() for gr in grads]


NAMES = ["y", "h_n", "c_n", "dx", "dW_0", "dB", "dW_P", "dh0", "dc0"]
CASES = [
    # (persistent, shared input, residual, clip, reverse, tiles)
    (False, True, False, 3.0, True, "gpu"),   # layer 0 of the biLM: both directions read the same x; GPU tiles
    (False, False, True, 3.0, True, "small"),  # layer 1 (residual), 16-wide tiles: several column blocks/chunks
    (True, True, False, 3.0, True, None),     # persistent kernel, layer 0
    (True, False, True, 3.0, False, "gpu"),   # persistent, training streams: both directions forward in time
    (False, False, False, None, False, None),  # step kernels, streams, no clipping at all
]


@pytest.mark.parametrize("persistent,shared,residual,clip,reverse,tiles", CASES)
def test_layer_matches_reference(monkeypatch, persistent, shared, residual, clip, reverse, tiles):
    """tiles: None = the interpreter's, "gpu" = the GPU path's own tiles (step kernels, persistent batch block,
    matmuls: forced through the tile mode), "small" = 16 everywhere."""
    if tiles == "gpu":
        use_gpu_tiles(monkeypatch)
        assert lstm_cell._tiles() == lstm_cell.GPU_TILES
    elif tiles == "small":
        monkeypatch.setattr(lstm_cell, "TILES", (16, 16, 16, 16))
    B, T, P, C = 5, 7, 19, 23          # non-powers of two, several blocks in the step kernels' column axes
    lengths = [7, 1, 4, 0, 6]           # full, length-1, padded, empty row
    tensors, lengths = make(B, T, P, C, lengths, shared)
    kern = run(tensors, lengths, shared, clip, residual, reverse, torch.float32, True, persistent)
    r32 = run(tensors, lengths, shared, clip, residual, reverse, torch.float32, False)
    r64 = run(tensors, lengths, shared, clip, residual, reverse, torch.float64, False)
    for i, (name, a, b, c) in enumerate(zip(NAMES, kern, r32, r64)):
        assert a.shape == b.shape, name
        assert_as_accurate(a, b, c, name, factor=4.0 if i < 3 else 12.0)
    if clip is not None:
        # both clip regimes occur in this data: |c| reaches the clip for some units and not for others
        c_all = r64[2]
        assert (c_all.abs() >= clip).any() and (c_all.abs() < clip).any()
    # the empty row keeps its initial state and has zero output (plus x, zero there, when residual)
    assert torch.equal(kern[1][:, 3], tensors["h0"][:, 3].float())
    assert float(kern[0][:, 3].abs().max()) == 0.0


@pytest.mark.parametrize("precision", ["ieee", None])
def test_clip_gradient_is_zero_where_clip_active(precision):
    """Saturate the cell clip (large weights): the kernel's gradients still equal the reference's, which
    routes zero gradient through clipped units (torch.clamp), and differ from an unclipped run.

    precision None is the default (tf32x3; emulated pass for pass under the interpreter). Its outputs get
    twice the IEEE factor: on this saturating recurrence three-pass TF32 is up to ~4x the float32
    reference's error (kernel 4.1x on c_n; the PyTorch emulation of the same products, tools/emulation.py,
    3.95x: the truncated remainders and the dropped small x small product cost ~2^-21 per product where
    float32 costs 2^-24), gradients stay within 3x."""
    out_factor = 4.0 if precision == "ieee" else 8.0
    B, T, P, C = 3, 5, 16, 17
    tensors, lengths = make(B, T, P, C, [5, 3, 5], shared=False, seed=3, w_scale=3.0)
    set_precision(precision)
    try:
        kern = run(tensors, lengths, False, 1.0, False, True, torch.float32, True, persistent=False)
    finally:
        set_precision(None)
    r64 = run(tensors, lengths, False, 1.0, False, True, torch.float64, False)
    r32 = run(tensors, lengths, False, 1.0, False, True, torch.float32, False)
    for i, (name, a, b, c) in enumerate(zip(NAMES, kern, r32, r64)):
        assert_as_accurate(a, b, c, name, factor=out_factor if i < 3 else 12.0)
    frac = float((r64[2].abs() >= 1.0).double().mean())
    assert 0.1 < frac < 1.0, frac
    unclipped = run(tensors, lengths, False, None, False, True, torch.float64, False)
    assert float((unclipped[4] - r64[4]).abs().max()) > 1e-2


def test_persistent_kernel_only_where_it_fits():
    fits = lambda p, c: persistent_fits(p, c, "ieee")  # noqa: E731
    assert fits(16, 64)          # tiny preset / test fixtures
    assert not fits(512, 4096)   # original: W_h is 8 MB, the step kernels run instead
    # the compile-checked budget (tests/test_gpu_compile.py): these spill or pass the shared memory limit
    assert not fits(64, 64) and not fits(32, 128) and not fits(16, 256)
    assert fits(32, 64) and fits(16, 128)
    # three-pass TF32 (the default mode) spills in the persistent kernel at every budget shape: step kernels
    assert not persistent_fits(16, 64, "tf32x3") and not persistent_fits(16, 64, "tf32")


def test_bf16_fast_mode_tolerance():
    """bf16 matmul inputs, float32 gates/cell/clips, Glorot-sized weights (std 0.15 for fan-in 38/92).
    Rounding both matmul inputs to 8 mantissa bits moves each gate pre-activation by ~2^-8 * sqrt(K)
    of its term size; 7 recurrent steps carry it forward. Bounds: outputs/states within 4% of their max
    (observed 1-1.7%); gradients cos >= 0.999 with the reference and max error within 8% of their max
    (observed <= 2.6%; a unit crossing a clip boundary reroutes its gradient, so elementwise bounds on
    gradients must be loose). With saturating random weights (std 0.6) gradients differ by up to 60%:
    bf16 is opt-in, for throughput, and never the parity mode."""
    tensors, lengths = make(5, 7, 19, 23, [7, 1, 4, 0, 6], shared=False, seed=5, w_scale=0.15)
    r64 = run(tensors, lengths, False, 3.0, True, True, torch.float64, False)
    set_precision("bf16")
    try:
        kern = run(tensors, lengths, False, 3.0, True, True, torch.float32, True, persistent=False)
    finally:
        set_precision(None)
    errs = [float((a.double() - c).abs().max()) / float(c.abs().max()) for a, c in zip(kern, r64)]
    assert max(errs[:3]) <= 4e-2 and errs[0] > 0.0, errs
    assert max(errs[3:]) <= 8e-2, errs
    for a, c in zip(kern[3:], r64[3:]):
        assert torch.nn.functional.cosine_similarity(a.double().flatten(), c.flatten(), dim=0) >= 0.999
