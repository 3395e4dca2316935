"""Every public class and function under torch.inference_mode() and torch.no_grad(), in both floating-point orders
and both precisions: a fresh object whose first call runs inside inference_mode, then under no_grad, then with
autograd on, gives exactly what a fresh object gives for the same calls in plain mode (the carried states make
the three calls differ from each other, so each is compared with the same call of the plain run)."""
from __future__ import annotations

import contextlib
import itertools

import h5py
import numpy as np
import pytest
import torch

import elmo_fast
from elmo_fast import numerics
from elmo_fast.compat import allennlp as A
from helpers import tiny_options, write_model

SENTENCES = [["The", "bank", "was", "closed", "."], ["Another", "one"], ["a", "b", "c", "d", "e", "f", "g"]]
WORDS = ["<pad>"] + sorted({w for s in SENTENCES for w in s})
MODES = (torch.inference_mode, torch.no_grad, torch.enable_grad)
SETTINGS = list(itertools.product(("fast", "allennlp"), ("fp32", "bf16")))


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("inference-model"))


@pytest.fixture(params=SETTINGS, ids=[f"{o}-{p}" for o, p in SETTINGS])
def setting(request):
    order, precision = request.param
    if precision == "bf16":
        request.getfixturevalue("bf16_arithmetic")  # the bf16 arithmetic also on CPUs without bf16 products
    return {"order": order, "precision": precision}


def _ids(batch=SENTENCES):
    return elmo_fast.batch_to_ids(batch)


def _word_ids(batch=SENTENCES):
    width = max(len(s) for s in batch)
    return torch.tensor([[WORDS.index(w) for w in s] + [0] * (width - len(s)) for s in batch])


def _lstm_inputs():
    g = torch.Generator().manual_seed(1)
    P = tiny_options()["lstm"]["projection_dim"]
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] * 5 + [0]], dtype=torch.bool)
    return torch.randn(3, 6, P, generator=g) * mask.unsqueeze(-1), mask


_CALLS = itertools.count()


def _embedder_calls(embedder, tmp_path, counter=_CALLS):
    def run():
        embeddings, mask = embedder.batch_to_embeddings(SENTENCES)
        out = [embeddings, mask, embedder.embed_sentence(SENTENCES[0]), *embedder.embed_batch(SENTENCES),
               *embedder.embed_sentences(SENTENCES, batch_size=2)]
        text = tmp_path / "in.txt"
        text.write_text("\n".join(" ".join(s) for s in SENTENCES) + "\n")
        path = tmp_path / f"out-{next(counter)}.hdf5"
        embedder.embed_file(str(text), str(path), progress=False)
        with h5py.File(path, "r") as f:
            out += [f[str(k)][...] for k in range(len(SENTENCES))]
        return out
    return run


def _entry_points(files, setting, tmp_path):
    """name -> factory of a fresh object's call (returning its outputs as a list of tensors/arrays)."""
    o, w = map(str, files)
    P = tiny_options()["lstm"]

    def elmo(cls, **kw):
        m = cls(o, w, 2, dropout=0.0, **setting, **kw)
        return lambda: (lambda r: [*r["elmo_representations"], r["mask"]])(m(_ids()))

    def elmo_vocab():
        m = A.Elmo(o, w, 1, dropout=0.0, vocab_to_cache=WORDS, **setting)
        return lambda: (lambda r: [*r["elmo_representations"], r["mask"]])(m(_ids(), _word_ids()))

    def bilm(m, *args):
        return lambda: (lambda r: [*r["activations"], r["mask"]])(m(*args))

    def char_encoder():
        m = A._ElmoCharacterEncoder(o, w, **setting)
        return lambda: (lambda r: [r["token_embedding"], r["mask"]])(m(_ids()))

    def lstm():
        m = A.ElmoLstm(P["projection_dim"], P["projection_dim"], P["dim"], P["n_layers"],
                       memory_cell_clip_value=P["cell_clip"], state_projection_clip_value=P["proj_clip"], **setting)
        m.load_weights(w)
        return lambda: [m(*_lstm_inputs())]

    def token_embedder():
        torch.manual_seed(0)  # the projection starts random
        m = A.ElmoTokenEmbedder(o, w, dropout=0.0, projection_dim=5, **setting)
        return lambda: [m(_ids())]

    return {
        "Elmo": lambda: elmo(elmo_fast.Elmo),
        "compat.Elmo": lambda: elmo(A.Elmo),
        "compat.Elmo(vocab_to_cache)": elmo_vocab,
        "compat._ElmoBiLm": lambda: bilm(A._ElmoBiLm(o, w, **setting), _ids()),
        "compat._ElmoBiLm(word_inputs, no cache)": lambda: bilm(A._ElmoBiLm(o, w, **setting), _ids(), _word_ids()),
        "compat._ElmoCharacterEncoder": char_encoder,
        "compat.ElmoLstm": lstm,
        "compat.ElmoTokenEmbedder": token_embedder,
        "BiLM": lambda: bilm(elmo_fast.BiLM.from_files(o, w, **setting), _ids()),
        "ElmoEmbedder": lambda: _embedder_calls(elmo_fast.ElmoEmbedder(o, w, **setting), tmp_path),
        "compat.ElmoEmbedder": lambda: _embedder_calls(A.ElmoEmbedder(o, w, **setting), tmp_path),
        "functions": lambda: _functions(setting),
        "ScalarMix": lambda: _scalar_mix(),
    }


