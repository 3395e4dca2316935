"""One switch: every op a backend may replace is chosen in :mod:`elmo_fast.backend`, and the training step,
evaluation and the public functions run the op registered there for their backend, never one picked by hand.

Per backend (``reference`` and ``fast`` on CPU; ``triton`` under ``TRITON_INTERPRET=1`` on CPU, compiled on
CUDA) this pins which implementation each op resolves to, and then checks that the callers really go through
the registry: the registered function is replaced by a spy and must be the one called.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from triton_helpers import DEVICE, TRITON_MARKS  # noqa: E402  (sets TRITON_INTERPRET first)

import elmo_fast  # noqa: E402
from elmo_fast import backend  # noqa: E402
from helpers import softmax_inputs  # noqa: E402

BACKENDS = ["reference", "fast", pytest.param("triton", marks=TRITON_MARKS)]
SOFTMAX_OPS = ("sampled_softmax_loss", "full_softmax_loss")


def _expected(name: str) -> dict[str, object]:
    """The implementation each backend must register for the replaceable ops outside the model modules."""
    from elmo_fast.nn import ops as reference_ops
    from elmo_fast.nn import softmax
    if name == "reference":
        return {"sampled_softmax_loss": softmax.sampled_softmax_loss, "full_softmax_loss": softmax.full_softmax_loss,
                "projection": reference_ops.projection}
    if name == "fast":
        from elmo_fast.fast.sampled_softmax import sampled_softmax_loss_fast
        return {"sampled_softmax_loss": sampled_softmax_loss_fast, "full_softmax_loss": softmax.full_softmax_loss,
                "projection": reference_ops.projection}
    from elmo_fast.kernels import highway, sampled_softmax
    return {"sampled_softmax_loss": sampled_softmax.sampled_softmax_loss,
            "full_softmax_loss": sampled_softmax.full_softmax_loss, "projection": highway.projection}


def _device(name: str) -> str:
    return DEVICE if name == "triton" else "cpu"


def _spy_all(monkeypatch, op: str) -> dict[str, list[int]]:
    """Replace ``op`` of every backend by a recording wrapper of the registered function; returns the calls."""
    calls: dict[str, list[int]] = {}
    for name in backend.BACKENDS:
        if not backend.available(name, op):
            continue
        original = backend.get_op(name, op)
        calls[name] = []
        monkeypatch.setitem(backend._REGISTRY, (name, op),
                            lambda *a, _n=name, _f=original, **k: calls[_n].append(1) or _f(*a, **k))
    return calls


def _softmax_inputs(device: str) -> list[torch.Tensor]:
    return softmax_inputs(device=device, seed=7, n=11)


@pytest.mark.parametrize("name", BACKENDS)
def test_each_op_resolves_to_its_backend_implementation(name):
    for op, fn in _expected(name).items():
        assert backend.available(name, op), (name, op)
        assert backend.get_op(name, op) is fn, (name, op)


def test_cpu_default_is_the_fast_backend_for_every_replaceable_op(monkeypatch):
    monkeypatch.delenv("ELMO_FAST_BACKEND", raising=False)
    for op in (*SOFTMAX_OPS, "projection", "token_encoder", "bilstm", "bilstm_streams"):
        assert backend.resolve(None, "cpu", op) == "fast", op


@pytest.mark.parametrize("name", BACKENDS)
def test_public_softmax_functions_run_the_registered_op(monkeypatch, name):
    """``elmo_fast.sampled_softmax_loss`` / ``full_softmax_loss`` with ``backend=name`` call that backend's
    registered function (and no other backend's) and return exactly its result."""
    monkeypatch.delenv("ELMO_FAST_BACKEND", raising=False)
    args = _softmax_inputs(_device(name))
    want = _expected(name)
    sampled_calls = _spy_all(monkeypatch, "sampled_softmax_loss")
    got = elmo_fast.sampled_softmax_loss(*args, backend=name)
    assert {k: len(v) for k, v in sampled_calls.items()} == {k: int(k == name) for k in sampled_calls}
    assert torch.equal(got, want["sampled_softmax_loss"](*args))
    full_calls = _spy_all(monkeypatch, "full_softmax_loss")
    with torch.no_grad():  # the Triton full-softmax kernel is forward-only
        got = elmo_fast.full_softmax_loss(*args[:4], chunk_size=7, backend=name)
        assert torch.equal(got, want["full_softmax_loss"](*args[:4], 7))
    assert {k: len(v) for k, v in full_calls.items()} == {k: int(k == name) for k in full_calls}


def test_public_sampled_softmax_on_cpu_by_default_runs_the_fused_fast_op(monkeypatch):
    monkeypatch.delenv("ELMO_FAST_BACKEND", raising=False)
    calls = _spy_all(monkeypatch, "sampled_softmax_loss")
    elmo_fast.sampled_softmax_loss(*_softmax_inputs("cpu"))
    assert calls["fast"] == [1] and calls["reference"] == []


@pytest.mark.parametrize("name", BACKENDS)
def test_projection_op_computes_x_w_plus_b_with_gradients(name):
    """The op an EFML model's ``[word; char]`` projection runs: ``x (N, F) @ W (F, P) + b``, differentiable,
    within float32 rounding of a float64 product (the Triton default input mode is tf32x3: near float32)."""
    g = torch.Generator().manual_seed(3)
    x, W, b = torch.randn(9, 24, generator=g), torch.randn(24, 16, generator=g) * 0.2, torch.randn(16, generator=g)
    dev = _device(name)
    leaves = [t.detach().clone().to(dev).requires_grad_(True) for t in (x, W, b)]
    out = backend.get_op(name, "projection")(*leaves)
    want = x.double() @ W.double() + b.double()
    assert out.shape == (9, 16) and float((out.detach().cpu().double() - want).abs().max()) <= 1e-5
    upstream = torch.linspace(-1, 1, 16, dtype=torch.float64)
    (out * upstream.float().to(dev)).sum().backward()
    grads = [t.grad.cpu().double() for t in leaves]
    up = upstream.expand(9, 16)
    for got, ref in zip(grads, (up @ W.double().t(), x.double().t() @ up, up.sum(0))):
        assert float((got - ref).abs().max()) <= 1e-5


@pytest.mark.parametrize("name", BACKENDS)
def test_training_step_and_evaluation_run_the_registered_softmax(monkeypatch, tmp_path, name):
    """A sampled-softmax Trainer step with ``backend=name`` calls that backend's registered
    ``sampled_softmax_loss`` once per direction (and no other backend's); evaluation's full softmax is the
    registered one too."""
    from elmo_fast.data import TrainingBatches, Vocabulary
    from elmo_fast.options import preset
    from elmo_fast.train import LanguageModel, TrainConfig, Trainer, init_weights

    monkeypatch.delenv("ELMO_FAST_BACKEND", raising=False)
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(15)]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words, size=rng.integers(2, 7))) for _ in range(20)) + "\n")
    vocab = Vocabulary.build([str(corpus)])
    model = LanguageModel(preset("tiny"), len(vocab), backend=name)
    init_weights(model.bilm, model.softmax_weight, model.softmax_bias, torch.Generator().manual_seed(0))
    trainer = Trainer(model, TrainConfig(batch_size=2, unroll_steps=3, n_negative_samples=8, seed=0))
    calls = _spy_all(monkeypatch, "sampled_softmax_loss")
    result = trainer.step(TrainingBatches([str(corpus)], vocab, 2, 3, seed=0).next_batch())
    assert np.isfinite(result.loss)
    assert {k: len(v) for k, v in calls.items()} == {k: 2 * int(k == name) for k in calls}
    like = torch.zeros(1, device=_device(name))
    assert model.softmax_op("full_softmax_loss", like) is _expected(name)["full_softmax_loss"]


def test_training_without_a_backend_on_cpu_runs_the_fast_fused_softmax(monkeypatch):
    from elmo_fast.fast.sampled_softmax import sampled_softmax_loss_fast
    from elmo_fast.options import preset
    from elmo_fast.train import LanguageModel

    monkeypatch.delenv("ELMO_FAST_BACKEND", raising=False)
    model = LanguageModel(preset("tiny"), 30)
    assert model.softmax_op("sampled_softmax_loss", torch.zeros(1)) is sampled_softmax_loss_fast
    monkeypatch.setenv("ELMO_FAST_BACKEND", "reference")  # the environment reaches training through the switch
    assert model.softmax_op("sampled_softmax_loss", torch.zeros(1)) is elmo_fast.nn.softmax.sampled_softmax_loss
