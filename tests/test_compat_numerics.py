"""The biLSTM's floating-point operation order is AllenNLP's (issue 13 item 4).

The AllenNLP-style implementation of ``benchmarks/baseline.py`` (separate ``input_linearity`` / ``state_linearity``
``Linear`` layers in AllenNLP's weight layout, the +1 forget bias folded into the state bias at load time, a
per-step loop over the rows still active) is the oracle: with the same token embeddings and one thread, the
reference path must give the *same bits*, so any change of the order (the forget bias added at run time, the bias
added to the input product, one product over ``[x; h]``, a fused ``f*c + i*g``) makes these tests fail.
"""
import sys
from pathlib import Path

import pytest
import torch

from elmo_fast.nn.bilm import BiLM
from elmo_fast.nn.lstm import FORGET_BIAS, folded_bias
from elmo_fast.options import options_from_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.baseline import BaselineElmo  # noqa: E402


def _model(backend: str, seed: int = 0, dim: int = 48, projection_dim: int = 16, order: str | None = None) -> BiLM:
    opts = options_from_dict({
        "lstm": {"dim": dim, "projection_dim": projection_dim, "n_layers": 2, "cell_clip": 3.0, "proj_clip": 3.0,
                 "use_skip_connections": True},
        "char_cnn": {"embedding": {"dim": 4}, "filters": [[1, 8], [2, 8]], "n_highway": 1, "n_characters": 262,
                     "max_characters_per_token": 50, "activation": "relu"}})
    model = BiLM(opts, stateful=True, backend=backend, order=order)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p.shape[-2] if p.dim() >= 2 else 1
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.dim() == 1 else 1.5 / fan_in ** 0.5))
    return model.eval()


def _stateful_baseline_run(base: BaselineElmo, emb: torch.Tensor, lengths: torch.Tensor,
                           state: tuple[torch.Tensor, torch.Tensor] | None):
    """AllenNLP's ElmoLstm semantics on top of the baseline's per-step cell: sort, run, unsort, carry states."""
    o = base.options.lstm
    P, C = o.projection_dim, o.dim
    batch = emb.shape[0]
    h_all = emb.new_zeros(o.n_layers, batch, 2 * P) if state is None else state[0]
    c_all = emb.new_zeros(o.n_layers, batch, 2 * C) if state is None else state[1]
    sorted_len, order = torch.sort(lengths, descending=True)
    inverse = torch.argsort(order)
    layers, new_h, new_c = [[], []], [[], []], [[], []]
    for d in (0, 1):
        inputs = emb[order]
        for layer, cell in enumerate(base.cells[d]):
            y, h, c = base._cell_forward(cell, inputs, sorted_len.tolist(), h_all[layer, order, d * P:(d + 1) * P],
                                         c_all[layer, order, d * C:(d + 1) * C], backward=d == 1)
            if layer > 0:
                y = y + inputs
            layers[d].append(y[inverse])
            new_h[d].append(h[inverse])
            new_c[d].append(c[inverse])
            inputs = y
    out = [torch.cat([f, b], -1) for f, b in zip(*layers)]
    h = torch.stack([torch.cat([f, b], -1) for f, b in zip(*new_h)])
    c = torch.stack([torch.cat([f, b], -1) for f, b in zip(*new_c)])
    return out, (h, c)


def test_forget_bias_is_folded_in_float32():
    B = torch.tensor([0.1, -2.0, 1e-8, 0.3, 5.0, -1.0, 0.7, 0.2])  # C = 2: blocks i, j, f, o
    b = folded_bias(B)
    assert torch.equal(b[:4], B[:4]) and torch.equal(b[6:], B[6:])
    assert torch.equal(b[4:6], B[4:6] + torch.tensor(FORGET_BIAS, dtype=torch.float32))
    assert b[4] == torch.tensor(6.0) and b[5] == torch.tensor(0.0)


@pytest.mark.parametrize("lengths", [[9, 9, 9, 9, 9], [23, 14, 9, 3, 1], [17]])
def test_reference_lstm_is_bitwise_allennlp_order(lengths):
    """Three stateful calls (states carried), unequal lengths incl. one-row tails: identical bits."""
    torch.set_num_threads(1)
    model = _model("reference")
    base = BaselineElmo(model)
    gen = torch.Generator().manual_seed(1)
    state = None
    lens = torch.tensor(lengths)
    mask = torch.arange(max(lengths))[None, :] < lens[:, None]
    for call in range(3):
        emb = torch.randn(len(lengths), max(lengths), 16, generator=gen) * mask[..., None]
        with torch.no_grad():
            got = model.forward_embeddings(emb, mask)["activations"][1:]
            want, state = _stateful_baseline_run(base, emb, lens, state)
        for layer, (g, w) in enumerate(zip(got, want)):
            assert torch.equal(g, w), f"call {call} layer {layer + 1}: max diff {float((g - w).abs().max())}"
        assert torch.equal(model.states.h, state[0]) and torch.equal(model.states.c, state[1])


@pytest.mark.parametrize("blas_only", [False, True])
def test_fast_lstm_is_bitwise_allennlp_order_on_full_rows(monkeypatch, blas_only):
    """The fast path's products are matrix products over all rows of a step; where AllenNLP's are too (every
    row active, four or more rows: the BLAS's small-row and one-row kernels sum in other orders) the bits are
    AllenNLP's, i.e. the bias placement and the cell update follow its order. (The ``small`` preset's LSTM
    sizes: tinier products go through torch's own small-matrix loops instead of the BLAS.)"""
    torch.set_num_threads(1)
    model = _model("fast", dim=1024, projection_dim=128, order="allennlp" if blas_only else None)
    base = BaselineElmo(model)
    gen = torch.Generator().manual_seed(2)
    lens = torch.full((6,), 11)
    mask = torch.ones(6, 11, dtype=torch.bool)
    state = None
    for call in range(2):
        emb = torch.randn(6, 11, 128, generator=gen)
        with torch.no_grad():
            got = model.forward_embeddings(emb, mask)["activations"][1:]
            want, state = _stateful_baseline_run(base, emb, lens, state)
        for g, w in zip(got, want):
            assert torch.equal(g, w), f"call {call}: max diff {float((g - w).abs().max())}"


def test_reference_token_encoder_is_bitwise_allennlp_order():
    """Char-CNN, highway (one product over [W_t, -W_c] with its bias, gate σ(-z_c)) and projection in
    AllenNLP's order: the same bits as the AllenNLP-style encoder at one thread."""
    from elmo_fast.chars import batch_to_ids
    torch.set_num_threads(1)
    model = _model("reference", seed=3, dim=1024, projection_dim=128)
    ids = batch_to_ids([["The", "token", "encoder", "runs", "on", "every", "position", "."], ["Short", "one"],
                        ["ünïcödé", "x" * 60]])
    with torch.no_grad():
        got = model.encode_tokens(ids)
        want = BaselineElmo(model).encode(ids)
    assert torch.equal(got, want), float((got - want).abs().max())
