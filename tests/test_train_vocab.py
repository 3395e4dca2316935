"""Vocabularies as bilm-tf reads them (special tokens on any line, ``!!!MAXTERMID``, ``max_word_length``), the
coverage warning of ``--vocab``, and Adagrad's initial accumulator (bilm-tf's 1.0) pinned by the first update."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from elmo_fast.chars import CharacterMapper
from elmo_fast.cli import main as cli_main
from elmo_fast.data import TrainingBatches, Vocabulary
from elmo_fast.options import preset
from elmo_fast.training import LanguageModel, TrainConfig, Trainer, evaluate_perplexity, init_weights
from helpers import TRAIN_FLAGS as SMALL


# ---------------------------------------------------------------------------------------------- shared fixtures
@pytest.mark.parametrize("kind, n, bos, eos, unk", [("allennlp", 458, 20, 224, 117), ("bilm-tf", 448, 207, 257, None)])
def test_fixture_vocabularies_load_with_specials_where_they_are(fixtures_dir, kind, n, bos, eos, unk):
    """The shared fixture vocab files (specials on lines 21/225/118, and 208/258 without <UNK>) load as bilm-tf
    reads them: ids are line positions; char rows are bilm-tf's (<S>/</S> get the sentence markers)."""
    path = fixtures_dir / kind / "vocab_test.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    vocab = Vocabulary.from_file(path)
    assert len(vocab) == n == len(lines)
    assert (vocab.bos_id, vocab.eos_id, vocab.unk_id) == (bos, eos, unk)
    assert lines[bos] == "<S>" and lines[eos] == "</S>"
    mapper = CharacterMapper()
    for i in (0, 1, bos, eos, n - 1):
        assert vocab.char_table[i].tolist() == mapper.token_to_ids(lines[i])
    assert vocab.char_table[bos][:3].tolist() == [259, 257, 260] and vocab.char_table[eos][:3].tolist() == [259, 258,
                                                                                                            260]
    assert vocab.has_specials == (unk is not None)


def test_fixture_vocabulary_trains_with_its_own_special_ids(fixtures_dir, tmp_path):
    """Training on the AllenNLP fixture vocabulary (<S> id 20, </S> 224, <UNK> 117): targets use those ids."""
    vocab = Vocabulary.from_file(fixtures_dir / "allennlp" / "vocab_test.txt")
    words = [t for t in vocab.tokens if t not in ("<S>", "</S>", "<UNK>")][:12]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(" ".join(words[(i + k) % 12] for k in range(3)) + " zzzunseen" for i in range(20))
                      + "\n", encoding="utf-8")
    batch = TrainingBatches([str(corpus)], vocab, 2, 5, seed=0).next_batch()
    fw, bw = batch.fw_targets.reshape(-1).tolist(), batch.bw_targets.reshape(-1).tolist()
    assert 224 in fw and 117 in fw and 20 in bw and 117 in bw         # </S> ends forward, <S> backward, OOV -> 117
    assert not {0, 1, 2} & set(fw) - {vocab.index[w] for w in words}  # no hard-coded 0/1/2 ids
    rc = cli_main(["train", "--train", str(corpus), "--out", str(tmp_path / "run"), "--options", "tiny", "--vocab",
                   str(fixtures_dir / "allennlp" / "vocab_test.txt"), "--max-steps", "2", *SMALL])
    assert rc == 0


def test_fixture_vocabulary_without_unk_is_refused_for_training(fixtures_dir, tmp_path, caplog):
    corpus = tmp_path / "c.txt"
    corpus.write_text("it were care\n", encoding="utf-8")
    with caplog.at_level(logging.ERROR):
        rc = cli_main(["train", "--train", str(corpus), "--out", str(tmp_path / "run"), "--options", "tiny",
                       "--vocab", str(fixtures_dir / "bilm-tf" / "vocab_test.txt"), "--max-steps", "1", *SMALL])
    assert rc == 2 and "vocab_test.txt: no line <UNK>" in caplog.text


