"""Reference biLM: an independent numpy implementation of docs/numerics.md (character ids, token encoder, biLSTM),
batching, direction and state semantics."""
import numpy as np
import pytest
import torch

from elmo_fast import BiLM, batch_to_ids
from elmo_fast.chars import CharacterMapper
from elmo_fast.nn.lstm import StateSlots
from elmo_fast.weights import write_weights
from helpers import random_weights, tiny_options, write_model


# ----------------------------------------------------------------------------- independent numpy model
def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def numpy_bilm(weights, opts, tokens):
    """docs/numerics.md (character ids, token encoder, biLSTM) written directly in TF layout, one sentence, zero
    initial state, float64."""
    W = {k: v.astype(np.float64) for k, v in weights.items()}
    mapper = CharacterMapper()
    ids = np.array([mapper.token_to_ids(t) for t in ["<S>"] + tokens + ["</S>"]])  # (L, 50), values 1..261
    table = np.vstack([np.zeros((1, W["char_embed"].shape[1])), W["char_embed"]])
    emb = table[ids]  # (L, 50, d)
    act = np.maximum if opts["char_cnn"]["activation"] == "relu" else None
    feats = []
    for i, (w, _n) in enumerate(opts["char_cnn"]["filters"]):
        K = W[f"CNN/W_cnn_{i}"][0]  # (w, d, n)
        conv = np.stack([np.einsum("lkd,kdn->ln", emb[:, p:p + w], K) for p in range(51 - w)], axis=1)
        conv = conv.max(axis=1) + W[f"CNN/b_cnn_{i}"]  # bias is position independent: max then bias is exact
        feats.append(np.maximum(conv, 0) if act is not None else np.tanh(conv))
    x = np.concatenate(feats, axis=-1)
    for k in range(opts["char_cnn"]["n_highway"]):
        g = _sigmoid(x @ W[f"CNN_high_{k}/W_carry"] + W[f"CNN_high_{k}/b_carry"])
        t = np.maximum(x @ W[f"CNN_high_{k}/W_transform"] + W[f"CNN_high_{k}/b_transform"], 0)
        x = g * t + (1 - g) * x
    if "CNN_proj/W_proj" in W:
        x = x @ W["CNN_proj/W_proj"] + W["CNN_proj/b_proj"]
    lstm = opts["lstm"]
    C, P = lstm["dim"], lstm["projection_dim"]
    layers = [np.concatenate([x, x], -1)]
    per_dir = []
    for d in (0, 1):
        inp = x if d == 0 else x[::-1]
        outs = []
        for layer in range(lstm["n_layers"]):
            p = f"RNN_{d}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"
            h, c = np.zeros(P), np.zeros(C)
            ys = []
            for t in range(len(inp)):
                z = np.concatenate([inp[t], h]) @ W[f"{p}/W_0"] + W[f"{p}/B"]
                i, j, f, o = np.split(z, 4)
                c = _sigmoid(f + 1.0) * c + _sigmoid(i) * np.tanh(j)
                if lstm.get("cell_clip") is not None:
                    c = np.clip(c, -lstm["cell_clip"], lstm["cell_clip"])
                h = (_sigmoid(o) * np.tanh(c)) @ W[f"{p}/W_P_0"]
                if lstm.get("proj_clip") is not None:
                    h = np.clip(h, -lstm["proj_clip"], lstm["proj_clip"])
                ys.append(h)
            y = np.stack(ys)
            if layer > 0 and lstm.get("use_skip_connections"):
                y = y + inp
            outs.append(y if d == 0 else y[::-1])
            inp = y
        per_dir.append(outs)
    for layer in range(lstm["n_layers"]):
        layers.append(np.concatenate([per_dir[0][layer], per_dir[1][layer]], -1))
    return layers


