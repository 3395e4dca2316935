"""Probes: CoNLL-U / WiC readers (errors name file and line), the probes end to end on a tiny model, and the
threshold and nearest-neighbour helpers against brute force."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from elmo_fast import cli
from elmo_fast.embedder import ElmoEmbedder
from elmo_fast.probe import (ConlluError, WicError, best_threshold, find_shared_data, load_embedder,
                             nearest_neighbour_senses, read_conllu, read_wic, wic_scores)
from helpers import SHARED, write_model

# ------------------------------------------------------------------------------------------ CoNLL-U
_WORDS = {"DET": ["the", "a", "every"], "NOUN": ["dog", "cat", "house", "river"], "VERB": ["runs", "sleeps", "sees"],
          "ADJ": ["big", "old"], "PUNCT": [".", "!"]}


def _conllu_sentence(words: list[tuple[str, str]], sent_id: str) -> str:
    lines = [f"# sent_id = {sent_id}", "# text = " + " ".join(w for w, _ in words)]
    for i, (w, t) in enumerate(words, start=1):
        lines.append(f"{i}\t{w}\t{w}\t{t}\tX\t_\t0\tdep\t_\t_")
    return "\n".join(lines) + "\n\n"


def _write_tagged(path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        words = []
        for tag in ("DET", "ADJ", "NOUN", "VERB", "DET", "NOUN", "PUNCT")[: rng.integers(3, 8)]:
            words.append((str(rng.choice(_WORDS[tag])), tag))
        out.append(_conllu_sentence(words, f"s{k}"))
    path.write_text("".join(out), encoding="utf-8")


def test_read_conllu_skips_comments_ranges_and_empty_nodes(tmp_path):
    path = tmp_path / "x.conllu"
    path.write_text(
        "# sent_id = 1\n"
        "1-2\tdon't\t_\t_\t_\t_\t_\t_\t_\t_\n"
        "1\tdo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_\n"
        "2\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_\n"
        "3\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_\n"
        "3.1\tgo\tgo\tVERB\tVB\t_\t_\t_\t3:conj\t_\n"
        "\n\n"
        "# sent_id = 2\n"
        "1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_\n", encoding="utf-8")  # no final blank line: still a sentence
    sents = read_conllu(path)
    assert [s.forms for s in sents] == [("do", "n't", "go"), ("Hi",)]
    assert [s.tags for s in sents] == [("AUX", "PART", "VERB"), ("INTJ",)]
    assert [s.line for s in sents] == [3, 10]


@pytest.mark.parametrize("bad_line, message", [
    ("2\tdog\tdog\tNOUN\tNN\t_\t0\troot\t_", r"line 4: expected 10 tab-separated columns .* found 9"),
    ("3\tdog\tdog\tNOUN\tNN\t_\t0\troot\t_\t_", r"line 4: column ID expected 2 .* found '3'"),
    ("x\tdog\tdog\tNOUN\tNN\t_\t0\troot\t_\t_", r"line 4: column ID expected 2 .* found 'x'"),
    ("2\tdog\tdog\t_\tNN\t_\t0\troot\t_\t_", r"line 4: expected a non-empty FORM and UPOS"),
    ("2-x\tdog\t_\t_\t_\t_\t_\t_\t_\t_", r"line 4: column ID expected an integer, a range"),
])
def test_conllu_errors_name_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "broken.conllu"
    path.write_text("# sent_id = 1\n# text = the dog\n1\tthe\tthe\tDET\tDT\t_\t2\tdet\t_\t_\n" + bad_line + "\n\n",
                    encoding="utf-8")
    with pytest.raises(ConlluError, match=r"broken\.conllu: " + message):
        read_conllu(path)


def test_conllu_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "bytes.conllu"
    path.write_bytes(b"1\tok\tok\tX\tX\t_\t0\troot\t_\t_\n\n1\t\xff\tx\tX\tX\t_\t0\troot\t_\t_\n")
    with pytest.raises(ConlluError, match=r"bytes\.conllu: line 3: not valid UTF-8"):
        read_conllu(path)


def test_cli_reports_conllu_error_with_file_and_line(tmp_path, caplog):
    opt, _ = write_model(tmp_path / "model")
    good, bad = tmp_path / "good.conllu", tmp_path / "bad.conllu"
    _write_tagged(good, 5, 0)
    bad.write_text("1\tthe\tthe\tDET\n", encoding="utf-8")
    with caplog.at_level(logging.ERROR):
        rc = cli.main(["probe", "pos", str(opt.parent), "--conllu-train", str(good), "--conllu-test", str(bad),
                       "--quiet"])
    assert rc == 2
    assert f"{bad}: line 1: expected 10 tab-separated columns" in caplog.text


@pytest.mark.skipif(not (SHARED / "data" / "ud-english-ewt").is_dir(), reason=f"../shared absent ({SHARED})")
def test_real_ewt_dev_matches_published_counts():
    path = find_shared_data("ud-english-ewt") / "en_ewt-ud-dev.conllu"
    sents = read_conllu(path)
    assert len(sents) == 2001  # data/README.md: dev 2,001 sentences
    assert sum(len(s.forms) for s in sents) == 25_147  # syntactic words (empty nodes are not counted)
    assert len({t for s in sents for t in s.tags}) == 17


@pytest.fixture
def restore_threads():
    """The CLI's --threads sets torch's thread count for the whole process; give the next tests theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_pos_probe_end_to_end_reports_every_layer(tmp_path, capsys, restore_threads):
    opt, _ = write_model(tmp_path / "model")
    train, test = tmp_path / "train.conllu", tmp_path / "test.conllu"
    _write_tagged(train, 120, 1)
    _write_tagged(test, 40, 2)
    out = tmp_path / "pos.json"
    rc = cli.main(["probe", "pos", str(opt.parent), "--conllu-train", str(train), "--conllu-test", str(test),
                   "--epochs", "12", "--lr", "0.05", "--json", str(out), "--threads", "1", "--quiet"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert set(result["test_accuracy"]) == {"0", "1", "2", "mix"}
    for acc in result["test_accuracy"].values():
        assert 0.0 <= acc <= 1.0
    # here the tag is a function of the word, and a random char-CNN gives every word its own vector:
    # a working linear probe on the token layer must get (nearly) everything right
    assert result["test_accuracy"]["0"] >= 0.95
    assert result["baseline_test_accuracy"] == 1.0
    assert len(result["mix_weights"]) == 3 and abs(sum(result["mix_weights"]) - 1) < 1e-5
    table = capsys.readouterr().out
    for label in ("layer 0 (token)", "layer 1", "layer 2", "scalar mix", "word baseline"):
        assert label in table


# ------------------------------------------------------------------------------------------ WiC
def _write_wic(root, split: str, rows: list[tuple[str, str, str, str, str]], gold: list[str]) -> None:
    d = root / split
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{split}.data.txt").write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    (d / f"{split}.gold.txt").write_text("".join(g + "\n" for g in gold), encoding="utf-8")


_WIC_ROWS = [
    ("bank", "N", "3-1", "We sat on the bank of the river .", "The bank lent us money ."),
    ("bank", "N", "4-4", "He paid it into the bank yesterday .", "She works at the bank downtown ."),
    ("play", "V", "1-2", "They play chess .", "We will play football tomorrow ."),
    ("play", "N", "1-3", "A play about kings .", "The children play outside ."),
    ("light", "N", "2-1", "Turn the light on .", "This light bag is easy to carry ."),
    ("light", "N", "3-2", "The lamp 's light was warm .", "The morning light filled the room ."),
]
_WIC_GOLD = ["F", "T", "T", "F", "F", "T"]


def test_wic_probe_end_to_end_reports_every_layer(tmp_path, capsys):
    opt, w = write_model(tmp_path / "model")
    for split in ("train", "dev", "test"):
        _write_wic(tmp_path / "wic", split, _WIC_ROWS, _WIC_GOLD)
    out = tmp_path / "wic.json"
    rc = cli.main(["probe", "wic", str(opt.parent), "--wic-dir", str(tmp_path / "wic"), "--json", str(out),
                   "--quiet"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert set(result["accuracy"]) == {"0", "1", "2", "average"}
    # recompute layer 2 independently: cosine of the embedder's vectors, then the reported threshold
    embedder = ElmoEmbedder(opt, w, stateful=False)
    scores = []
    for _, _, idx, c1, c2 in _WIC_ROWS:
        i1, i2 = map(int, idx.split("-"))
        a = embedder.embed_sentence(c1.split())[2, i1]
        b = embedder.embed_sentence(c2.split())[2, i2]
        scores.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    labels = np.array([g == "T" for g in _WIC_GOLD])
    t = result["threshold"]["2"]
    expected = float(((np.array(scores) >= t) == labels).mean())
    assert result["accuracy"]["2"]["test"] == pytest.approx(expected)
    _, best = best_threshold(np.array(scores), labels)
    assert result["accuracy"]["2"]["train"] == pytest.approx(best)
    assert "layer 0 (token)" in capsys.readouterr().out


def test_wic_scores_match_direct_cosines(tmp_path):
    opt, w = write_model(tmp_path / "model", seed=3)
    embedder = load_embedder(opt.parent)
    _write_wic(tmp_path / "wic", "train", _WIC_ROWS, _WIC_GOLD)
    pairs = read_wic(tmp_path / "wic/train/train.data.txt", tmp_path / "wic/train/train.gold.txt")
    scores = wic_scores(embedder, pairs)
    e1 = embedder.embed_sentence(pairs[0].context1)
    e2 = embedder.embed_sentence(pairs[0].context2)
    for j in range(3):
        a, b = e1[j, pairs[0].index1], e2[j, pairs[0].index2]
        assert scores[str(j)][0] == pytest.approx(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)), abs=1e-5)
    a, b = e1[:, pairs[0].index1].mean(0), e2[:, pairs[0].index2].mean(0)
    assert scores["average"][0] == pytest.approx(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)), abs=1e-5)


