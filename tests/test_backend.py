"""The ``triton`` backend end to end: op registration and selection, errors instead of fallbacks, BiLM and
ElmoEmbedder parity with the reference (incl. the shared TensorFlow fixtures), and a short training run
that tracks the reference step by step.

Interpreter on CPU (``TRITON_INTERPRET=1`` set before the kernels are imported), compiled on CUDA.
"""

import numpy as np
import pytest
import torch

from triton_helpers import DEVICE, TRITON_MARKS  # noqa: E402  (sets TRITON_INTERPRET first)

from elmo_fast import backend, batch_to_ids  # noqa: E402
from elmo_fast.backend import BackendError  # noqa: E402
from elmo_fast.nn.bilm import BiLM  # noqa: E402

from helpers import softmax_inputs, tiny_options, write_model  # noqa: E402

pytestmark = TRITON_MARKS
SENTENCES = [["The", "cat", "sat", "."], ["Hi"], ["a", "b", "cc"]]


def test_triton_ops_registered_with_reference_signatures():
    import inspect

    from elmo_fast.nn import ops as reference_ops
    for op in ("token_encoder", "bilstm", "bilstm_streams", "sampled_softmax_loss", "full_softmax_loss"):
        assert backend.available("triton", op), op
    for op in ("token_encoder", "bilstm"):
        ref_params = list(inspect.signature(getattr(reference_ops, op)).parameters)
        assert list(inspect.signature(backend.get_op("triton", op)).parameters) == ref_params


