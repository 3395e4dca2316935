"""Vocabulary files have one home (:mod:`elmo_fast.vocab`): the public names, the training data module and a
write/read round trip all go through it."""
import elmo_fast
from elmo_fast import data, vocab


def test_vocab_files_have_one_reader_and_one_writer(tmp_path):
    assert elmo_fast.read_vocab is vocab.read_vocab_file and data.read_vocab_file is vocab.read_vocab_file
    assert elmo_fast.write_vocab is vocab.write_vocab
    path = tmp_path / "vocab.txt"
    vocab.write_vocab(path, ["<S>", "</S>", "<UNK>", " the ", vocab.MAXTERMID, "cat"])
    assert path.read_text(encoding="utf-8").splitlines()[3] == " the "
    assert elmo_fast.read_vocab(path) == ["<S>", "</S>", "<UNK>", "the", "cat"]
