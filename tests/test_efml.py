"""ELMoForManyLangs models: parity with the ``elmoformanylangs`` package (the oracle, a test-only dependency)
on random models built and saved with its own classes, for every ``output_layer``, on the reference and the
fast CPU backends; loading safety and errors; :func:`elmo_fast.pretrained.load_pretrained`.

The Triton backend's parity is in ``test_efml_triton.py``; ``elmo-fast convert`` in ``test_efml_convert.py``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from efml_oracle import CONFIGS, SENTENCES, build_model, oracle_embed, require_efml
from elmo_fast.efml import (PUBLISHED_ARCHITECTURE, EFMLBiLM, EFMLConfig, architecture_file, load_efml,
                            load_torch_state, read_lexicon, sents2elmo)
from elmo_fast.errors import UserError
from elmo_fast.pretrained import detect_format, load_pretrained

TOL = 1e-5
OUTPUT_LAYERS = (0, 1, 2, -1, -2)


@pytest.fixture(scope="module")
def efml():
    return require_efml()


@pytest.fixture(scope="module")
def models(efml, tmp_path_factory):
    """name -> (model dir, the package's Embedder on it)."""
    root = tmp_path_factory.mktemp("efml")
    out = {}
    for seed, name in enumerate(CONFIGS):
        d = build_model(root / name, name, seed=seed)
        out[name] = (d, efml.Embedder(str(d)))
    return out


def _sentences(output_layer):
    # the package's output_layer=-1 is np.average over the layers, which raises ZeroDivisionError on an
    # empty sentence; elmo-fast returns (0, 2P) zeros there (checked in test_empty_sentence)
    return [s for s in SENTENCES if s] if output_layer == -1 else SENTENCES


def _assert_close(got, ref, what):
    assert len(got) == len(ref), what
    for k, (a, b) in enumerate(zip(got, ref)):
        assert a.shape == b.shape, f"{what}: sentence {k}: shape {a.shape} != {b.shape}"
        assert a.dtype == np.float32, f"{what}: sentence {k}: dtype {a.dtype}"
        if a.size:
            err = float(np.abs(a - b).max())
            assert err <= TOL, f"{what}: sentence {k}: max |diff| {err:.3g} > {TOL}"


@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_the_package_for_every_output_layer(models, name, backend):
    model_dir, embedder = models[name]
    model = load_efml(model_dir, stateful=False, backend=backend)
    for output_layer in OUTPUT_LAYERS:
        sentences = _sentences(output_layer)
        ref = oracle_embed(embedder, sentences, output_layer)
        _assert_close(sents2elmo(model, sentences, output_layer), ref, f"{name}/{backend}/layer {output_layer}")
        # batch composition does not matter without states: one sentence per call gives the same numbers
        _assert_close(sents2elmo(model, sentences, output_layer, batch_size=1), ref,
                      f"{name}/{backend}/layer {output_layer}/batch 1")


def test_outputs_are_not_trivially_equal(models):
    """The parity test can fail: the layers differ from each other, and a wrong special id changes them."""
    model_dir, embedder = models["word+char"]
    model = load_efml(model_dir, stateful=False)
    layers = sents2elmo(model, SENTENCES[:1], -2)[0]
    assert float(np.abs(layers[1] - layers[2]).max()) > 0.05
    ref = oracle_embed(embedder, SENTENCES[:1], -2)[0]
    # un-swapping EFML's <bow>/<eow> markers changes every vector (what the swap fact says)
    model._first, model._last = model._last, model._first
    swapped = sents2elmo(model, SENTENCES[:1], -2)[0]
    assert float(np.abs(swapped - ref).max()) > 1e-3


def test_layer0_is_the_token_embedding_twice_and_mean_is_unweighted(models):
    model_dir, _ = models["char-only"]
    model = load_efml(model_dir, stateful=False)
    all_layers = sents2elmo(model, SENTENCES[:1], -2)[0]
    P = model.config.projection_dim
    np.testing.assert_array_equal(all_layers[0][:, :P], all_layers[0][:, P:])
    mean = sents2elmo(model, SENTENCES[:1], -1)[0]
    np.testing.assert_allclose(mean, all_layers.mean(axis=0), atol=1e-6)


def test_package_carries_state_and_so_does_stateful_mode(models):
    """The facts behind comparing fresh states only: the package's second call differs from its first, and
    elmo-fast's stateful mode behaves the same way (stateless: identical)."""
    model_dir, embedder = models["word+char"]
    sentences = SENTENCES[:2]
    embedder.model.encoder.reset_states()
    embedder.batch_size = 64
    with torch.no_grad():
        first = embedder.sents2elmo(sentences, output_layer=2)
        second = embedder.sents2elmo(sentences, output_layer=2)
    assert float(np.abs(first[0] - second[0]).max()) > 1e-4
    stateful = load_efml(model_dir, stateful=True)
    a = sents2elmo(stateful, sentences, 2)
    b = sents2elmo(stateful, sentences, 2)
    _assert_close(a, first, "stateful first call")
    assert float(np.abs(a[0] - b[0]).max()) > 1e-4
    stateful.reset_states()
    _assert_close(sents2elmo(stateful, sentences, 2), first, "after reset_states")
    stateless = load_efml(model_dir, stateful=False)
    _assert_close(sents2elmo(stateless, sentences, 2), sents2elmo(stateless, sentences, 2), "stateless")


def test_empty_sentence(models):
    model = load_efml(models["word+char"][0], stateful=False)
    P2 = model.output_dim
    assert sents2elmo(model, [[]], -1)[0].shape == (0, P2)
    assert sents2elmo(model, [[]], -2)[0].shape == (3, 0, P2)
    assert sents2elmo(model, [[]], 1)[0].shape == (0, P2)


def test_biLM_like_interface(models):
    """What ElmoEmbedder wraps: forward(*prepare_inputs(...)) -> 3 layers (B, T+2, 2P) + mask, zeros at padding."""
    model_dir, _ = models["word+char"]
    model = load_pretrained(model_dir, stateful=False)
    assert isinstance(model, EFMLBiLM) and model.stateful is False
    inputs = model.prepare_inputs([["the", "cat"], ["a"]])
    assert isinstance(inputs, tuple) and len(inputs) == 2
    assert inputs[0].shape == (2, 2, CONFIGS["word+char"]["max_chars"]) and inputs[1].shape == (2, 2)
    out = model(*inputs)
    assert len(out["activations"]) == 3
    for layer in out["activations"]:
        assert layer.shape == (2, 4, model.output_dim)
        assert float(layer[1, 3].abs().max()) == 0.0  # padding after "<bos> a <eos>"
    assert out["mask"].tolist() == [[True] * 4, [True, True, True, False]]
    files = model.source_files()
    assert {Path(f).name for f in files} >= {"config.json", "char.dic", "word.dic", "token_embedder.pkl",
                                              "encoder.pkl", "cnn.json"}
    char_only = load_pretrained(models["char-only"][0])
    assert char_only.stateful is True and len(char_only.prepare_inputs([["x"]])) == 1


def test_long_words_are_cut_like_the_package(models):
    model = load_efml(models["word+char"][0], stateful=False)
    L = model.config.max_chars
    long_word = "abcdefghijklmnop"
    ids = model.token_char_ids(long_word)
    assert len(ids) == L and ids[-1] == model._last  # cut to L - 2 characters + the two markers
    assert ids == model.token_char_ids(long_word[:L - 2])


# ------------------------------------------------------------------------------------------- files, errors
def test_lexicon_reader_follows_the_package(tmp_path):
    path = tmp_path / "char.dic"
    path.write_text("a\t0\n \t1\n<pad>\t2\na\t3\n", encoding="utf-8")
    assert read_lexicon(path) == {"a": 3, "\u3000": 1, "<pad>": 2}  # whitespace symbol -> U+3000, last wins
    path.write_text("a\tzero\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"char.dic:1: expected an integer id"):
        read_lexicon(path)


def test_pickles_that_run_code_are_refused(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"w": _RunsCode(str(marker))}, tmp_path / "evil.pkl")
    with pytest.raises(UserError, match="refused"):
        load_torch_state(tmp_path / "evil.pkl")
    assert not marker.exists()
    (tmp_path / "junk.pkl").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="junk.pkl"):
        load_torch_state(tmp_path / "junk.pkl")