CONFIGS = {
    "tiny": {},
    "tanh_no_clip_no_skip": {"char_cnn__activation": "tanh", "lstm__cell_clip": None, "lstm__proj_clip": None,
                             "lstm__use_skip_connections": False},
    "no_highway_one_layer": {"char_cnn__n_highway": 0, "lstm__n_layers": 1},
    "three_layers_odd_sizes": {"lstm__n_layers": 3, "lstm__dim": 37, "lstm__projection_dim": 11,
                               "char_cnn__filters": [[1, 3], [4, 5], [7, 9]]},
}
SENTENCES = [["The", "bank", "closed", "."], ["naïve", "café", "日本語"], ["x"], [], ["a" * 60, "b"]]


def clip_active_model(directory, opts):
    """Moderate random weights with tight clips (cell 1.0, projection 0.3, where the options clip) so that
    both clips bind without making the recurrence chaotic; returns (weights, options path, weights path)."""
    opts["lstm"] = dict(opts["lstm"])
    if "cell_clip" in opts["lstm"]:
        opts["lstm"]["cell_clip"] = 1.0
    if "proj_clip" in opts["lstm"]:
        opts["lstm"]["proj_clip"] = 0.3
    weights = random_weights(opts, seed=7, scale=0.5)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "options.json").write_text(__import__("json").dumps(opts))
    write_weights(directory / "weights.hdf5", weights)
    return weights, directory / "options.json", directory / "weights.hdf5"


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_reference_matches_independent_numpy_model(tmp_path, config):
    """float32 torch vs float64 numpy. Token-layer values reach ~10, so float32 rounding (6e-8 relative)
    gives differences of ~1e-6 (the same size as the numpy model's own response to 1e-7 relative weight
    perturbations): atol 5e-6."""
    opts = tiny_options(**CONFIGS[config])
    weights, opt, w = clip_active_model(tmp_path / "m", opts)
    model = BiLM.from_files(opt, w, stateful=False, backend="reference")
    with torch.no_grad():
        out = model(batch_to_ids(SENTENCES))
    for row, tokens in enumerate(SENTENCES):
        want = numpy_bilm(weights, opts, tokens)
        n = len(tokens) + 2
        assert out["mask"][row].sum() == n
        for layer, expected in enumerate(want):
            got = out["activations"][layer][row].numpy()
            np.testing.assert_allclose(got[:n], expected, atol=5e-6, rtol=1e-5)
            assert (got[n:] == 0).all()


def test_clips_are_exercised(tmp_path):
    """The random test weights are large enough that both clips bind (so the clip tests test something)."""
    _, opt, w = clip_active_model(tmp_path / "m", tiny_options())
    model = BiLM.from_files(opt, w, stateful=True, backend="reference")
    with torch.no_grad():
        model(batch_to_ids(SENTENCES))
    h, c = model.states.h, model.states.c
    assert (c.abs() == 1.0).any() and (h.abs() == 0.3).any()
    assert (c.abs() < 1.0).any() and (h.abs() < 0.3).any()


def test_stateless_batch_invariance(tmp_path):
    opt, w = write_model(tmp_path / "m", seed=1)
    model = BiLM.from_files(opt, w, stateful=False, backend="reference")
    sentences = [["w%d" % i for i in range(70)], [], ["one"], ["two", "tokens"], ["ü" * 30, "x" * 55, "é"]]
    with torch.no_grad():
        batched = model(batch_to_ids(sentences))
        for row, s in enumerate(sentences):
            alone = model(batch_to_ids([s]))
            n = len(s) + 2
            for layer in range(3):
                torch.testing.assert_close(batched["activations"][layer][row, :n], alone["activations"][layer][0],
                                           atol=1e-6, rtol=1e-5)


def test_backward_direction_is_forward_stack_on_reversed_input(tmp_path):
    opt, w = write_model(tmp_path / "m", seed=2)
    model = BiLM.from_files(opt, w, stateful=False, backend="reference")
    mirror = BiLM.from_files(opt, w, stateful=False, backend="reference")
    with torch.no_grad():
        for layer in range(2):  # the mirror's forward cells get the backward weights
            for name in ("W_0", "B", "W_P_0"):
                getattr(mirror.lstm.cells[0][layer], name).copy_(getattr(model.lstm.cells[1][layer], name))
    P = model.options.lstm.projection_dim
    x = torch.randn(3, 9, P)
    lengths = torch.tensor([9, 4, 1])
    with torch.no_grad():
        outs, _ = model.lstm(x, lengths)
        rev = x.clone()
        for r, n in enumerate(lengths.tolist()):
            rev[r, :n] = x[r, :n].flip(0)
        mouts, _ = mirror.lstm(rev, lengths)
    for layer in range(2):
        for r, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(outs[layer][r, :n, P:], mouts[layer][r, :n, :P].flip(0), atol=1e-6, rtol=1e-5)