def test_environment_selects_triton(monkeypatch, tiny_model):
    monkeypatch.setenv("ELMO_FAST_BACKEND", "triton")
    assert backend.resolve(None, "cpu", "bilstm") == "triton"
    calls = []
    original = backend.get_op("triton", "bilstm")
    monkeypatch.setitem(backend._REGISTRY, ("triton", "bilstm"),
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    model = BiLM.from_files(*tiny_model)
    with torch.no_grad():
        model(batch_to_ids(SENTENCES[1:]))
    assert calls == [1]


def test_unrunnable_tensors_raise_instead_of_falling_back():
    from elmo_fast.kernels.lstm_cell import lstm_bidirectional_layer
    B, T, P, C = 2, 3, 16, 16
    meta = dict(device="meta")
    args = [torch.empty(2, B, T, P, **meta), torch.empty(2, 2 * P, 4 * C, **meta), torch.empty(2, 4 * C, **meta),
            torch.empty(2, C, P, **meta), torch.empty(2, B, P, **meta), torch.empty(2, B, C, **meta)]
    with pytest.raises(BackendError, match="device 'meta'"):
        lstm_bidirectional_layer(*args, torch.tensor([3, 2]), 3.0, 3.0, False)
    args = [torch.zeros(a.shape, dtype=torch.float64) for a in args]
    with pytest.raises(BackendError, match="float32"):
        lstm_bidirectional_layer(*args, torch.tensor([3, 2]), 3.0, 3.0, False)
    with pytest.raises(BackendError, match="no implementation"):
        backend.get_op("triton", "no_such_op")


def test_bad_input_mode_setting_is_an_error(monkeypatch):
    from elmo_fast.kernels.common import input_mode
    monkeypatch.setenv("ELMO_FAST_TRITON_PRECISION", "fp8")
    with pytest.raises(BackendError, match="ELMO_FAST_TRITON_PRECISION"):
        input_mode()


@pytest.mark.parametrize("lstm_kernel", ["persistent", "step"])
def test_bilm_matches_reference_stateful_and_gradients(monkeypatch, tmp_path, lstm_kernel):
    """Two stateful calls (4 rows incl. an empty sentence, then 2: slots beyond the batch stay untouched),
    all three layers and the carried states; then
    gradients of every parameter through forward_embeddings with dropout under one seed.
    Tolerance: float32 vs float32 with another summation order, ~10 recurrent steps: outputs 1e-5 abs
    (values are O(1), clips at 3); gradients 1e-4 relative to their largest entry."""
    monkeypatch.setenv("ELMO_FAST_TRITON_LSTM", lstm_kernel)
    files = write_model(tmp_path / "m", tiny_options(lstm__dim=24, lstm__projection_dim=16), scale=0.5)
    models = {name: BiLM.from_files(*files, backend=name, requires_grad=True) for name in ("reference", "triton")}
    outs = {}
    for name, model in models.items():
        with torch.no_grad():
            a = model(batch_to_ids(SENTENCES + [[]]))  # plus an empty sentence (BOS, EOS only)
            b = model(batch_to_ids([["x", "y", "z", "w", "v"], ["q"]]))
        outs[name] = a["activations"] + b["activations"] + [model.states.h, model.states.c]
    for x, y in zip(outs["triton"], outs["reference"]):
        assert x.shape == y.shape
        assert float((x - y).abs().max()) <= 1e-5
    if lstm_kernel == "persistent":
        return  # the backward kernels are the same; the persistent forward's saved tensors are checked in
        # test_kernels_lstm.py (gradients through the persistent kernel)
    # gradients with dropout (identical masks: the triton op draws them in the reference's order)
    grads = {}
    for name, model in models.items():
        model.reset_states()
        emb, mask = model.embed_tokens(batch_to_ids(SENTENCES))
        torch.manual_seed(123)
        out = model.forward_embeddings(emb, mask, dropout=0.3)
        loss = sum((t * torch.linspace(-1, 1, t.shape[-1])).sum() for t in out["activations"])
        grads[name] = torch.autograd.grad(loss, list(model.parameters()))
    for (pname, _), g_t, g_r in zip(models["reference"].named_parameters(), grads["triton"], grads["reference"]):
        assert float((g_t - g_r).abs().max()) <= 1e-4 * max(1.0, float(g_r.abs().max())), pname


def test_elmo_embedder_reproduces_tensorflow_fixtures(fixtures_dir):
    """docs/numerics.md#conformance-fixtures protocol with backend="triton". The interpreter needs ~15 s per
    fixture batch (up to 55 LSTM steps of sentences of ~50 tokens, ~1 ms of Python per tensor op), so this runs a
    prefix of the stateful protocol: batch 0 of each model (``allennlp``: skip connections on; ``bilm-tf``: off);
    all 10 batches run when CUDA is present. Carried states across calls are checked against the reference in
    test_bilm_matches_reference_stateful_and_gradients."""
    import json

    import h5py

    from elmo_fast import ElmoEmbedder
    n_batches = {"allennlp": 1, "bilm-tf": 1} if DEVICE == "cpu" else {"allennlp": 10, "bilm-tf": 10}
    for name, sentence_file in (("allennlp", "sentences.json"), ("bilm-tf", "lm_embeddings_sentences.json")):
        d = fixtures_dir / name
        sentences = json.loads((d / sentence_file).read_text())
        embedder = ElmoEmbedder(d / "options.json", d / "lm_weights.hdf5", backend="triton",
                                cuda_device=0 if DEVICE == "cuda" else -1)
        worst = 0.0
        for i in range(n_batches[name]):
            batch = [sentences[k][i].split() for k in range(3)]
            tops = [e[2] for e in embedder.embed_batch(batch)]
            for k in range(3):
                with h5py.File(d / f"lm_embeddings_{k}.hdf5", "r") as f:
                    exp = f[str(i)][...]
                want = np.concatenate([exp[0], exp[1]], axis=-1)
                assert tops[k].shape == want.shape
                worst = max(worst, float(np.abs(tops[k] - want).max()))
        assert worst < 1e-5, (name, worst)


def test_training_tracks_reference_step_by_step(tmp_path):
    """Three Trainer steps (tiny preset, sampled softmax, dropout 0.1, Adagrad, clipping) with the triton
    token encoder, biLSTM and sampled softmax vs the reference, same seeds (same batches, negatives,
    dropout masks). Per-step losses must agree to 1e-4 relative: float32 summation-order differences
    (~1e-6) grow through the Adagrad updates but stay far below it."""
    from elmo_fast.data import TrainingBatches, Vocabulary
    from elmo_fast.options import preset
    from elmo_fast.train import LanguageModel, TrainConfig, Trainer, init_weights

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(15)]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words, size=rng.integers(2, 7))) for _ in range(40)) + "\n")
    vocab = Vocabulary.build([str(corpus)])
    losses = {}
    for name in ("reference", "triton"):
        model = LanguageModel(preset("tiny"), len(vocab), backend=name)
        init_weights(model.bilm, model.softmax_weight, model.softmax_bias, torch.Generator().manual_seed(0))
        trainer = Trainer(model, TrainConfig(batch_size=2, unroll_steps=4, n_negative_samples=8, seed=0))
        data = TrainingBatches([str(corpus)], vocab, 2, 4, seed=0)
        torch.manual_seed(0)
        losses[name] = [trainer.step(data.next_batch()).loss for _ in range(3)]
        losses[name + "_params"] = [p.detach().clone() for p in model.parameters()]
    assert np.allclose(losses["triton"], losses["reference"], rtol=1e-4, atol=0), losses
    assert len(set(np.round(losses["reference"], 4))) > 1  # the loss really moves between steps
    for a, b in zip(losses["triton_params"], losses["reference_params"]):
        assert float((a - b).abs().max()) <= 1e-4