@pytest.mark.parametrize("data, gold, message", [
    ("bank\tN\t3-1\tWe sat .\tbank .\n", "T\n", r"train\.data\.txt: line 1: index 3-1 outside the contexts"),
    ("bank\tN\t0-0\tbank .\tbank .\nbank\tN\t0_0\tbank .\tbank .\n", "T\nF\n",
     r"train\.data\.txt: line 2: field 3 expected 'i1-i2'"),
    ("bank\tN\t0-0\tbank .\n", "T\n", r"train\.data\.txt: line 1: expected 5 tab-separated fields"),
    ("bank\tN\t0-0\tbank .\tbank .\n", "yes\n", r"train\.gold\.txt: line 1: expected 'T' or 'F'"),
    ("bank\tN\t0-0\tbank .\tbank .\n", "T\nF\n", r"has 1 line but .*train\.gold\.txt has 2"),
])
def test_wic_errors_name_file_and_line(tmp_path, data, gold, message):
    (tmp_path / "train.data.txt").write_text(data, encoding="utf-8")
    (tmp_path / "train.gold.txt").write_text(gold, encoding="utf-8")
    with pytest.raises(WicError, match=message):
        read_wic(tmp_path / "train.data.txt", tmp_path / "train.gold.txt")


# ------------------------------------------------------------------------------------------ helpers
def _brute_threshold_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    candidates = np.concatenate([scores, [scores.max() + 1]])
    return max(float(((scores >= t) == labels).mean()) for t in candidates)


