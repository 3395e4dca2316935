"""The embedded demo corpus: seeded determinism and sense labels that agree with their contexts."""
from __future__ import annotations

import pytest

from elmo_fast import demo_corpus as dc


@pytest.fixture(scope="module")
def corpus() -> dc.DemoCorpus:
    return dc.generate(seed=7, n_train=3000, heldout_per_sense=12)


def test_same_seed_same_corpus_other_seed_other_corpus(corpus):
    again = dc.generate(seed=7, n_train=3000, heldout_per_sense=12)
    assert again == corpus
    other = dc.generate(seed=8, n_train=3000, heldout_per_sense=12)
    assert other.train != corpus.train
    assert [s.tokens for s in other.heldout] != [s.tokens for s in corpus.heldout]
    # the training stream is prefix-stable: a smaller request gives the first sentences of a larger one
    assert dc.generate(seed=7, n_train=10).train == corpus.train[:10]


def test_inventory_rules_hold():
    dc.check_inventory()
    assert len(dc.AMBIGUOUS_WORDS) >= 6
    for word in ("bank", "play", "bat", "spring", "match", "light"):
        assert word in dc.AMBIGUOUS_WORDS
        assert len(dc.sense_cues(word)) >= 2


def test_heldout_labels_agree_with_contexts(corpus):
    counts: dict[str, int] = {}
    train = set(corpus.train)
    for s in corpus.heldout:
        counts[s.label] = counts.get(s.label, 0) + 1
        assert s.tokens[s.index] == s.word and s.index > 0
        assert s.tokens.count(s.word) == 1
        cues = dc.sense_cues(s.word)
        present = {name for name, words in cues.items() if words & set(s.tokens)}
        assert present == {s.sense}, (s.text, present)
        assert s.tokens not in train
    assert set(counts) == {sense.label for sense in dc.SENSES}
    assert set(counts.values()) == {12}
    assert len({s.tokens for s in corpus.heldout}) == len(corpus.heldout)


def test_training_sentences_use_one_sense_per_ambiguous_word(corpus):
    n_ambiguous = 0
    for tokens in corpus.train:
        words = set(tokens)
        for word in words & set(dc.AMBIGUOUS_WORDS):
            n_ambiguous += 1
            present = [name for name, cues in dc.sense_cues(word).items() if cues & words]
            assert len(present) == 1, " ".join(tokens)
        assert tokens[0] not in dc.AMBIGUOUS_WORDS and tokens[0][0].isupper()
    assert 0.4 * len(corpus.train) < n_ambiguous < 0.6 * len(corpus.train)


def test_every_sense_is_used_in_training(corpus):
    seen = set()
    for tokens in corpus.train:
        words = set(tokens)
        for word in words & set(dc.AMBIGUOUS_WORDS):
            for name, cues in dc.sense_cues(word).items():
                if cues & words:
                    seen.add(f"{word}/{name}")
    assert seen == {s.label for s in dc.SENSES}


def test_default_size_is_a_few_cpu_minutes():
    c = dc.generate()
    assert 50_000 < c.n_train_tokens < 120_000  # the tiny model sees it a few times in two CPU minutes
    vocab = {w for s in c.train for w in s}
    assert 400 < len(vocab) < 1500


def test_write_and_read_back(tmp_path, corpus):
    paths = dc.write_corpus(corpus, tmp_path)
    lines = open(paths["train"], encoding="utf-8").read().splitlines()
    assert [tuple(line.split()) for line in lines] == list(corpus.train)
    assert dc.read_labelled(paths["heldout"]) == list(corpus.heldout)


def test_read_labelled_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("2\tbank\triver\t0\t1\tWe sat on the bank .\n")
    with pytest.raises(ValueError, match=r"bad\.tsv: line 1: expected the word 'bank' at token 2"):
        dc.read_labelled(path)
    path.write_text("4\tbank\triver\t0\t1\tWe sat on the bank .\n4\tbank\triver\t0\tWe sat on the bank .\n")
    with pytest.raises(ValueError, match=r"bad\.tsv: line 2: expected 6 tab-separated fields"):
        dc.read_labelled(path)
    path.write_text("4\tbank\triver\tx\t1\tWe sat on the bank .\n")
    with pytest.raises(ValueError, match=r"bad\.tsv: line 1: expected integer prefix and suffix"):
        dc.read_labelled(path)


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="fractions"):
        dc.generate(ambiguous_fraction=0.8, topic_fraction=0.5)
    with pytest.raises(KeyError, match="not an ambiguous word"):
        dc.sense_cues("table")


def test_prefixes_and_suffixes_combine_independently(corpus):
    # the words next to the ambiguous word depend on the sense, not on the rest of the sentence frame
    pairs = {(s.label, s.prefix, s.suffix) for s in corpus.heldout}
    for sense in dc.SENSES:
        mine = [(p, q) for label, p, q in pairs if label == sense.label]
        assert len({p for p, _ in mine}) >= 4 and len({q for _, q in mine}) >= 4
    for s in corpus.heldout:
        sense = next(x for x in dc.SENSES if x.label == s.label)
        prefix_words = [w for w in sense.prefixes[s.prefix].split() if not w.startswith("{")]
        suffix_words = [w for w in sense.suffixes[s.suffix].split() if not w.startswith("{")]
        before, after = [w.lower() for w in s.tokens[:s.index]], list(s.tokens[s.index + 1:])
        assert all(w in before for w in prefix_words) and all(w in after for w in suffix_words), s.text