def test_legacy_torch_format_loads_with_weights_only(tmp_path):
    """Models saved by old torch versions (non-zip format) still load with weights_only=True."""
    state = {"a": torch.randn(3), "b": torch.randn(2, 2)}
    torch.save(state, tmp_path / "old.pkl", _use_new_zipfile_serialization=False)
    loaded = load_torch_state(tmp_path / "old.pkl")
    assert set(loaded) == {"a", "b"} and torch.equal(loaded["b"], state["b"])


class _RunsCode:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (_touch, (self.path,))


def _touch(path: str) -> None:
    Path(path).write_text("ran")


def _copy(models, name, tmp_path) -> Path:
    d = tmp_path / name
    shutil.copytree(models[name][0], d)
    return d


def test_errors_name_the_file(models, tmp_path):
    d = _copy(models, "word+char", tmp_path)
    text = (d / "char.dic").read_text(encoding="utf-8")
    (d / "char.dic").write_text("".join(l + "\n" for l in text.splitlines() if not l.startswith("<oov>")),
                                encoding="utf-8")
    with pytest.raises(UserError, match=r"char.dic: the special symbols \['<oov>'\] are missing"):
        load_efml(d)
    d = _copy(models, "word+char", tmp_path / "b")
    arch = json.loads((d / "cnn.json").read_text())
    arch["encoder"]["dim"] += 1
    (d / "cnn.json").write_text(json.dumps(arch))
    with pytest.raises(UserError, match=r"encoder.pkl: tensor 'forward_layer_0.input_linearity.weight' expected shape"):
        load_efml(d)
    arch["encoder"]["dim"] -= 1
    arch["token_embedder"]["name"] = "lstm"
    (d / "cnn.json").write_text(json.dumps(arch))
    with pytest.raises(UserError, match=r"cnn.json: field 'token_embedder.name' is 'lstm'"):
        load_efml(d)
    arch["token_embedder"]["name"] = "cnn"
    (d / "cnn.json").write_text(json.dumps(arch))
    state = torch.load(d / "token_embedder.pkl", weights_only=True)
    state["projection.bias"][0] = float("nan")
    torch.save(state, d / "token_embedder.pkl")
    with pytest.raises(UserError, match=r"token_embedder.pkl: tensor 'projection.bias' holds 1 NaN/Inf"):
        load_efml(d)
    (d / "encoder.pkl").unlink()
    with pytest.raises(UserError, match="not a model directory"):
        load_pretrained(d)