def test_best_threshold_small_cases():
    t, acc = best_threshold(np.array([0.1, 0.2, 0.3, 0.4]), np.array([False, False, True, True]))
    assert t == pytest.approx(0.25) and acc == 1.0
    t, acc = best_threshold(np.array([0.9, 0.1]), np.array([False, True]))  # inverted: best is all-one-class
    assert acc == 0.5
    t, acc = best_threshold(np.array([0.5, 0.5, 0.5]), np.array([True, True, False]))  # ties cannot be split
    assert acc == pytest.approx(2 / 3) and t < 0.5


def test_best_threshold_matches_brute_force():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 50, 333):
        scores = np.round(rng.normal(size=n), 1)  # rounding creates ties
        labels = rng.random(n) < 1 / (1 + np.exp(-2 * scores))
        t, acc = best_threshold(scores, labels)
        assert acc == pytest.approx(_brute_threshold_accuracy(scores, labels))
        assert acc == pytest.approx(float(((scores >= t) == labels).mean()))


def test_nearest_neighbour_senses_ties_and_clusters():
    words = ["a"] * 4 + ["b"] * 3 + ["c"]
    senses = ["x", "x", "y", "y", "p", "p", "q", "z"]
    same = np.ones((8, 3))  # every vector identical: all neighbours tie
    clustered = np.array([[1, 0, 0], [1, 0.1, 0], [0, 1, 0], [0, 1, 0.1], [0, 0, 1], [0.1, 0, 1], [1, 1, 0],
                          [5, 5, 5]], dtype=float)
    result = nearest_neighbour_senses({"same": same, "clustered": clustered}, words, senses)
    # "a": 1 of 3 tied neighbours shares the sense; "b": p,p,q -> 1/2, 1/2, 0; "c" has no neighbour (skipped)
    assert result.per_word["same"]["a"] == pytest.approx(1 / 3)
    assert result.per_word["same"]["b"] == pytest.approx(1 / 3)
    assert result.accuracy["same"] == pytest.approx((4 * (1 / 3) + 0.5 + 0.5 + 0) / 7)
    assert result.per_word["clustered"]["a"] == 1.0
    assert result.neighbour["clustered"][:4] == [1, 0, 3, 2]
    assert result.per_word["clustered"]["b"] == pytest.approx(2 / 3)
    assert "c" not in result.per_word["clustered"]


