"""ScalarMix and Elmo against hand-written formulas (docs/numerics.md#downstream-use)."""
import pytest
import torch

from elmo_fast import BiLM, Elmo, ScalarMix, batch_to_ids
from elmo_fast.nn.bilm import remove_sentence_boundaries

SENTS = [["The", "play", "was", "long", "."], ["x"], [], ["Spring", "came"]]


def test_scalar_mix_weights_and_gamma():
    torch.manual_seed(0)
    layers = [torch.randn(2, 5, 6) for _ in range(3)]
    mix = ScalarMix(3, initial_scalar_parameters=[0.5, -1.0, 2.0])
    with torch.no_grad():
        mix.gamma.fill_(1.7)
    w = torch.softmax(torch.tensor([0.5, -1.0, 2.0]), 0)
    want = 1.7 * (w[0] * layers[0] + w[1] * layers[1] + w[2] * layers[2])
    torch.testing.assert_close(mix(layers), want)
    assert mix.scalar_parameters[0].requires_grad and mix.gamma.requires_grad
    fixed = ScalarMix(3, initial_scalar_parameters=[-9e10, 1, -9e10], trainable=False)
    torch.testing.assert_close(fixed(layers), layers[1])
    assert not fixed.gamma.requires_grad


def test_scalar_mix_layer_norm_uses_whole_batch_statistics():
    torch.manual_seed(1)
    layers = [torch.randn(2, 4, 3) * (k + 1) + k for k in range(3)]
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    mix = ScalarMix(3, do_layer_norm=True)
    out = mix(layers, mask)
    want = 0
    for x in layers:
        vals = x[mask]  # (n_unmasked, D): one mean/var over all unmasked elements
        mean, var = vals.mean(), vals.var(unbiased=False)
        want = want + (x - mean) / torch.sqrt(var + 1e-13) / 3
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="needs a mask"):
        mix(layers)


def test_elmo_mixes_bilm_layers_and_removes_boundaries(tiny_model):
    opt, w = tiny_model
    elmo = Elmo(opt, w, num_output_representations=2, dropout=0.0, stateful=False)
    bilm = BiLM.from_files(opt, w, stateful=False)
    with torch.no_grad():
        elmo.scalar_mix_1.scalar_parameters[2].fill_(3.0)
        elmo.scalar_mix_1.gamma.fill_(0.5)
        out = elmo(batch_to_ids(SENTS))
        ref = bilm(batch_to_ids(SENTS))
    layers = [remove_sentence_boundaries(x, ref["mask"])[0] for x in ref["activations"]]
    torch.testing.assert_close(out["elmo_representations"][0], sum(layers) / 3, atol=1e-6, rtol=1e-5)
    w1 = torch.softmax(torch.tensor([0.0, 0.0, 3.0]), 0)
    torch.testing.assert_close(out["elmo_representations"][1], 0.5 * sum(a * b for a, b in zip(w1, layers)),
                               atol=1e-6, rtol=1e-5)
    assert out["mask"].tolist() == [[True] * 5, [True] + [False] * 4, [False] * 5, [True, True] + [False] * 3]
    assert out["elmo_representations"][0].shape == (4, 5, 32)
    assert (out["elmo_representations"][0][2] == 0).all()
    # AllenNLP state-dict names for the mixes
    keys = set(elmo.state_dict())
    assert {"scalar_mix_0.gamma", "scalar_mix_0.scalar_parameters.0", "scalar_mix_1.scalar_parameters.2"} <= keys


def test_keep_boundaries_and_extra_leading_dims(tiny_model):
    opt, w = tiny_model
    elmo = Elmo(opt, w, 1, dropout=0.0, keep_sentence_boundaries=True, stateful=False)
    ids = batch_to_ids(SENTS)
    with torch.no_grad():
        out = elmo(ids)
        assert out["elmo_representations"][0].shape == (4, 7, 32) and out["mask"].shape == (4, 7)
        assert out["mask"].sum(1).tolist() == [7, 3, 2, 4]
        elmo2 = Elmo(opt, w, 1, dropout=0.0, stateful=False)
        flat = elmo2(ids)["elmo_representations"][0]
        nested = elmo2(ids.view(2, 2, *ids.shape[1:]))
    assert nested["elmo_representations"][0].shape == (2, 2, 5, 32) and nested["mask"].shape == (2, 2, 5)
    torch.testing.assert_close(nested["elmo_representations"][0].reshape(4, 5, 32), flat)