def test_published_architecture_fallback(efml, tmp_path):
    """A model directory naming a published architecture file it does not contain gets the published numbers
    (the package's own copy of the file is the check)."""
    import elmoformanylangs
    configs = Path(elmoformanylangs.__file__).parent / "configs"
    for name in ("cnn_0_100_512_4096_sample.json", "cnn_50_100_512_4096_sample.json"):
        assert json.loads((configs / name).read_text()) == PUBLISHED_ARCHITECTURE
        (tmp_path / "config.json").write_text(json.dumps({"config_path": f"/somewhere/else/{name}"}))
        arch, source = architecture_file(tmp_path)
        cfg = EFMLConfig.from_dict(arch, source)
        assert (cfg.word_dim, cfg.char_dim, cfg.max_chars, cfg.projection_dim, cfg.cell_clip) == (100, 50, 50, 512, 3.0)


def test_load_pretrained_detects_bilm_tf(tmp_path):
    from helpers import write_model
    from elmo_fast import BiLM
    write_model(tmp_path / "tf")
    assert detect_format(tmp_path / "tf") == "bilm-tf"
    model = load_pretrained(tmp_path / "tf", stateful=False, backend="reference")
    assert isinstance(model, BiLM) and model.stateful is False
    with pytest.raises(UserError, match="not a model directory"):
        load_pretrained(tmp_path)
    with pytest.raises(UserError, match="not found"):
        load_pretrained(tmp_path / "missing")


def test_fast_token_cache_works_on_efml_models(models):
    """The fast backend's token cache keys on the char ids only; the word embedding is added after it."""
    from elmo_fast.fast import enable_token_cache
    model_dir, embedder = models["word+char"]
    model = load_efml(model_dir, stateful=False, backend="fast")
    cache = enable_token_cache(model)
    ref = oracle_embed(embedder, SENTENCES, -2)
    _assert_close(sents2elmo(model, SENTENCES, -2), ref, "cache, first pass")
    _assert_close(sents2elmo(model, SENTENCES, -2), ref, "cache, second pass")
    assert cache.hits > 0


