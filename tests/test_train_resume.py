"""``--resume``: the corpus fingerprint, ``train --out RUN --resume`` alone, ``--init-from`` without ``--options``."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from elmo_fast.cli import main as cli_main
from elmo_fast.options import preset
from elmo_fast.training import CHECKPOINT_NAME, TrainConfig, load_checkpoint, run_training
from elmo_fast.training.fingerprint import compare_corpus, corpus_fingerprint
from helpers import TRAIN_FLAGS as SMALL


def _corpus(directory: Path, n_files: int = 2, lines: int = 30, shift: int = 0) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    for f in range(n_files):
        (directory / f"part{f}.txt").write_text(
            "\n".join(" ".join(f"w{(i * 5 + k * (f + 2) + shift) % 14}" for k in range(3 + i % 4))
                      for i in range(lines))
            + "\n", encoding="utf-8")
    return str(directory / "*.txt")


def _config(**kw) -> TrainConfig:
    base = dict(batch_size=2, unroll_steps=4, n_negative_samples=6, seed=3, checkpoint_every=1000, backend="reference")
    return TrainConfig(**{**base, **kw})


def test_fingerprint_names_the_difference(tmp_path):
    _corpus(tmp_path / "c")
    files = sorted(str(p) for p in (tmp_path / "c").glob("*.txt"))
    before = corpus_fingerprint(files)
    assert compare_corpus(before, corpus_fingerprint(files)) is None
    with open(files[1], "a", encoding="utf-8") as f:
        f.write("w1 w2\n")
    assert compare_corpus(before, corpus_fingerprint(files)) == f"part1.txt was {before['files'][1][1]} bytes, now " \
                                                               f"{before['files'][1][1] + 6}"
    assert "1 file(s) then, 2 now" not in (compare_corpus(before, corpus_fingerprint(files[:1])) or "")
    assert "missing now: part1.txt" in compare_corpus(before, corpus_fingerprint(files[:1]))


def test_resume_refuses_a_changed_corpus_unless_allowed(tmp_path, caplog):
    """Same number of files, other content (the issue's case): refused; --allow-changed-corpus continues."""
    pattern = _corpus(tmp_path / "c")
    run = str(tmp_path / "run")
    run_training(pattern, run, preset("tiny"), _config(max_steps=1), progress=False)
    _corpus(tmp_path / "c", shift=1)                  # rewrite both files with other sentences...
    with open(tmp_path / "c" / "part0.txt", "a", encoding="utf-8") as f:
        f.write("w1 w2 w3\n")                          # ...and a different size
    with pytest.raises(ValueError, match=r"corpus differs .*part0.txt was \d+ bytes, now \d+.*--allow-changed-corpus"):
        run_training(pattern, run, None, _config(max_steps=2), resume=True, progress=False)
    assert load_checkpoint(str(tmp_path / "run" / CHECKPOINT_NAME))["step"] == 1
    with caplog.at_level(logging.WARNING):
        summary = run_training(pattern, run, None, _config(max_steps=2), resume=True, progress=False,
                               allow_changed_corpus=True)
    assert summary["step"] == 2 and "continuing on a changed corpus" in caplog.text


def test_resume_with_only_out_and_resume_equals_an_uninterrupted_run(tmp_path):
    """`train --out RUN --resume` takes the run's options, corpus, held-out file and flags (non-default batch
    size, unroll, seed...) and ends bit-identical to a run that was never interrupted."""
    pattern = _corpus(tmp_path / "c", n_files=1)
    held = tmp_path / "held.txt"
    held.write_text("w1 w2 w3\nw4 w5\n", encoding="utf-8")
    flags = ["--train", pattern, "--options", "tiny", "--seed", "5", "--heldout", str(held), "--eval-batch-size", "3",
             *SMALL]
    assert cli_main(["train", "--out", str(tmp_path / "full"), "--max-steps", "4", *flags]) == 0
    assert cli_main(["train", "--out", str(tmp_path / "part"), "--max-steps", "2", *flags]) == 0
    assert cli_main(["train", "--out", str(tmp_path / "part"), "--resume", "--max-steps", "4", "--quiet"]) == 0
    a = load_checkpoint(str(tmp_path / "full" / CHECKPOINT_NAME))
    b = load_checkpoint(str(tmp_path / "part" / CHECKPOINT_NAME))
    assert a["step"] == b["step"] == 4
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    saved = json.loads((tmp_path / "part" / "config.json").read_text())
    assert saved["batch_size"] == 2 and saved["seed"] == 5 and saved["heldout"] == str(held.resolve())
    assert saved["eval_batch_size"] == 3
    # a flag given with --resume still wins over the run's own (and a shape change is refused)
    with pytest.raises(SystemExit):
        cli_main(["train", "--out", str(tmp_path / "part"), "--resume", "--options"])
    assert cli_main(["train", "--out", str(tmp_path / "part"), "--resume", "--options", "small", "--quiet"]) == 2


def test_init_from_without_options_takes_the_models_shape(tmp_path):
    pattern = _corpus(tmp_path / "c", n_files=1)
    assert cli_main(["train", "--train", pattern, "--out", str(tmp_path / "run"), "--options", "tiny",
                     "--max-steps", "1", *SMALL]) == 0
    assert cli_main(["train", "--train", pattern, "--out", str(tmp_path / "ft"), "--init-from", str(tmp_path / "run"),
                     "--max-steps", "0", *SMALL]) == 0
    a = load_checkpoint(str(tmp_path / "run" / CHECKPOINT_NAME))
    b = load_checkpoint(str(tmp_path / "ft" / CHECKPOINT_NAME))
    assert b["options"]["lstm"] == a["options"]["lstm"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