def _functions(setting):
    """The public functions: char ids, sentence boundaries, the softmax losses (fast CPU backend)."""
    g = torch.Generator().manual_seed(2)
    hidden, weight, bias = torch.randn(6, 8, generator=g), torch.randn(20, 8, generator=g), torch.randn(20, generator=g)
    targets, sampled = torch.tensor([1, 4, 0, 19, 7, 7]), torch.tensor([3, 5, 11])
    counts, sampled_counts = torch.full((6,), 0.3), torch.full((3,), 0.2)
    values, mask = torch.randn(2, 4, 3, generator=g), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)

    def run():
        with numerics.use(setting["precision"], setting["order"]):
            losses = [elmo_fast.full_softmax_loss(hidden, targets, weight, bias, chunk_size=7, backend="fast"),
                      elmo_fast.sampled_softmax_loss(hidden, targets, weight, bias, sampled, counts, sampled_counts,
                                                     backend="fast")]
        added = A.add_sentence_boundary_token_ids(values, mask, torch.zeros(3), torch.ones(3))
        return [_ids(), A.batch_to_ids(SENTENCES), *added, *elmo_fast.remove_sentence_boundaries(values, mask),
                *losses]
    return run


def _scalar_mix():
    g = torch.Generator().manual_seed(3)
    layers, mask = [torch.randn(2, 4, 3, generator=g) for _ in range(3)], torch.ones(2, 4, dtype=torch.bool)
    mix = elmo_fast.ScalarMix(3, do_layer_norm=True)
    return lambda: [mix(layers, mask)]


ENTRY_POINTS = list(_entry_points(("o", "w"), {}, None))


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a.detach(), b.detach())
    return np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_first_call_in_inference_mode_then_no_grad_then_autograd(name, model_files, setting, tmp_path):
    make = _entry_points(model_files, setting, tmp_path)[name]
    plain = make()
    expected = [plain() for _ in MODES]
    call = make()
    for mode, want in zip(MODES, expected):
        with mode():
            got = call()
        assert len(got) == len(want)
        for k, (g, e) in enumerate(zip(got, want)):
            assert _equal(g, e), f"{name} under {mode.__name__}: output {k} differs from the plain-mode call"
    with torch.inference_mode():  # and back: the states and prepared weights kept from autograd mode serve too
        again = call()
    assert all(isinstance(t, (torch.Tensor, np.ndarray)) for t in again)


@pytest.mark.parametrize("order", ["fast", "allennlp"])
def test_fine_tuning_after_an_inference_mode_call(model_files, order):
    """A model evaluated under inference_mode (stateful: it carries the states that call left) then trains:
    the carried states and the prepared weights are normal tensors, so autograd can save them."""
    o, w = map(str, model_files)

    def run(first_mode):
        torch.manual_seed(0)
        elmo = A.Elmo(o, w, 1, dropout=0.0, requires_grad=True, order=order)
        with first_mode():
            elmo(_ids())
        rep = elmo(_ids(SENTENCES[:2]))["elmo_representations"][0]
        rep.square().sum().backward()
        return [rep.detach()] + [p.grad.clone() for p in elmo.parameters()]

    got, want = run(torch.inference_mode), run(contextlib.nullcontext)
    assert len(got) == len(want)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_model_built_inside_inference_mode_runs_everywhere(model_files):
    """Parameters made inside inference_mode are inference tensors (no version counter): the prepared-weight
    cache keys them by storage, and the model still runs under no_grad and in plain mode."""
    o, w = map(str, model_files)
    with torch.inference_mode():
        built_inside = A._ElmoBiLm(o, w)
        first = built_inside(_ids())["activations"]
    reference = A._ElmoBiLm(o, w)
    want = [reference(_ids())["activations"] for _ in range(3)]
    with torch.no_grad():
        second = built_inside(_ids())["activations"]
    third = built_inside(_ids())["activations"]
    for got, exp in zip((first, second, third), want):
        assert all(torch.equal(g, e) for g, e in zip(got, exp))