def test_elmo_embedder_and_embed_command_on_an_efml_directory(models, tmp_path):
    """ElmoEmbedder.from_pretrained and `elmo-fast embed --model-dir` give the package's numbers (stateless:
    all layers = output_layer -2, --average = output_layer -1, --top = output_layer 2)."""
    import h5py
    from elmo_fast import ElmoEmbedder
    from elmo_fast.cli import main
    model_dir, embedder = models["word+char"]
    sentences = [s for s in SENTENCES if s]
    elmo = ElmoEmbedder.from_pretrained(model_dir, stateful=False)
    _assert_close([elmo.embed_sentence(s) for s in sentences], oracle_embed(embedder, sentences, -2),
                  "ElmoEmbedder.embed_sentence")
    _assert_close(elmo.embed_batch(sentences), oracle_embed(embedder, sentences, -2), "ElmoEmbedder.embed_batch")
    # the command splits lines at any Unicode whitespace: "a\u3000b" would be two tokens there
    sentences = [s for s in sentences if not any(ch.isspace() for tok in s for ch in tok)]
    assert len(sentences) >= 3
    text = tmp_path / "in.txt"
    text.write_text("".join(" ".join(s) + "\n" for s in sentences), encoding="utf-8")
    for flag, layer in (("--average", -1), ("--top", 2), ("--all", -2)):
        out = tmp_path / f"out{flag}.hdf5"
        assert main(["embed", str(text), str(out), flag, "--model-dir", str(model_dir), "--stateless",
                     "--batch-size", "2"]) == 0
        with h5py.File(out, "r") as f:
            got = [f[str(k)][()] for k in range(len(sentences))]
        _assert_close(got, oracle_embed(embedder, sentences, layer), f"embed {flag}")


def test_efml_models_follow_the_precision_setting(models, bf16_arithmetic):
    """precision="bf16" reaches an ELMoForManyLangs model too (it is not silently float32): outputs differ from
    float32 and stay within the bf16 tolerance of tests/test_bf16.py."""
    from elmo_fast import ElmoEmbedder
    model_dir, _ = models["word+char"]
    sentences = [s for s in SENTENCES if s]
    fp32 = ElmoEmbedder.from_pretrained(model_dir, stateful=False, backend="fast").embed_batch(sentences)
    bf16 = ElmoEmbedder.from_pretrained(model_dir, stateful=False, backend="fast",
                                        precision="bf16").embed_batch(sentences)
    assert any(not np.array_equal(a, b) for a, b in zip(fp32, bf16))
    for a, b in zip(fp32, bf16):
        scale = float(np.abs(a).max()) or 1.0
        assert float(np.abs(a - b).max()) <= 0.08 * scale


def test_efml_model_is_a_bilm_with_its_own_token_layer_only(models):
    """EFMLBiLM reuses BiLM: its forward is BiLM.forward_embeddings of its own token layer, its parameters keep
    their names, and the bilm-tf weight layout (which EFML lacks) is refused with the way out."""
    from elmo_fast import BiLM
    model_dir, _ = models["word+char"]
    model = load_efml(model_dir, stateful=False)
    assert isinstance(model, BiLM)
    assert "forward_embeddings" not in type(model).__dict__ and "encode_tokens" not in type(model).__dict__
    keys = set(model.state_dict())
    assert {"word_embed", "W_proj", "b_proj", "token_encoder.char_embed", "lstm.cells.0.0.W_0"} <= keys
    assert not any(k.startswith("token_encoder.W_proj") for k in keys)
    chars, words = model.prepare_inputs([["a", "bc"], ["d"]])
    with torch.no_grad():
        out = model(chars, words)
        emb, mask = model.embed_tokens(chars, words)
        want = BiLM.forward_embeddings(model, emb, mask)
    assert emb.shape == (2, 4, model.config.projection_dim) and mask.sum(1).tolist() == [4, 3]
    for a, b in zip(out["activations"], want["activations"]):
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match="to_bilm_tf"):
        model.bilm_tf_weights()