def test_nearest_neighbour_senses_exclusions():
    words = ["a"] * 4
    senses = ["x", "x", "y", "y"]
    vectors = np.array([[1, 0], [1, 0.01], [0, 1], [0.02, 1]], dtype=float)
    # each occurrence's best neighbour is in its own group; excluded, the best remaining one has the other sense
    result = nearest_neighbour_senses({"v": vectors}, words, senses, exclude=[["g", "g", "h", "h"]])
    assert result.accuracy["v"] == 0.0
    assert result.neighbour["v"] == [3, 3, 1, 1]
    result = nearest_neighbour_senses({"v": vectors}, words, senses, exclude=[["g", "g", "g", "h"]])
    assert result.accuracy["v"] == pytest.approx(0.5)  # 0 -> 3 (y), 1 -> 3 (y), 2 -> 3 (y), 3 -> 2 (y)
    # occurrences with no candidate outside their group are skipped
    result = nearest_neighbour_senses({"v": vectors}, words, senses, exclude=[["g"] * 4])
    assert np.isnan(result.accuracy["v"]) and result.per_word["v"] == {}
    # two exclusion lists: sharing a label in either one excludes; each occurrence keeps one candidate
    result = nearest_neighbour_senses({"v": vectors}, words, senses,
                                      exclude=[["p", "p", "q", "q"], ["s", "t", "t", "s"]])
    assert result.neighbour["v"] == [2, 3, 0, 1]
    assert result.accuracy["v"] == 0.0


def test_conllu_text_writes_forms_one_sentence_per_line(tmp_path, capsys):
    src, out = tmp_path / "in.conllu", tmp_path / "out.txt"
    _write_tagged(src, 6, 4)
    assert cli.main(["probe", "conllu-text", str(src), str(out)]) == 0
    expected = [" ".join(s.forms) for s in read_conllu(src)]
    assert out.read_text(encoding="utf-8").splitlines() == expected and len(expected) == 6
    assert "wrote 6 sentences" in capsys.readouterr().out