# ---- the public functional ops dispatch like the modules
_softmax_inputs = softmax_inputs


def _spy(monkeypatch, op):
    calls = []
    original = backend.get_op("triton", op)
    monkeypatch.setitem(backend._REGISTRY, ("triton", op), lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


@pytest.mark.parametrize("how", ["env", "argument"])
def test_public_sampled_softmax_reaches_the_kernel(monkeypatch, how):
    import elmo_fast
    from elmo_fast.kernels import sampled_softmax as kernel_module
    from elmo_fast.nn.softmax import sampled_softmax_loss as reference
    args = _softmax_inputs(device=DEVICE)
    calls = _spy(monkeypatch, "sampled_softmax_loss")
    launched = []
    real = kernel_module.SampledSoftmaxFunction.apply
    monkeypatch.setattr(kernel_module.SampledSoftmaxFunction, "apply",
                        lambda *a: launched.append(1) or real(*a))
    if how == "env":
        monkeypatch.setenv("ELMO_FAST_BACKEND", "triton")
        got = elmo_fast.sampled_softmax_loss(*args)
    else:
        monkeypatch.setenv("ELMO_FAST_BACKEND", "reference")  # the argument wins over the environment
        got = elmo_fast.sampled_softmax_loss(*args, backend="triton")
    assert calls == [1] and launched == [1]
    assert torch.allclose(got, reference(*args), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        full = elmo_fast.full_softmax_loss(args[0], args[1], args[2], args[3], backend="triton")
    from elmo_fast.nn.softmax import full_softmax_loss_reference
    assert torch.allclose(full, full_softmax_loss_reference(*args[:4]), atol=1e-5, rtol=1e-5)


def test_public_sampled_softmax_default_on_cpu_is_the_fast_op(monkeypatch):
    import elmo_fast
    from elmo_fast.fast.sampled_softmax import sampled_softmax_loss_fast
    from elmo_fast.nn.softmax import sampled_softmax_loss as reference
    monkeypatch.delenv("ELMO_FAST_BACKEND", raising=False)
    calls = _spy(monkeypatch, "sampled_softmax_loss")
    args = _softmax_inputs()
    got = elmo_fast.sampled_softmax_loss(*args)
    assert torch.equal(got, sampled_softmax_loss_fast(*args))  # the fused CPU op, as training runs it
    assert torch.allclose(got, reference(*args), atol=1e-6, rtol=1e-6)  # the reference's function (float32)
    assert calls == []  # CPU tensors without a request never take the Triton kernel


def test_public_ops_raise_when_the_backend_cannot_serve(monkeypatch):
    import elmo_fast
    monkeypatch.delenv("ELMO_FAST_BACKEND", raising=False)
    with pytest.raises(BackendError, match="float32"):  # the kernels are float32-only: an error, no fallback
        elmo_fast.sampled_softmax_loss(*_softmax_inputs(torch.float64, DEVICE), backend="triton")
    meta = [torch.empty(x.shape, dtype=x.dtype, device="meta") for x in _softmax_inputs()]
    with pytest.raises(BackendError, match="device 'meta'"):
        elmo_fast.sampled_softmax_loss(*meta, backend="triton")
    with pytest.raises(BackendError, match="unknown backend"):
        elmo_fast.full_softmax_loss(*_softmax_inputs()[:4], backend="cudnn")
    monkeypatch.setattr(backend, "_LOADED", {**backend._LOADED, "triton": False})
    monkeypatch.setitem(backend._LOAD_ERRORS, "triton", "No module named 'triton'")
    with pytest.raises(BackendError, match="not available"):
        elmo_fast.sampled_softmax_loss(*_softmax_inputs(), backend="triton")
