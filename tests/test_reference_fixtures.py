"""Conformance: the reference reproduces TensorFlow (bilm-tf) outputs of both shared tiny models
(docs/numerics.md#conformance-fixtures)."""
import json

import h5py
import numpy as np
import pytest
import torch

from elmo_fast import BiLM, ElmoEmbedder, batch_to_ids
from elmo_fast.nn.bilm import remove_sentence_boundaries

CASES = [("allennlp", "sentences.json"), ("bilm-tf", "lm_embeddings_sentences.json")]


def load_case(root, name, sentence_file):
    d = root / name
    sentences = json.loads((d / sentence_file).read_text())
    expected = []
    for k in range(3):
        with h5py.File(d / f"lm_embeddings_{k}.hdf5", "r") as f:
            expected.append({key: f[key][...] for key in f})
    return d, sentences, expected


def run_protocol(embed_batch, sentences, expected):
    """For i in 0..9 embed [s0[i], s1[i], s2[i]]; return the max |top layer - TF| over all tokens."""
    worst = 0.0
    for i in range(10):
        batch = [sentences[k][i].split() for k in range(3)]
        tops = embed_batch(batch)
        for k in range(3):
            exp = expected[k][str(i)]
            want = np.concatenate([exp[0], exp[1]], axis=-1)
            assert tops[k].shape == want.shape
            worst = max(worst, float(np.abs(tops[k] - want).max()))
    return worst


def top_layer_embedder(model):
    """batch of token lists -> per sentence the (n, 2P) top layer of ``model`` without BOS/EOS."""
    @torch.no_grad()
    def embed(batch):
        out = model(batch_to_ids(batch))
        top, _ = remove_sentence_boundaries(out["activations"][-1], out["mask"])
        return [top[j, : len(s)].numpy() for j, s in enumerate(batch)]
    return embed


@pytest.mark.parametrize("name,sentence_file", CASES)
def test_bilm_reproduces_tensorflow(fixtures_dir, name, sentence_file):
    d, sentences, expected = load_case(fixtures_dir, name, sentence_file)
    model = BiLM.from_files(d / "options.json", d / "lm_weights.hdf5", backend="reference")
    assert run_protocol(top_layer_embedder(model), sentences, expected) < 1e-5


@pytest.mark.parametrize("name,sentence_file", CASES)
def test_elmo_embedder_reproduces_tensorflow(fixtures_dir, name, sentence_file):
    d, sentences, expected = load_case(fixtures_dir, name, sentence_file)
    embedder = ElmoEmbedder(d / "options.json", d / "lm_weights.hdf5", backend="reference")
    worst = run_protocol(lambda b: [e[2] for e in embedder.embed_batch(b)], sentences, expected)
    assert worst < 1e-5


def test_resetting_states_breaks_conformance(fixtures_dir):
    """The fixtures need carried states: a stateless model deviates far beyond tolerance
    (docs/numerics.md#statefulness)."""
    d, sentences, expected = load_case(fixtures_dir, *CASES[0])
    embedder = ElmoEmbedder(d / "options.json", d / "lm_weights.hdf5", stateful=False, backend="reference")
    worst = run_protocol(lambda b: [e[2] for e in embedder.embed_batch(b)], sentences, expected)
    assert worst > 0.1
