"""AllenNLP-style tests of every name in elmo_fast.compat.allennlp against the shared TensorFlow fixtures."""
import argparse
import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from elmo_fast.backend import BackendError
from elmo_fast.compat import allennlp as A
from elmo_fast.nn.scalar_mix import LAYER_NORM_EPS, ScalarMix
from test_reference_fixtures import CASES, load_case, run_protocol


@pytest.fixture
def allennlp_fixture(fixtures_dir):
    d = fixtures_dir / "allennlp"
    sentences = [s.split() for s in json.loads((d / "sentences.json").read_text())[0][:4]]
    return d / "options.json", d / "lm_weights.hdf5", sentences


def _top_of(activations, mask, batch):
    top, _ = A.remove_sentence_boundaries(activations[-1], mask)
    return [top[j, :len(s)].detach().numpy() for j, s in enumerate(batch)]


# ------------------------------------------------------------------------------------------------ outputs
@pytest.mark.parametrize("name,sentence_file", CASES)
def test_elmo_bilm_reproduces_tensorflow(fixtures_dir, name, sentence_file):
    d, sentences, expected = load_case(fixtures_dir, name, sentence_file)
    bilm = A._ElmoBiLm(str(d / "options.json"), str(d / "lm_weights.hdf5"))

    @torch.no_grad()
    def embed(batch):
        out = bilm(A.batch_to_ids(batch))
        assert out["mask"].dtype == torch.bool and len(out["activations"]) == 3
        return _top_of(out["activations"], out["mask"], batch)
    assert run_protocol(embed, sentences, expected) < 1e-5


def test_elmo_top_layer_mix_reproduces_tensorflow(fixtures_dir):
    d, sentences, expected = load_case(fixtures_dir, *CASES[0])
    elmo = A.Elmo(str(d / "options.json"), str(d / "lm_weights.hdf5"), 1, dropout=0.0,
                  scalar_mix_parameters=[-1e4, -1e4, 1e4])

    @torch.no_grad()
    def embed(batch):
        out = elmo(A.batch_to_ids(batch))
        return [out["elmo_representations"][0][j, :len(s)].numpy() for j, s in enumerate(batch)]
    assert run_protocol(embed, sentences, expected) < 1e-5
    assert not any(p.requires_grad for p in elmo.parameters())


def test_elmo_lstm_alone_reproduces_tensorflow(fixtures_dir):
    """_ElmoCharacterEncoder + a separately built ElmoLstm (load_weights) = the TF biLM, states carried."""
    d, sentences, expected = load_case(fixtures_dir, *CASES[0])
    opts = json.loads((d / "options.json").read_text())["lstm"]
    encoder = A._ElmoCharacterEncoder(str(d / "options.json"), str(d / "lm_weights.hdf5"))
    lstm = A.ElmoLstm(opts["projection_dim"], opts["projection_dim"], opts["dim"], opts["n_layers"],
                      memory_cell_clip_value=opts["cell_clip"], state_projection_clip_value=opts["proj_clip"])
    lstm.load_weights(str(d / "lm_weights.hdf5"))
    assert not any(p.requires_grad for p in lstm.parameters())

    @torch.no_grad()
    def embed(batch):
        tok = encoder(A.batch_to_ids(batch))
        out = lstm(tok["token_embedding"], tok["mask"])
        assert out.shape[:2] == (2, len(batch))
        return _top_of(list(out), tok["mask"], batch)
    assert run_protocol(embed, sentences, expected) < 1e-5
    with pytest.raises(ValueError, match="recurrent_dropout"):
        A.ElmoLstm(16, 16, 64, 2, recurrent_dropout_probability=0.1)
    with pytest.raises(ValueError, match="expected shape"):  # layer 1 reads 8 features, the file's 16
        A.ElmoLstm(8, 16, 64, 2).load_weights(str(d / "lm_weights.hdf5"))