# ---------------------------------------------------------------------------------------------- bilm-tf's reader
def test_maxtermid_lines_take_no_id_and_whitespace_is_stripped(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("the\n!!!MAXTERMID\n <S>\n</S>\t\ncat\n<UNK>\n", encoding="utf-8")
    vocab = Vocabulary.from_file(path)
    assert vocab.tokens == ["the", "<S>", "</S>", "cat", "<UNK>"]
    assert (vocab.bos_id, vocab.eos_id, vocab.unk_id) == (1, 2, 4)
    assert vocab.ids(["cat", "dog", "the"]).tolist() == [3, 4, 0]


def test_max_word_length_cuts_bytes_like_bilm_tf():
    """bilm-tf: <bow>, the first max_word_length - 2 UTF-8 bytes, <eow>, padding (ids here are +1 shifted)."""
    vocab = Vocabulary(["<S>", "</S>", "<UNK>", "Lashkar-e-Taiba", "é"], max_word_length=8)
    # "Lashk" + "a": 6 bytes = 8 - 2; bow 258 -> 259, eow 259 -> 260, pad 260 -> 261
    assert vocab.char_table[3].tolist() == [259, 77, 98, 116, 105, 108, 98, 260]
    assert vocab.char_table[4].tolist() == [259, 196, 170, 260, 261, 261, 261, 261]      # é = c3 a9
    assert vocab.char_table[0].tolist() == [259, 257, 260, 261, 261, 261, 261, 261]
    assert vocab.char_table.shape == (5, 8)


def test_special_token_positions_do_not_change_the_numbers(tmp_path):
    """The same model with the specials moved to other lines (softmax rows moved along) gives the same
    held-out losses: the code uses the vocabulary's ids, not 0/1/2."""
    words = [f"w{i}" for i in range(9)]
    first = Vocabulary(["<S>", "</S>", "<UNK>"] + words)
    moved_tokens = words[:3] + ["</S>"] + words[3:6] + ["<UNK>"] + words[6:] + ["<S>"]
    moved = Vocabulary(moved_tokens)
    held = tmp_path / "h.txt"
    held.write_text("w1 w2 zz w3\nw4 w5 w6 w7 w8\nw0 zz\n", encoding="utf-8")
    a = LanguageModel(preset("tiny"), len(first), backend="reference")
    init_weights(a.bilm, a.softmax_weight, a.softmax_bias, torch.Generator().manual_seed(1))
    b = LanguageModel(preset("tiny"), len(moved), backend="reference")
    b.load_state_dict(a.state_dict())
    perm = torch.tensor([first.index[t] for t in moved_tokens])
    with torch.no_grad():
        b.softmax_weight.copy_(a.softmax_weight[perm])
        b.softmax_bias.copy_(a.softmax_bias[perm] + 0.0)
    ra = evaluate_perplexity(a, first, str(held), batch_size=2)
    rb = evaluate_perplexity(b, moved, str(held), batch_size=2)
    assert rb["tokens"] == ra["tokens"] == 14
    assert rb["forward_loss"] == pytest.approx(ra["forward_loss"], rel=1e-6)
    assert rb["backward_loss"] == pytest.approx(ra["backward_loss"], rel=1e-6)


# ---------------------------------------------------------------------------------------------- coverage
def _corpus(path: Path) -> Path:
    path.write_text("\n".join(f"a{i % 7} b{i % 5} c{i % 3}" for i in range(30)) + "\n", encoding="utf-8")
    return path


def test_a_vocabulary_that_does_not_fit_the_corpus_is_warned_about(tmp_path, caplog):
    corpus = _corpus(tmp_path / "c.txt")
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("<S>\n</S>\n<UNK>\nthe\nof\nand\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert cli_main(["train", "--train", str(corpus), "--out", str(tmp_path / "r1"), "--options", "tiny",
                         "--vocab", str(foreign), "--max-steps", "1", *SMALL]) == 0
    assert "VOCABULARY DOES NOT FIT THE CORPUS" in caplog.text and "covers only 0.0%" in caplog.text
    assert "3 of its 3 words never occur" in caplog.text
    caplog.clear()
    partial = tmp_path / "partial.txt"   # a0..a6 cover 1/3 of the tokens: below 50%
    partial.write_text("<S>\n</S>\n<UNK>\n" + "".join(f"a{i}\n" for i in range(7)), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert cli_main(["train", "--train", str(corpus), "--out", str(tmp_path / "r2"), "--options", "tiny",
                         "--vocab", str(partial), "--max-steps", "1", *SMALL]) == 0
    assert "covers only 33.3% of the tokens of the corpus (30 of 90)" in caplog.text
    caplog.clear()
    good = tmp_path / "good.txt"
    good.write_text("<S>\n</S>\n<UNK>\n" + "".join(f"a{i}\nb{i % 5}\n" for i in range(7) if i < 5) + "a5\na6\nc0\n",
                    encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert cli_main(["train", "--train", str(corpus), "--out", str(tmp_path / "r3"), "--options", "tiny",
                         "--vocab", str(good), "--max-steps", "1", *SMALL]) == 0
    assert "DOES NOT FIT" not in caplog.text and "never occur" not in caplog.text


# ---------------------------------------------------------------------------------------------- Adagrad
def test_first_adagrad_step_uses_bilm_tf_initial_accumulator(tmp_path):
    """bilm-tf: Adagrad(lr 0.2, initial_accumulator_value 1.0). The first update of every dense parameter is
    exactly ``-0.2 * g / sqrt(1.0 + g^2)`` with ``g`` the clipped gradient; e.g. g = 0.5 moves by
    0.2 * 0.5 / sqrt(1.25) = 0.0894427 (an accumulator of 0.1 would give 0.169, of 0 would give 0.2)."""
    corpus = _corpus(tmp_path / "c.txt")
    vocab = Vocabulary.build([str(corpus)])
    model = LanguageModel(preset("tiny"), len(vocab), backend="reference")
    init_weights(model.bilm, model.softmax_weight, model.softmax_bias, torch.Generator().manual_seed(0))
    trainer = Trainer(model, TrainConfig(batch_size=2, unroll_steps=4, n_negative_samples=6, dropout=0.0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.step(TrainingBatches([str(corpus)], vocab, 2, 4, seed=0).next_batch())
    checked = 0
    for name, p in model.named_parameters():
        if p.grad is None or p.grad.is_sparse:
            continue
        g = p.grad.double()
        want = before[name].double() - 0.2 * g / torch.sqrt(1.0 + g * g)
        torch.testing.assert_close(p.detach().double(), want, rtol=0, atol=2e-7, msg=name)
        checked += 1
    assert checked >= 10
    # the pinned number itself, through the optimizer the Trainer built
    w = torch.nn.Parameter(torch.zeros(3))
    d = Trainer(model, TrainConfig()).optimizer.defaults
    opt = torch.optim.Adagrad([w], lr=d["lr"], initial_accumulator_value=d["initial_accumulator_value"], eps=d["eps"])
    w.grad = torch.tensor([0.5, -2.0, 3.0])
    opt.step()
    expected = [-0.2 * 0.5 / math.sqrt(1.25), 0.2 * 2.0 / math.sqrt(5.0), -0.2 * 3.0 / math.sqrt(10.0)]
    assert np.allclose(w.detach().numpy(), expected, rtol=0, atol=1e-7)
    assert abs(float(w.detach()[0]) + 0.0894427191) < 1e-7
