"""ELMoForManyLangs models on the Triton backend (``ELMO_FAST_BACKEND=triton``; on a machine without CUDA the
kernels run in Triton's interpreter on CPU tensors, ``TRITON_INTERPRET=1``), against the package's numbers."""
from __future__ import annotations

import numpy as np
import pytest

from triton_helpers import DEVICE, TRITON_MARKS  # noqa: E402  (sets TRITON_INTERPRET first)
from efml_oracle import CONFIGS, SENTENCES, build_model, oracle_embed, require_efml

pytest.importorskip("triton", reason="the triton package is not installed")

from elmo_fast import backend as backends  # noqa: E402
from elmo_fast.efml import load_efml, sents2elmo  # noqa: E402

pytestmark = TRITON_MARKS

TOL = 1e-5


@pytest.mark.parametrize("name", list(CONFIGS))
def test_triton_backend_matches_the_package(monkeypatch, tmp_path, name):
    efml = require_efml()
    model_dir = build_model(tmp_path / name, name, seed=3)
    embedder = efml.Embedder(str(model_dir))
    monkeypatch.setenv(backends.ENV_VAR, "triton")
    model = load_efml(model_dir, stateful=False).to(DEVICE)
    calls = []
    for op in ("token_encoder", "bilstm"):
        real = backends.get_op("triton", op)

        def spy(*args, _real=real, _op=op, **kwargs):
            calls.append(_op)
            return _real(*args, **kwargs)
        monkeypatch.setitem(backends._REGISTRY, ("triton", op), spy)
    sentences = [s for s in SENTENCES if s][:4]  # small: the interpreter is slow
    got_all = sents2elmo(model, sentences, -2)
    assert calls == ["token_encoder", "bilstm"], calls
    ref_all = oracle_embed(embedder, sentences, -2)
    for k, (a, b) in enumerate(zip(got_all, ref_all)):
        assert a.shape == b.shape
        err = float(np.abs(a - b).max())
        assert err <= TOL, f"{name}: sentence {k}: max |diff| {err:.3g}"
    # every other output_layer is a view of the same layers (checked against the package on CPU backends
    # in test_efml.py); here: the per-layer and mean outputs from the same Triton run
    for layer in (0, 1, 2):
        ref = oracle_embed(embedder, sentences, layer)
        for a, b in zip([g[layer] for g in got_all], ref):
            assert float(np.abs(a - b).max()) <= TOL
    for a, b in zip([g.mean(axis=0) for g in got_all], oracle_embed(embedder, sentences, -1)):
        assert float(np.abs(a - b).max()) <= TOL