# ------------------------------------------------------------------------------------------------ token layer
def test_character_encoder_token_representations_with_boundaries(fixtures_dir):
    d = fixtures_dir / "allennlp"
    words = (d / "vocab_test.txt").read_text().strip().split("\n")
    with h5py.File(d / "elmo_token_embeddings.hdf5", "r") as f:
        expected = f["embedding"][...]  # row k = words[k]
    encoder = A._ElmoCharacterEncoder(str(d / "options.json"), str(d / "lm_weights.hdf5"))
    with torch.no_grad():
        out = encoder(A.batch_to_ids([words]))
    emb, mask = out["token_embedding"], out["mask"]
    assert set(out) == {"mask", "token_embedding"} and encoder.get_output_dim() == 16
    assert emb.shape == (1, len(words) + 2, 16) and mask.dtype == torch.bool and mask.all()
    np.testing.assert_allclose(emb[0, 1:-1].numpy(), expected, atol=1e-6)
    # BOS and EOS are the token vectors of <S> and </S>
    np.testing.assert_allclose(emb[0, 0].numpy(), expected[words.index("<S>")], atol=1e-6)
    np.testing.assert_allclose(emb[0, -1].numpy(), expected[words.index("</S>")], atol=1e-6)
    # the view inside _ElmoBiLm gives the same, and shares the parameters
    bilm = A._ElmoBiLm(str(d / "options.json"), str(d / "lm_weights.hdf5"))
    with torch.no_grad():
        view = bilm._token_embedder(A.batch_to_ids([words[:5], words[5:7]]))
    assert view["mask"].sum(1).tolist() == [7, 4]
    np.testing.assert_allclose(view["token_embedding"][0, 1:6].numpy(), expected[:5], atol=1e-6)
    assert {id(p) for p in bilm._token_embedder.parameters()} == {id(p) for p in bilm.token_encoder.parameters()}
    with pytest.raises(ValueError, match=r"\[0, 261\]"):
        encoder(torch.full((1, 2, 50), 262))


