"""Held-out perplexity scores the whole file: rows that still hold a sentence when the file runs out finish it."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from elmo_fast.cli import main as cli_main
from elmo_fast.data import Vocabulary, heldout_batches
from elmo_fast.options import preset
from elmo_fast.training import LanguageModel, evaluate_perplexity, init_weights

WORDS = [f"w{i}" for i in range(10)]


def _model(vocab: Vocabulary) -> LanguageModel:
    model = LanguageModel(preset("tiny"), len(vocab), backend="reference")
    init_weights(model.bilm, model.softmax_weight, model.softmax_bias, torch.Generator().manual_seed(4))
    return model


def _write(path: Path, sentences: list[list[str]]) -> str:
    path.write_text("".join(" ".join(s) + "\n" for s in sentences), encoding="utf-8")
    return str(path)


def _total_loss(result: dict) -> tuple[float, float]:
    return result["forward_loss"] * result["tokens"], result["backward_loss"] * result["tokens"]


def test_every_token_is_scored_and_the_tail_rows_carry_their_state(tmp_path):
    """Rows are independent streams: with 2 rows and sentences A (short), B (long), C, row 0 reads A then C
    (state carried) and row 1 reads B, so the file's total loss must equal that of file "A, C" and file "B"
    each read by a single row. bilm-tf's protocol would stop when row 0 runs out of sentences."""
    A, B, C = WORDS[:3], (WORDS * 2)[:14], WORDS[3:8]
    vocab = Vocabulary(["<S>", "</S>", "<UNK>"] + WORDS[:8])       # w8, w9 are <UNK> targets
    model = _model(vocab)
    full = evaluate_perplexity(model, vocab, _write(tmp_path / "abc.txt", [A, B, C]), batch_size=2)
    expected_tokens = sum(len(s) + 1 for s in (A, B, C))
    assert full["tokens"] == full["total_tokens"] == expected_tokens and full["fraction"] == 1.0
    row0 = evaluate_perplexity(model, vocab, _write(tmp_path / "ac.txt", [A, C]), batch_size=1)
    row1 = evaluate_perplexity(model, vocab, _write(tmp_path / "b.txt", [B]), batch_size=1)
    want = [x + y for x, y in zip(_total_loss(row0), _total_loss(row1))]
    got = _total_loss(full)
    assert got[0] == pytest.approx(want[0], rel=1e-5) and got[1] == pytest.approx(want[1], rel=1e-5)
    assert full["perplexity"] == pytest.approx(math.exp(0.5 * (want[0] + want[1]) / expected_tokens), rel=1e-5)
    # bilm-tf's protocol (whole_file=False) scores only the first batches: fewer tokens than the file holds
    dropped = sum(int(b.fw_targets.numel()) for b in heldout_batches(str(tmp_path / "abc.txt"), vocab, 2, 1))
    assert dropped < expected_tokens


@pytest.mark.parametrize("rows", [1, 3, 256])
def test_long_lines_and_many_rows_score_the_whole_file(tmp_path, rows):
    """The issue's case: few long lines and 256 rows (bilm-tf's default) used to score a small part."""
    sentences = [[WORDS[(i * 3 + k) % 10] for k in range(20 + 7 * i)] for i in range(6)]
    vocab = Vocabulary(["<S>", "</S>", "<UNK>"] + WORDS)
    result = evaluate_perplexity(_model(vocab), vocab, _write(tmp_path / "h.txt", sentences), batch_size=rows)
    assert result["tokens"] == result["total_tokens"] == sum(len(s) + 1 for s in sentences)
    assert 1.0 < result["perplexity"] < 10 * len(vocab)


def test_a_limit_says_which_fraction_was_scored(tmp_path, capsys):
    from elmo_fast.training import export_model
    sentences = [[WORDS[(i + k) % 10] for k in range(5)] for i in range(40)]
    held = _write(tmp_path / "h.txt", sentences)
    vocab = Vocabulary(["<S>", "</S>", "<UNK>"] + WORDS)
    export_model(_model(vocab), vocab, str(tmp_path / "model"))
    assert cli_main(["evaluate", str(tmp_path / "model"), "--heldout", held, "--batch-size", "4",
                     "--max-batches", "3", "--backend", "reference", "--quiet"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "scored 12 of 240 held-out tokens (5.0%) because of --max-batches; leave out --max-batches to " \
                    "score the whole file"
    assert cli_main(["evaluate", str(tmp_path / "model"), "--heldout", held, "--batch-size", "4",
                     "--backend", "reference", "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "scored the whole held-out file: 240 tokens per direction"
