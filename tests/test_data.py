"""Training data (elmo_fast.data): vocabulary, streamed shards, bilm-tf stateful batching, bad input."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from elmo_fast.chars import CharacterMapper
from elmo_fast.data import (BOS_ID, EOS_ID, UNK_ID, CorpusError, SentenceStream, ShardSpec, StreamBatcher,
                            TrainingBatches, Vocabulary, expand_shards, heldout_batches)

MAPPER = CharacterMapper()


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_vocab_build_order_min_count_max_vocab(tmp_path):
    a = write(tmp_path / "a.txt", "the cat sat\nthe dog\n\n<S> the cat </S>\n")
    b = write(tmp_path / "b.txt", "a dog , the\n")
    vocab = Vocabulary.build([str(a), str(b)])
    # counts: the 4, cat 2, dog 2, sat 1, a 1, ',' 1 ; ties by string; literal markers not counted
    assert vocab.tokens == ["<S>", "</S>", "<UNK>", "the", "cat", "dog", ",", "a", "sat"]
    assert Vocabulary.build([str(a), str(b)], min_count=2).tokens == ["<S>", "</S>", "<UNK>", "the", "cat", "dog"]
    assert Vocabulary.build([str(a), str(b)], max_vocab=5).tokens == ["<S>", "</S>", "<UNK>", "the", "cat"]
    path = tmp_path / "vocab.txt"
    vocab.save(path)
    assert path.read_text(encoding="utf-8").splitlines() == vocab.tokens
    again = Vocabulary.from_file(path)
    assert again.tokens == vocab.tokens and again.digest() == vocab.digest()
    assert Vocabulary.build([str(a)]).digest() != vocab.digest()
    assert vocab.ids(["cat", "zebra", "<S>"]).tolist() == [4, UNK_ID, BOS_ID]


def test_vocab_char_table_is_inference_char_ids(tmp_path):
    vocab = Vocabulary(["<S>", "</S>", "<UNK>", "héllo", "x" * 60])
    for i, token in enumerate(vocab.tokens):
        assert vocab.char_table[i].tolist() == MAPPER.token_to_ids(token)
    # <S>/</S> rows are the marker arrays the embedder inserts (AllenNLP semantics)
    assert vocab.char_table[0][:3].tolist() == [259, 257, 260]
    assert vocab.char_table[1][:3].tolist() == [259, 258, 260]


def test_vocab_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        Vocabulary.from_file(tmp_path / "nope.txt")
    bad = write(tmp_path / "bad.txt", "the\n<S>\n</S>\n")
    vocab = Vocabulary.from_file(bad)  # bilm-tf reads it (no <UNK>); training refuses it
    assert (vocab.bos_id, vocab.eos_id, vocab.unk_id) == (1, 2, None)
    with pytest.raises(ValueError, match="bad.txt: no line <UNK>"):
        vocab.require_specials()
    with pytest.raises(ValueError, match="no <UNK> line"):
        vocab.ids(["zebra"])
    with pytest.raises(ValueError, match="empty.txt: empty vocabulary"):
        Vocabulary.from_file(write(tmp_path / "empty.txt", ""))
    with pytest.raises(ValueError, match="is a directory"):
        Vocabulary.from_file(tmp_path)
    undecodable = write(tmp_path / "u.txt", b"<S>\n</S>\n<UNK>\n\xff\xfe\n")
    with pytest.raises(ValueError, match=r"u.txt:4"):
        Vocabulary.from_file(undecodable)


def _stream(paths, vocab, reverse=False, shuffle=False, loop=True, key=(0,)):
    return SentenceStream([ShardSpec(str(p)) for p in paths], vocab, key, reverse=reverse, shuffle=shuffle, loop=loop)


def _decode(vocab, ids):
    return [vocab.tokens[i] for i in ids]


def test_bilm_tf_batching_forward_and_reverse(tmp_path):
    """Sentences continue across batches in the same row; </S> is never an input (<S> in reverse)."""
    corpus = write(tmp_path / "c.txt", "a b c\nd e\n")
    vocab = Vocabulary(["<S>", "</S>", "<UNK>", "a", "b", "c", "d", "e"])
    fw = StreamBatcher(_stream([corpus], vocab), rows=1, steps=3)
    got = [fw.next_batch() for _ in range(4)]
    inputs = [_decode(vocab, g[0][0]) for g in got]
    targets = [_decode(vocab, g[2][0]) for g in got]
    assert inputs == [["<S>", "a", "b"], ["c", "<S>", "d"], ["e", "<S>", "a"], ["b", "c", "<S>"]]
    assert targets == [["a", "b", "c"], ["</S>", "d", "e"], ["</S>", "a", "b"], ["c", "</S>", "d"]]
    bw = StreamBatcher(_stream([corpus], vocab, reverse=True), rows=1, steps=3)
    got = [bw.next_batch() for _ in range(2)]
    assert [_decode(vocab, g[0][0]) for g in got] == [["</S>", "c", "b"], ["a", "</S>", "e"]]
    assert [_decode(vocab, g[2][0]) for g in got] == [["c", "b", "a"], ["<S>", "e", "d"]]
    # char ids of the inputs are the inference ids of the words (markers for </S>)
    chars = got[1][1][0]
    assert chars[0].tolist() == MAPPER.token_to_ids("a") and chars[1].tolist() == MAPPER.token_to_ids("</S>")


def test_rows_take_successive_sentences(tmp_path):
    corpus = write(tmp_path / "c.txt", "a\nb b\nc\n")
    vocab = Vocabulary(["<S>", "</S>", "<UNK>", "a", "b", "c"])
    batcher = StreamBatcher(_stream([corpus], vocab), rows=2, steps=2)
    inputs, _, targets = batcher.next_batch()
    # row 0 fills from 'a' then continues into 'c' ; row 1 takes 'b b'
    assert _decode(vocab, inputs[0]) == ["<S>", "a"] and _decode(vocab, targets[0]) == ["a", "</S>"]
    assert _decode(vocab, inputs[1]) == ["<S>", "b"] and _decode(vocab, targets[1]) == ["b", "b"]


def test_oov_words_keep_their_characters(tmp_path):
    corpus = write(tmp_path / "c.txt", "a zebra <UNK>\n")
    vocab = Vocabulary(["<S>", "</S>", "<UNK>", "a"])
    data = TrainingBatches([str(corpus)], vocab, rows=1, steps=4, seed=0)
    batch = data.next_batch()
    assert batch.fw_targets[0].tolist() == [3, UNK_ID, UNK_ID, EOS_ID]
    chars = batch.char_ids(0)[0]
    assert chars[2].tolist() == MAPPER.token_to_ids("zebra")
    assert chars[3].tolist() == MAPPER.token_to_ids("<UNK>")
    # distinct spellings only: <S>, a, zebra, <UNK> (+ </S> from the reverse stream)
    assert batch.token_chars.shape[0] == 5


def test_shuffled_stream_visits_every_sentence_once_per_pass(tmp_path):
    files = [write(tmp_path / f"s{i}.txt", "".join(f"w{i}_{j}\n" for j in range(7))) for i in range(3)]
    vocab = Vocabulary.build([str(f) for f in files])
    stream = _stream(files, vocab, shuffle=True, key=(5, 0, 0))
    first = [stream.next_words()[0] for _ in range(21)]
    second = [stream.next_words()[0] for _ in range(21)]
    assert sorted(first) == sorted(second) == sorted(f"w{i}_{j}" for i in range(3) for j in range(7))
    assert first != second  # reshuffled every pass
    # one shard at a time: the first 7 sentences come from one file
    assert len({w.split("_")[0] for w in first[:7]}) == 1
    assert first != sorted(first)


def test_forward_and_reverse_streams_are_independent(tmp_path):
    corpus = write(tmp_path / "c.txt", "".join(f"s{j} x\n" for j in range(40)))
    vocab = Vocabulary.build([str(corpus)])
    data = TrainingBatches([str(corpus)], vocab, rows=1, steps=3, seed=1)
    fw_words, bw_words = [], []
    for _ in range(10):
        batch = data.next_batch()
        fw_words += [vocab.tokens[t] for t in batch.fw_targets[0].tolist() if vocab.tokens[t].startswith("s")]
        bw_words += [vocab.tokens[t] for t in batch.bw_targets[0].tolist() if vocab.tokens[t].startswith("s")]
    assert len(fw_words) == len(bw_words) == 10
    assert fw_words != bw_words


def test_data_state_round_trip_continues_exactly(tmp_path):
    files = [write(tmp_path / f"s{i}.txt", "".join(f"a{i} b{j} c {'d ' * (j % 5)}\n" for j in range(13)))
             for i in range(3)]
    paths = [str(f) for f in files]
    vocab = Vocabulary.build(paths)
    ref = TrainingBatches(paths, vocab, rows=4, steps=5, seed=3)
    for _ in range(7):
        ref.next_batch()
    state = ref.state_dict()
    expected = [ref.next_batch() for _ in range(9)]
    resumed = TrainingBatches(paths, vocab, rows=4, steps=5, seed=3)
    resumed.load_state_dict(state)
    for want in expected:
        got = resumed.next_batch()
        for d in (0, 1):
            assert np.array_equal(got.char_ids(d).numpy(), want.char_ids(d).numpy())
        assert np.array_equal(got.fw_targets.numpy(), want.fw_targets.numpy())
        assert np.array_equal(got.bw_targets.numpy(), want.bw_targets.numpy())
    with pytest.raises(ValueError, match="rows"):
        TrainingBatches(paths, vocab, rows=2, steps=5, seed=3).load_state_dict(state)


@pytest.mark.parametrize("n_files", [4, 1])
def test_parts_split_like_separate_processes(tmp_path, n_files):
    """A process feeding parts [0, 1] yields the rows that two processes feeding [0] and [1] yield."""
    files = [str(write(tmp_path / f"s{i}.txt", "".join(f"f{i} l{j} x\n" for j in range(6)))) for i in range(n_files)]
    vocab = Vocabulary.build(files)
    both = TrainingBatches(files, vocab, rows=4, steps=3, seed=2, parts=2)
    p0 = TrainingBatches(files, vocab, rows=2, steps=3, seed=2, parts=2, part_ids=[0])
    p1 = TrainingBatches(files, vocab, rows=2, steps=3, seed=2, parts=2, part_ids=[1])
    seen = [set(), set()]
    for _ in range(5):
        b, b0, b1 = both.next_batch(), p0.next_batch(), p1.next_batch()
        for d in (0, 1):
            assert np.array_equal(b.char_ids(d)[:2].numpy(), b0.char_ids(d).numpy())
            assert np.array_equal(b.char_ids(d)[2:].numpy(), b1.char_ids(d).numpy())
        for k, part in enumerate((b0, b1)):
            seen[k] |= {vocab.tokens[t] for t in part.fw_targets.flatten().tolist() if vocab.tokens[t][0] in "l"}
    assert seen[0] and seen[1]
    # disjoint parts: line-split (1 file) gives even/odd lines, shard-split gives different files
    assert not (seen[0] & seen[1]) or n_files == 4


def test_heldout_batches_read_in_order_and_drop_incomplete(tmp_path):
    held = write(tmp_path / "h.txt", "a b\nc\nd e f\n")
    vocab = Vocabulary(["<S>", "</S>", "<UNK>", "a", "b", "c", "d", "e", "f"])
    batches = list(heldout_batches(str(held), vocab, rows=1, steps=1))
    fw = [vocab.tokens[int(b.fw_targets[0, 0])] for b in batches]
    assert fw == ["a", "b", "</S>", "c", "</S>", "d", "e", "f", "</S>"]
    bw = [vocab.tokens[int(b.bw_targets[0, 0])] for b in batches]
    assert bw == ["b", "a", "<S>", "c", "<S>", "f", "e", "d", "<S>"]
    # 2 rows x 2 steps: the batch during which a row runs dry is dropped
    assert len(list(heldout_batches(str(held), vocab, rows=2, steps=2))) == 1
    assert list(heldout_batches(str(held), vocab, rows=8, steps=1)) == []


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_files_error_names_the_pattern(tmp_path):
    with pytest.raises(CorpusError, match="no files match .*nothing"):
        expand_shards(str(tmp_path / "nothing*.txt"))
    with pytest.raises(CorpusError, match="directory"):
        expand_shards(str(tmp_path))


def test_empty_corpus_is_an_error_not_a_hang(tmp_path):
    a = write(tmp_path / "a.txt", "")
    b = write(tmp_path / "b.txt", "\n  \n\n")
    with pytest.raises(CorpusError, match="empty"):
        Vocabulary.build([str(a), str(b)])
    vocab = Vocabulary(["<S>", "</S>", "<UNK>", "x"])
    data = TrainingBatches([str(a), str(b)], vocab, rows=2, steps=3, seed=0)
    with pytest.raises(CorpusError, match="corpus is empty.*a.txt"):
        data.next_batch()


def test_empty_shard_is_reported_by_name(tmp_path, caplog):
    a = write(tmp_path / "a.txt", "x y\n")
    empty = write(tmp_path / "empty.txt", "")
    vocab = Vocabulary.build([str(a)])
    data = TrainingBatches([str(a), str(empty)], vocab, rows=1, steps=4, seed=0)
    with caplog.at_level(logging.WARNING, logger="elmo_fast.data"):
        for _ in range(3):
            data.next_batch()
    assert any("empty.txt" in r.getMessage() and "empty shard" in r.getMessage() for r in caplog.records)


def test_undecodable_line_names_file_and_line(tmp_path, caplog):
    bad = write(tmp_path / "bad.txt", b"good line\nalso fine\nbroken \xff\xfe here\nok\n")
    with pytest.raises(CorpusError, match=r"bad.txt:3: not valid UTF-8"):
        Vocabulary.build([str(bad)])
    with caplog.at_level(logging.WARNING, logger="elmo_fast.data"):
        vocab = Vocabulary.build([str(bad)], skip_bad_lines=True)
    assert "broken" not in vocab.index and "ok" in vocab.index
    assert any("bad.txt:3" in r.getMessage() for r in caplog.records)
    data = TrainingBatches([str(bad)], vocab, rows=1, steps=3, seed=0)
    with pytest.raises(CorpusError, match=r"bad.txt:3"):
        for _ in range(5):
            data.next_batch()