def _final_state(model, sentences, h0=None, c0=None):
    """Run the lstm of ``model`` on sentences with explicit initial state; return (outputs, h, c)."""
    emb, mask = model.embed_tokens(batch_to_ids(sentences))
    state = None if h0 is None else (h0, c0)
    outs, (h, c) = model.lstm(emb, mask.sum(1), state)
    return outs, h, c


def test_state_slots_follow_allennlp_semantics(tmp_path):
    opt, w = write_model(tmp_path / "m", seed=3)
    model = BiLM.from_files(opt, w, stateful=True, backend="reference")
    plain = BiLM.from_files(opt, w, stateful=False, backend="reference")
    a = [["first", "batch"], ["has", "three", "rows"], ["third"]]
    b = [["now", "two"], ["rows"]]
    c = [["a"], ["b", "c"], ["d"], ["fourth", "row", "is", "new"]]
    with torch.no_grad():
        model(batch_to_ids(a))
        _, ha, ca = _final_state(plain, a)
        assert torch.equal(model.states.h, ha) and torch.equal(model.states.c, ca)
        model(batch_to_ids(b))
        _, hb, cb = _final_state(plain, b, ha[:, :2], ca[:, :2])
        torch.testing.assert_close(model.states.h[:, :2], hb, atol=0, rtol=0)
        assert torch.equal(model.states.h[:, 2], ha[:, 2])  # slot beyond the smaller batch untouched
        assert torch.equal(model.states.c[:, 2], ca[:, 2])
        out = model(batch_to_ids(c))
        h0 = torch.cat([hb, ha[:, 2:3], torch.zeros_like(ha[:, :1])], 1)
        c0 = torch.cat([cb, ca[:, 2:3], torch.zeros_like(ca[:, :1])], 1)
        want, hc, cc = _final_state(plain, c, h0, c0)
        for layer in range(2):
            torch.testing.assert_close(out["activations"][layer + 1], want[layer], atol=0, rtol=0)
        # row 3 is new: it started from zero, like a stateless run of it alone
        alone = plain(batch_to_ids([c[3]]))
        torch.testing.assert_close(out["activations"][2][3], alone["activations"][2][0], atol=1e-6, rtol=1e-5)
        # the carried state changes the output of the same sentence
        again = model(batch_to_ids(c))
        assert (again["activations"][2] - out["activations"][2]).abs().max() > 1e-4
        model.reset_states()
        fresh = model(batch_to_ids(c))
        torch.testing.assert_close(fresh["activations"][2], plain(batch_to_ids(c))["activations"][2], atol=0, rtol=0)


def test_state_slots_keep_old_value_for_all_zero_rows():
    slots = StateSlots()
    h = torch.arange(12.0).view(1, 3, 4) + 1
    c = torch.arange(18.0).view(1, 3, 6) + 1
    slots.update(h, c)
    new_h, new_c = h * 10, c * 10
    new_h[:, 1] = 0.0  # degenerate row: its h slot is kept, c is replaced
    slots.update(new_h, new_c)
    assert torch.equal(slots.h[:, 1], h[:, 1]) and torch.equal(slots.h[:, 0], new_h[:, 0])
    assert torch.equal(slots.c, new_c)


def test_bad_input_shape():
    model = BiLM(__import__("elmo_fast").preset("tiny"))
    with pytest.raises(ValueError, match=r"expected shape \(B, T, 50\), found \(2, 7\)"):
        model(torch.zeros(2, 7, dtype=torch.long))