def test_vocab_to_cache_matches_character_path(tiny_model):
    opt, w = tiny_model
    vocab = ["@@PADDING@@", "The", "play", "was", "long", ".", "x", "Spring", "came"]
    cached = Elmo(opt, w, 1, dropout=0.0, vocab_to_cache=vocab, stateful=False)
    plain = Elmo(opt, w, 1, dropout=0.0, stateful=False)
    word_ids = torch.tensor([[vocab.index(t) for t in s] + [0] * (5 - len(s)) for s in SENTS])
    with torch.no_grad():
        a = cached(batch_to_ids(SENTS), word_inputs=word_ids)
        b = plain(batch_to_ids(SENTS))
    torch.testing.assert_close(a["elmo_representations"][0], b["elmo_representations"][0], atol=1e-6, rtol=1e-5)
    assert torch.equal(a["mask"], b["mask"])


def test_requires_grad_and_dropout(tiny_model):
    opt, w = tiny_model
    frozen = Elmo(opt, w, 1)
    assert not any(p.requires_grad for p in frozen._elmo_lstm.parameters())
    tuned = Elmo(opt, w, 1, requires_grad=True, dropout=0.5, stateful=False)
    out = tuned(batch_to_ids(SENTS))["elmo_representations"][0]
    out.sum().backward()
    assert tuned._elmo_lstm.lstm.cells[0][0].W_0.grad is not None
    assert tuned.scalar_mix_0.gamma.grad is not None
    tuned.train()
    a = tuned(batch_to_ids(SENTS))["elmo_representations"][0]
    assert (a == 0).float().mean() > 0.3  # dropout 0.5 zeroes about half (plus padding)
    tuned.eval()
    b = tuned(batch_to_ids(SENTS))["elmo_representations"][0]
    c = tuned(batch_to_ids(SENTS))["elmo_representations"][0]
    torch.testing.assert_close(b, c)


def test_elmo_knows_word_input_modules_by_protocol_not_by_compat(tiny_model):
    """Elmo's biLM is a native CachedBiLM; the WordInputBiLM protocol (not a class from compat, not a private
    attribute) decides where word ids and vocab_to_cache may go."""
    import subprocess
    import sys

    from elmo_fast.compat.allennlp import _ElmoBiLm
    from elmo_fast.nn.elmo import CachedBiLM, WordInputBiLM
    opt, w = tiny_model
    elmo = Elmo(opt, w, 1, dropout=0.0, stateful=False)
    assert type(elmo._elmo_lstm) is CachedBiLM and not elmo._elmo_lstm.has_word_cache()
    assert isinstance(_ElmoBiLm(opt, w), WordInputBiLM) and not isinstance(BiLM.from_files(opt, w), WordInputBiLM)
    vocab = ["@@PADDING@@", "The", "play"]
    with pytest.raises(ValueError, match="WordInputBiLM"):
        Elmo(None, None, 1, vocab_to_cache=vocab, module=BiLM.from_files(opt, w))
    given = Elmo(None, None, 1, dropout=0.0, vocab_to_cache=vocab, module=CachedBiLM(opt, w, stateful=False))
    assert given._has_cached_vocab and given._elmo_lstm._word_embedding.weight.shape[0] == 3
    ids = batch_to_ids([["The", "play"]])
    with torch.no_grad():
        torch.testing.assert_close(given(ids, torch.tensor([[1, 2]]))["elmo_representations"][0],
                                   elmo(ids)["elmo_representations"][0], atol=1e-6, rtol=1e-5)
    # a plain BiLM module has its character ids checked by Elmo
    with pytest.raises(ValueError, match="character ids must be in"):
        Elmo(None, None, 1, module=BiLM.from_files(opt, w))(ids + 1000)
    # the native modules never import the compat package
    code = ("import sys, elmo_fast, elmo_fast.nn.elmo, elmo_fast.efml, elmo_fast.probe\n"
            "print(sorted(m for m in sys.modules if m.startswith('elmo_fast.compat')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