# ------------------------------------------------------------------------------------------------ caching
def test_vocab_cache_and_out_of_cache_fallback(allennlp_fixture):
    opt, w, sents = allennlp_fixture
    vocab = ["@@PADDING@@"] + sorted({t for s in sents for t in s})
    ids = A.batch_to_ids(sents)
    word_ids = torch.tensor([[vocab.index(t) for t in s] + [0] * (ids.shape[1] - len(s)) for s in sents])
    cached = A.Elmo(str(opt), str(w), 1, dropout=0.0, vocab_to_cache=vocab)
    plain = A.Elmo(str(opt), str(w), 1, dropout=0.0)
    with torch.no_grad():
        want = plain(ids)
        got = cached(ids, word_ids)
        torch.testing.assert_close(got["elmo_representations"][0], want["elmo_representations"][0],
                                   atol=1e-5, rtol=1e-5)
        assert torch.equal(got["mask"], want["mask"])
        # ids outside the cache (too large, negative): the batch runs through the character encoder
        for bad in (len(vocab), 10 ** 6, -1):
            broken = word_ids.clone()
            broken[0, 0] = bad
            cached.reset_states()
            out = cached(ids, broken)
            torch.testing.assert_close(out["elmo_representations"][0], want["elmo_representations"][0],
                                       atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="word_inputs"):
            cached(ids, word_ids[:, :3])
    bilm = cached._elmo_lstm
    assert isinstance(bilm, A._ElmoBiLm) and bilm._word_embedding.weight.shape == (len(vocab), 16)
    assert not bilm._word_embedding.weight.requires_grad
    # the cached vector of a word is the character encoder's vector for it
    with torch.no_grad():
        direct = bilm._token_embedder(A.batch_to_ids([vocab[1:4]]))["token_embedding"][0, 1:4]
    torch.testing.assert_close(bilm._word_embedding.weight[1:4], direct, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------------------------ states
def test_four_dim_inputs_and_reset_states_paths(allennlp_fixture):
    opt, w, sents = allennlp_fixture
    ids = A.batch_to_ids(sents)                       # (4, T, 50)
    elmo = A.Elmo(str(opt), str(w), 2, dropout=0.0)
    with torch.no_grad():
        first = elmo(ids)["elmo_representations"][0]
        second = elmo(ids)["elmo_representations"][0]
        assert (first - second).abs().max() > 1e-3   # states were carried
        elmo._elmo_lstm._elmo_lstm.reset_states()      # the AllenNLP idiom
        torch.testing.assert_close(elmo(ids)["elmo_representations"][0], first)
        elmo.reset_states()
        nested = elmo(ids.view(2, 2, *ids.shape[1:]))
        assert nested["elmo_representations"][1].shape == (2, 2, ids.shape[1], 32)
        assert nested["mask"].shape == (2, 2, ids.shape[1])
        torch.testing.assert_close(nested["elmo_representations"][0].reshape(first.shape), first)
        # the same flattened rows carry their states into the next 4-D call
        again = elmo(ids.view(2, 2, *ids.shape[1:]))["elmo_representations"][0].reshape(first.shape)
        torch.testing.assert_close(again, second)
    lstm = elmo._elmo_lstm._elmo_lstm
    assert isinstance(lstm, A.ElmoLstm) and lstm.stateful
    assert {id(p) for p in lstm.parameters()} == {id(p) for p in elmo._elmo_lstm.lstm.parameters()}
    # the views add nothing to the state dict
    assert not any("_token_embedder" in k or "_elmo_lstm._elmo_lstm" in k for k in elmo.state_dict())


# ------------------------------------------------------------------------------------------------ requires_grad
@pytest.mark.parametrize("requires_grad", [False, True])
def test_requires_grad_decides_which_parameters_train(allennlp_fixture, requires_grad):
    opt, w, sents = allennlp_fixture
    elmo = A.Elmo(str(opt), str(w), 1, requires_grad=requires_grad, dropout=0.0)
    bilm_params = dict(elmo._elmo_lstm.named_parameters())
    assert bilm_params and all(p.requires_grad == requires_grad for p in bilm_params.values())
    assert all(p.requires_grad for p in elmo.scalar_mix_0.parameters())
    elmo(A.batch_to_ids(sents))["elmo_representations"][0].sum().backward()
    assert elmo.scalar_mix_0.gamma.grad is not None
    got_grad = {n for n, p in bilm_params.items() if p.grad is not None and p.grad.abs().sum() > 0}
    if requires_grad:  # every biLM weight gets a gradient (char table, CNN, highway, projection, both LSTMs)
        assert got_grad == set(bilm_params)
    else:
        assert not got_grad
    fixed = A.Elmo(str(opt), str(w), 1, scalar_mix_parameters=[0.0, 1.0, 2.0])
    assert not any(p.requires_grad for p in fixed.parameters())


# ------------------------------------------------------------------------------------------------ token embedder
def test_elmo_token_embedder(allennlp_fixture):
    opt, w, sents = allennlp_fixture
    ids = A.batch_to_ids(sents)
    torch.manual_seed(0)
    emb = A.ElmoTokenEmbedder(str(opt), str(w), dropout=0.0, projection_dim=7, requires_grad=True)
    assert emb.get_output_dim() == 7
    out = emb(ids)
    assert out.shape == (4, ids.shape[1], 7)
    emb.reset_states()
    with torch.no_grad():
        rep = emb._elmo(ids)["elmo_representations"][0]
    torch.testing.assert_close(out.detach(), emb._projection(rep))
    out.sum().backward()
    assert emb._projection.weight.grad is not None and emb._elmo._elmo_lstm.lstm.cells[0][0].W_0.grad is not None
    nested = emb(ids.view(2, 2, *ids.shape[1:]))
    assert nested.shape == (2, 2, ids.shape[1], 7)
    plain = A.ElmoTokenEmbedder(str(opt), str(w), do_layer_norm=True, scalar_mix_parameters=[1.0, 0.0, 0.0])
    assert plain.get_output_dim() == 32 and plain._projection is None
    assert plain._elmo.scalar_mix_0.do_layer_norm and not plain._elmo.scalar_mix_0.gamma.requires_grad
    assert not any(p.requires_grad for p in plain.parameters())
    vocab = ["@@PADDING@@"] + sorted({t for s in sents for t in s})
    cached = A.ElmoTokenEmbedder(str(opt), str(w), dropout=0.0, vocab_to_cache=vocab)
    word_ids = torch.tensor([[vocab.index(t) for t in s] + [0] * (ids.shape[1] - len(s)) for s in sents])
    with torch.no_grad():
        torch.testing.assert_close(cached(ids, word_ids), A.ElmoTokenEmbedder(str(opt), str(w), dropout=0.0)(ids),
                                   atol=1e-5, rtol=1e-5)
    assert A.ElmoTokenEmbedder(str(opt), str(w), dropout=0.3)._elmo._dropout.p == 0.3


# ------------------------------------------------------------------------------------------------ embedder, command
def test_embedder_and_elmo_command(fixtures_dir, tmp_path):
    d, sentences, expected = load_case(fixtures_dir, *CASES[0])
    embedder = A.ElmoEmbedder(str(d / "options.json"), str(d / "lm_weights.hdf5"))
    assert run_protocol(lambda b: [e[2] for e in embedder.embed_batch(b)], sentences, expected) < 1e-5
    lines = sentences[0][:5]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.hdf5"
    out.write_text("an old file: AllenNLP's command replaces it")
    args = argparse.Namespace(input_file=open(tmp_path / "in.txt"), output_file=str(out), all=False, top=True,
                              average=False, options_file=str(d / "options.json"),
                              weight_file=str(d / "lm_weights.hdf5"), batch_size=2, cuda_device=-1,
                              forget_sentences=False, use_sentence_keys=False)
    assert A.elmo_command(args) == 0
    fresh = A.ElmoEmbedder(str(d / "options.json"), str(d / "lm_weights.hdf5"))
    want = [v[2] for v in fresh.embed_sentences([s.split() for s in lines], batch_size=2)]
    with h5py.File(out, "r") as f:
        assert json.loads(f["sentence_to_index"][0]) == {s: str(i) for i, s in enumerate(lines)}
        for i in range(len(lines)):
            np.testing.assert_allclose(f[str(i)][...], want[i], atol=1e-6)
    args.top, args.all = False, False
    with pytest.raises(ValueError, match="all/top/average"):
        A.elmo_command(args)
    assert A.empty_embedding().shape == (3, 0, 1024) and A.DEFAULT_BATCH_SIZE == 64


# ------------------------------------------------------------------------------------------------ helpers
def test_sentence_boundary_helpers_follow_allennlp():
    values = torch.arange(1, 13, dtype=torch.float32).view(2, 2, 3)
    mask = torch.tensor([[True, True], [True, False]])
    with_b, new_mask = A.add_sentence_boundary_token_ids(values, mask, torch.full((3,), -1.0), torch.full((3,), -2.0))
    assert with_b.shape == (2, 4, 3) and new_mask.tolist() == [[True] * 4, [True, True, True, False]]
    assert with_b[1, 2].tolist() == [-2.0] * 3 and with_b[0, 3].tolist() == [-2.0] * 3
    ids, id_mask = A.add_sentence_boundary_token_ids(torch.tensor([[5, 6], [7, 0]]), mask, 1, 2)
    assert ids.tolist() == [[1, 5, 6, 2], [1, 7, 2, 0]] and id_mask.tolist() == [[True] * 4, [True] * 3 + [False]]
    back, back_mask = A.remove_sentence_boundaries(with_b, new_mask)
    assert torch.equal(back[0], values[0]) and back[1, 0].tolist() == values[1, 0].tolist()
    assert back[1, 1].abs().sum() == 0 and back_mask.tolist() == mask.tolist()


# ------------------------------------------------------------------------------------------------ validation
def test_elmo_rejects_bad_arguments_and_inputs(allennlp_fixture):
    opt, w, sents = allennlp_fixture
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="num_output_representations"):
            A.Elmo(str(opt), str(w), bad)
    with pytest.raises(ValueError, match="scalar_mix_parameters"):
        A.Elmo(str(opt), str(w), 1, scalar_mix_parameters=[1.0, 2.0])
    with pytest.raises(ValueError, match="dropout"):
        A.Elmo(str(opt), str(w), 1, dropout=1.5)
    elmo = A.Elmo(str(opt), str(w), 1, dropout=0.0)
    with pytest.raises(ValueError, match="empty"):
        elmo(torch.zeros(0, 3, 50, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        elmo(torch.zeros(2, 0, 3, 50, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        elmo(A.batch_to_ids(sents).float())
    with pytest.raises(TypeError, match="torch.Tensor"):
        elmo(sents)
    with pytest.raises(ValueError, match="shape"):
        elmo(torch.ones(3, 50, dtype=torch.long))
    for value in (262, -1):
        ids = A.batch_to_ids(sents)
        ids[0, 0, 0] = value
        with pytest.raises(ValueError, match=r"\[0, 261\]"):
            elmo(ids)


def test_scalar_mix_layer_norm_epsilon_is_allennlps():
    """A near-constant layer (variance 3.6e-15): the 1e-13 epsilon dominates, so any other value changes it."""
    assert LAYER_NORM_EPS == 1e-13
    base = 0.5
    dev = 2.0 ** -24                       # one float32 ulp at 0.5: 0.5 +- dev are exact
    x = torch.tensor([[base - dev, base + dev, base - dev, base + dev, 7.0]]).view(1, 5, 1)
    mask = torch.tensor([[True, True, True, True, False]])
    out = ScalarMix(1, do_layer_norm=True)([x], mask).detach()
    var = dev ** 2                          # mean 0.5 over the unmasked elements; padding excluded
    want = torch.tensor([-dev, dev, -dev, dev, 6.5], dtype=torch.float64) / (var + 1e-13) ** 0.5
    torch.testing.assert_close(out.double().view(-1), want, rtol=1e-4, atol=0)
    assert abs(float(out[0, 1, 0]) - dev / (var + 1e-12) ** 0.5) > 0.1      # 1e-12 would give 0.06, not 0.19
    assert abs(float(out[0, 1, 0]) - dev / (var + 1e-14) ** 0.5) > 0.01     # 1e-14 would give 0.51


# ------------------------------------------------------------------------------------------------ AllenNLP's tests
def test_allennlp_elmo_bilm_can_cache_char_cnn_embeddings(allennlp_fixture, caplog):
    """AllenNLP's test of the same name: its "no cache" run passes the character ids as word_inputs too, which
    a module without vocab_to_cache ignores (one warning)."""
    opt, w, _ = allennlp_fixture
    sentences = [["This", "is", "a", "sentence"], ["Here", "'s", "one"], ["Another", "one"]]
    vocab = ["@@PADDING@@", "@@UNKNOWN@@"] + list(dict.fromkeys(t for s in sentences for t in s))
    char_ids = A.batch_to_ids(sentences)
    word_ids = torch.tensor([[vocab.index(t) for t in s] + [0] * (4 - len(s)) for s in sentences])
    elmo_bilm = A._ElmoBiLm(str(opt), str(w))
    elmo_bilm.eval()
    with caplog.at_level(logging.WARNING, logger="elmo_fast.nn.elmo"):
        no_cache = elmo_bilm(char_ids, char_ids)
        elmo_bilm.reset_states()
        again = elmo_bilm(char_ids, "anything at all")
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "ignored" in caplog.records[0].getMessage()
    elmo_bilm = A._ElmoBiLm(str(opt), str(w), vocab_to_cache=vocab)  # stateful: a fresh one for the comparison
    elmo_bilm.eval()
    cached = elmo_bilm(char_ids, word_ids)
    np.testing.assert_array_almost_equal(no_cache["mask"].numpy(), cached["mask"].numpy())
    for activation_cached, activation, repeated in zip(cached["activations"], no_cache["activations"],
                                                       again["activations"]):
        np.testing.assert_array_almost_equal(activation_cached.detach().numpy(), activation.detach().numpy(),
                                             decimal=6)
        assert torch.equal(repeated, activation)
    # Elmo passes them on unchecked too (AllenNLP warns "does not have a cached vocab" and drops them)
    elmo = A.Elmo(str(opt), str(w), 1, dropout=0.0)
    plain = A.Elmo(str(opt), str(w), 1, dropout=0.0)
    assert torch.equal(elmo(char_ids, char_ids)["elmo_representations"][0],
                       plain(char_ids)["elmo_representations"][0])


def _naive_elmo_lstm(lstm, inputs, mask, state=None):
    """AllenNLP's ElmoLstm semantics written plainly, one row and one step at a time: per direction, layer 0
    reads the inputs (input_size wide), every later layer its predecessor's output plus that output as a residual;
    bilm-tf gates (i, j, f, o) with the +1 forget bias, cell clip, projection, projection clip. Returns the outputs
    (num_layers, B, T, 2H) and the final (h, c) per layer, row and direction."""
    o = lstm.lstm.options
    H, C = o.projection_dim, o.dim
    B, T, _ = inputs.shape
    out = torch.zeros(o.n_layers, B, T, 2 * H, dtype=torch.float64)
    h_fin = torch.zeros(o.n_layers, B, 2 * H, dtype=torch.float64)
    c_fin = torch.zeros(o.n_layers, B, 2 * C, dtype=torch.float64)
    for d in (0, 1):
        for b in range(B):
            n = int(mask[b].sum())
            x = inputs[b, :n].double()
            for layer, cell in enumerate(lstm.lstm.cells[d]):
                W, bias, WP = cell.W_0.double(), cell.B.double(), cell.W_P_0.double()
                if state is None:
                    h, c = torch.zeros(H, dtype=torch.float64), torch.zeros(C, dtype=torch.float64)
                else:
                    h = state[0][layer, b, d * H:(d + 1) * H].double()
                    c = state[1][layer, b, d * C:(d + 1) * C].double()
                y = torch.zeros(n, H, dtype=torch.float64)
                for t in (range(n) if d == 0 else range(n - 1, -1, -1)):
                    z = torch.cat([x[t], h]) @ W + bias
                    i, j, f, g = z.split(C)
                    c = torch.sigmoid(i) * torch.tanh(j) + torch.sigmoid(f + 1.0) * c
                    c = c.clamp(-o.cell_clip, o.cell_clip)
                    h = ((torch.sigmoid(g) * torch.tanh(c)) @ WP).clamp(-o.proj_clip, o.proj_clip)
                    y[t] = h
                if layer > 0:
                    y = y + x
                out[layer, b, :n, d * H:(d + 1) * H] = y
                h_fin[layer, b, d * H:(d + 1) * H], c_fin[layer, b, d * C:(d + 1) * C] = h, c
                x = y
    return out, (h_fin, c_fin)


def test_allennlp_elmo_lstm_with_input_size_other_than_hidden_size(monkeypatch):
    """AllenNLP's ElmoLstm test (input_size 3, hidden_size 5, cell_size 7): masked outputs are zero and the
    carried states have AllenNLP's shapes; the numbers are AllenNLP's semantics (checked in float64)."""
    torch.manual_seed(0)
    input_tensor = torch.rand(4, 5, 3)
    input_tensor[1, 4:, :] = 0.0
    input_tensor[2, 2:, :] = 0.0
    input_tensor[3, 1:, :] = 0.0
    mask = torch.ones([4, 5]).bool()
    mask[1, 4:] = False
    mask[2, 2:] = False
    mask[3, 1:] = False
    lstm = A.ElmoLstm(num_layers=2, input_size=3, hidden_size=5, cell_size=7, memory_cell_clip_value=2,
                      state_projection_clip_value=1)
    assert lstm._states is None
    output_sequence = lstm(input_tensor, mask)
    assert output_sequence.shape == (2, 4, 5, 10)
    np.testing.assert_array_equal(output_sequence.data[:, 1, 4:, :].numpy(), 0.0)
    np.testing.assert_array_equal(output_sequence.data[:, 2, 2:, :].numpy(), 0.0)
    np.testing.assert_array_equal(output_sequence.data[:, 3, 1:, :].numpy(), 0.0)
    assert list(lstm._states[0].size()) == [2, 4, 10]
    assert list(lstm._states[1].size()) == [2, 4, 14]

    want, final = _naive_elmo_lstm(lstm, input_tensor, mask)
    torch.testing.assert_close(output_sequence.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lstm._states[0].double(), final[0], rtol=1e-5, atol=1e-6)
    # the next call starts from the carried states (AllenNLP's slot semantics)
    carried = (lstm._states[0].clone(), lstm._states[1].clone())
    second = lstm(input_tensor, mask)
    torch.testing.assert_close(second.double(), _naive_elmo_lstm(lstm, input_tensor, mask, carried)[0],
                               rtol=1e-5, atol=1e-6)
    lstm.reset_states()
    assert lstm._states is None
    # the fast and Triton kernels read hidden_size-wide inputs: another width runs on the reference backend
    with pytest.raises(BackendError, match="reference"):
        A.ElmoLstm(3, 5, 7, 2, backend="fast")
    monkeypatch.setenv("ELMO_FAST_BACKEND", "fast")
    assert torch.equal(lstm(input_tensor, mask), output_sequence)
    # and gradients flow to every weight, the first layer's input_size-wide rows included
    trained = A.ElmoLstm(3, 5, 7, 2, requires_grad=True)
    trained(input_tensor, mask).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.parameters())


def test_allennlp_empty_sentence_width_is_documented():
    """An empty sentence's embedding is (3, 0, 2P) here; AllenNLP hard-codes (3, 0, 1024) (its
    ``empty_embedding()``, kept as is). The compatibility table says so in the ElmoEmbedder row."""
    assert A.empty_embedding().shape == (3, 0, 1024)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `commands.elmo.ElmoEmbedder`"))
    assert "(3, 0, 2P)" in row and "1024" in row


def test_allennlp_empty_sentence_width_is_2p(allennlp_fixture):
    opt, w, _ = allennlp_fixture
    embedder = A.ElmoEmbedder(str(opt), str(w))
    lone, = embedder.embed_batch([[]])
    first, empty = embedder.embed_batch([["a", "b"], []])
    assert lone.shape == empty.shape == (3, 0, 32) and first.shape == (3, 2, 32)
    assert embedder.embed_sentence([]).shape == (3, 0, 32)
