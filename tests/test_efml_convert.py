"""``elmo-fast convert``: an ELMoForManyLangs model that bilm-tf's format can express, converted, gives the
package's numbers through elmo-fast's bilm-tf path (BiLM + batch_to_ids); the others are refused with reasons."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from efml_oracle import ASCII_CHARS, CONVERTIBLE, build_model, oracle_embed, require_efml
from elmo_fast import BiLM, batch_to_ids
from elmo_fast.cli import main
from elmo_fast.efml import convert, load_efml, to_bilm_tf
from elmo_fast.errors import UserError

ASCII_SENTENCES = [["the", "cat", "sat", "."], ["x"],
                   ["a" * 70, "Zebra", "~unknown~", "dog's", "42"]]  # a word past 48 chars, chars not in char.dic


def _bilm_layers(bilm, sentences):
    with torch.no_grad():
        out = bilm(batch_to_ids(sentences))
    layers = torch.stack(out["activations"], dim=1).numpy()
    return [layers[b, :, 1:len(s) + 1] for b, s in enumerate(sentences)]


def test_convert_ascii_model_matches_the_package(tmp_path):
    efml = require_efml()
    model_dir = build_model(tmp_path / "m", "convertible", seed=5, config=CONVERTIBLE, chars=ASCII_CHARS)
    assert main(["convert", str(model_dir), str(tmp_path / "out")]) == 0
    bilm = BiLM.from_files(tmp_path / "out" / "options.json", tmp_path / "out" / "weights.hdf5", stateful=False)
    ref = oracle_embed(efml.Embedder(str(model_dir)), ASCII_SENTENCES, -2)
    for backend in ("reference", "fast"):
        bilm.backend = backend
        for k, (a, b) in enumerate(zip(_bilm_layers(bilm, ASCII_SENTENCES), ref)):
            assert a.shape == b.shape
            err = float(np.abs(a - b).max())
            assert err <= 1e-5, f"{backend}: sentence {k}: {err:.3g}"
    # an existing output is not replaced silently
    assert main(["convert", str(model_dir), str(tmp_path / "out")]) == 2
    assert main(["convert", str(model_dir), str(tmp_path / "out"), "--overwrite"]) == 0
    from elmo_fast.publish import verify_folder
    assert verify_folder(tmp_path / "out")  # published whole, with a manifest


def test_convert_refuses_what_does_not_map(tmp_path):
    require_efml()
    wide = build_model(tmp_path / "wide", "convertible", seed=6, config=CONVERTIBLE)  # char.dic has é, ü, U+3000
    with pytest.raises(UserError, match=r"non-ASCII characters .*--ascii-only"):
        convert(wide, tmp_path / "out")
    info = convert(wide, tmp_path / "out", ascii_only=True)
    assert info["ascii_only"]
    # --ascii-only: ASCII text keeps the numbers (EFML model vs converted BiLM)
    model = load_efml(wide, stateful=False)
    bilm = to_bilm_tf(model, ascii_only=True)
    with torch.no_grad():
        a = torch.stack(model(*model.prepare_inputs(ASCII_SENTENCES))["activations"])
        b = torch.stack(bilm(batch_to_ids(ASCII_SENTENCES))["activations"])
    assert float((a - b).abs().max()) <= 1e-5
    word = build_model(tmp_path / "word", "word+char", seed=7)  # word embedding and 10 chars per token
    with pytest.raises(UserError) as e:
        convert(word, tmp_path / "out2", ascii_only=True)
    assert "word embedding (word_dim 6" in str(e.value) and "max_characters_per_token is 10" in str(e.value)
    assert not (tmp_path / "out2").exists()
