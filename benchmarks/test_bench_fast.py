"""pytest-benchmark suites of the CPU fast path. Not part of the default ``pytest`` run (testpaths = tests).

Run:  .venv/bin/python -m pytest benchmarks/test_bench_fast.py --benchmark-enable --benchmark-group-by=group

Small shapes only (seconds per round); ``benchmarks/run.py`` (``make bench``) prints the full comparison table.
Each benchmark also asserts that its result matches the reference, so a fast-but-wrong path fails here too.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.baseline import BaselineElmo  # noqa: E402
from benchmarks.run import make_sentences, random_model  # noqa: E402
from elmo_fast import backend as backends  # noqa: E402
from elmo_fast.chars import batch_to_ids  # noqa: E402

SHAPE = "small"


@pytest.fixture(scope="module")
def models():
    return {"fast": random_model(SHAPE, "fast"), "reference": random_model(SHAPE, "reference")}


@pytest.fixture(scope="module")
def batch32():
    return batch_to_ids(make_sentences(32, seed=11))


@pytest.mark.parametrize("impl", ["fast", "reference", "baseline"])
def test_bilm_forward_batch32(benchmark, models, batch32, impl):
    benchmark.group = f"{SHAPE} biLM forward, batch 32"
    model = BaselineElmo(models["reference"]).eval() if impl == "baseline" else models[impl]
    with torch.no_grad():
        out = benchmark(model, batch32)
        top = out["activations"][-1] if isinstance(out, dict) else out[-1]
        want = models["reference"](batch32)["activations"][-1]
    assert float((top - want).abs().max()) < 1e-3


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_bilm_forward_batch1(benchmark, models, impl):
    benchmark.group = f"{SHAPE} biLM forward, batch 1"
    ids = batch_to_ids(make_sentences(1, seed=12))
    with torch.no_grad():
        out = benchmark(models[impl], ids)
        want = models["reference"](ids)["activations"][-1]
    assert float((out["activations"][-1] - want).abs().max()) < 1e-3


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_token_encoder(benchmark, models, batch32, impl):
    benchmark.group = f"{SHAPE} token encoder, 32 sentences"
    ids = batch32.view(-1, 50)
    op = backends.get_op(impl, "token_encoder")
    with torch.no_grad():
        out = benchmark(op, models[impl].token_encoder, ids)
        want = models["reference"].token_encoder(ids)
    assert float((out - want).abs().max()) < 1e-3


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_bilstm_forward_backward(benchmark, models, impl):
    benchmark.group = f"{SHAPE} biLSTM forward+backward, 16 x 22"
    model = models[impl]
    P = model.options.lstm.projection_dim
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 22, P, generator=gen, requires_grad=True)
    lengths = torch.randint(1, 23, (16,), generator=gen)
    state = model.lstm.zero_state(16, x)
    op = backends.get_op(impl, "bilstm")
    model.requires_grad_(True)

    def step():
        model.zero_grad(set_to_none=True)
        outputs, _ = op(model.lstm, x, lengths, state, 0.0)
        outputs[-1].sum().backward()
        return outputs[-1].detach()
    try:
        benchmark(step)
    finally:
        model.requires_grad_(False)
