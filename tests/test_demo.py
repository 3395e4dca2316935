"""``elmo-fast demo`` end to end on a small budget: the contextual layers must separate senses, the token layer not."""
from __future__ import annotations

import json

import pytest
import torch

from elmo_fast import cli

# one shared demo run: 200 training steps (128k tokens) plus set-up and evaluation
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    report = out / "demo.json"
    threads = torch.get_num_threads()  # --threads is process-wide: give the next tests theirs back
    rc = cli.main(["demo", "--steps", "200", "--out", str(out / "run"), "--json", str(report), "--n-train", "3000",
                   "--heldout-per-sense", "12", "--threads", "1", "--quiet"])
    torch.set_num_threads(threads)
    assert rc == 0
    return out, json.loads(report.read_text())


def test_demo_reports_every_layer(demo_run):
    _, result = demo_run
    assert set(result["sense_accuracy"]) == {"0", "1", "2", "average"}
    for acc in result["sense_accuracy"].values():
        assert 0.0 <= acc <= 1.0
    assert result["n_heldout"] == 12 * 23
    for key in ("sense_accuracy_untrained", "sense_accuracy_other_context", "sense_accuracy_other_context_untrained"):
        assert set(result[key]) == {"0", "1", "2", "average"}
    assert result["training"]["step"] > 0


def test_contextual_layers_beat_the_token_layer(demo_run):
    _, result = demo_run
    acc = result["sense_accuracy"]
    # the token layer gives every occurrence of a word the same vector: it can only score chance
    assert acc["0"] == pytest.approx(result["chance"], abs=0.05)
    # layers that read the context must separate the senses by a wide margin (fails if contexts are ignored)
    for key in ("1", "2", "average"):
        assert acc[key] >= acc["0"] + 0.3, (key, acc)


def test_training_teaches_senses_beyond_the_neighbouring_words(demo_run):
    _, result = demo_run
    # neighbours may share neither the words before nor after the ambiguous word: the untrained model's
    # layers only mix in those words and stay near chance; the trained model has learned what they mean
    trained, untrained = result["sense_accuracy_other_context"], result["sense_accuracy_other_context_untrained"]
    for key in ("1", "2"):
        assert untrained[key] < trained["0"] + 0.12, (key, untrained)
        assert trained[key] > untrained[key] + 0.08, (key, trained, untrained)


def test_training_lowered_heldout_perplexity(demo_run):
    _, result = demo_run
    assert result["heldout_perplexity"] < 0.5 * result["heldout_perplexity_untrained"]


def test_demo_writes_png_and_model(demo_run):
    out, result = demo_run
    png = result["png"]
    assert png is not None
    with open(png, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    # one row per ambiguous word (all of them), one column per representation: a tall image
    from elmo_fast.demo_corpus import AMBIGUOUS_WORDS
    assert result["png_words"] == list(AMBIGUOUS_WORDS) and len(AMBIGUOUS_WORDS) == 11
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    assert height > 1.5 * width, (width, height)  # six rows of four would be shorter than wide
    model = out / "run" / "model"
    assert (model / "options.json").is_file() and (model / "weights.hdf5").is_file()
    assert len(result["examples"]) == 4
    for example in result["examples"]:
        assert example["word"] in example["query"].split()


def test_demo_rejects_bad_minutes(tmp_path, caplog):
    assert cli.main(["demo", "--minutes", "0", "--out", str(tmp_path)]) == 2
    assert "--minutes" in caplog.text


def test_demo_refuses_an_out_that_is_a_file_or_holds_other_files(tmp_path, caplog):
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me")
    assert cli.main(["demo", "--steps", "1", "--out", str(afile)]) == 2
    assert "exists and is not a directory" in caplog.text and afile.read_text() == "keep me"
    caplog.clear()
    assert cli.main(["demo", "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "holds files the demo did not write" in caplog.text and afile.read_text() == "keep me"
