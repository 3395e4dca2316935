"""Input encodings: UTF-16/UTF-32 text and NUL bytes are refused with one line naming the file, the line and
what was found; a leading UTF-8 byte order mark is ignored (not glued to the first token); an options.json
that is not UTF-8, is UTF-16 or is nested 100,000 deep is one line naming the file."""
from __future__ import annotations

import json
import logging

import h5py
import numpy as np
import pytest

from elmo_fast.cli import main
from elmo_fast.data import CorpusError, Vocabulary, iter_shard_sentences, read_vocab_file
from elmo_fast.embedding import InputFileError, read_sentences
from elmo_fast.errors import UserError
from elmo_fast.options import OptionsError, load_options

from helpers import tiny_options, write_model

TEXT = "the bank closed .\nspring is here\n"

WIDE = [
    pytest.param("utf-16-le", b"", "UTF-16LE", id="UTF-16LE without BOM"),
    pytest.param("utf-16-be", b"", "UTF-16BE", id="UTF-16BE without BOM"),
    pytest.param("utf-16-le", b"\xff\xfe", "UTF-16LE", id="UTF-16LE with BOM"),
    pytest.param("utf-16-be", b"\xfe\xff", "UTF-16BE", id="UTF-16BE with BOM"),
    pytest.param("utf-32-le", b"\xff\xfe\x00\x00", "UTF-32LE", id="UTF-32LE with BOM"),
    pytest.param("utf-32-le", b"", "UTF-32LE", id="UTF-32LE without BOM"),
    pytest.param("utf-32-be", b"", "UTF-32BE", id="UTF-32BE without BOM"),
]


def _one_error(caplog) -> str:
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    return errors[0]


@pytest.mark.parametrize("codec, bom, name", WIDE)
def test_embed_refuses_wide_text(tmp_path, caplog, codec, bom, name):
    opt, w = write_model(tmp_path / "model")
    (tmp_path / "in.txt").write_bytes(bom + TEXT.encode(codec))
    with caplog.at_level(logging.ERROR):
        rc = main(["embed", str(tmp_path / "in.txt"), str(tmp_path / "out.hdf5"), "--all", "--quiet",
                   "--options-file", str(opt), "--weight-file", str(w)])
    assert rc == 2
    message = _one_error(caplog)
    assert f"in.txt:1: the file is {name} text" in message and "expected UTF-8" in message, message
    assert not (tmp_path / "out.hdf5").exists()


@pytest.mark.parametrize("codec, bom, name", WIDE)
def test_corpus_vocab_and_heldout_readers_refuse_wide_text(tmp_path, codec, bom, name):
    from elmo_fast.data import check_text_file
    path = tmp_path / "corpus.txt"
    path.write_bytes(bom + TEXT.encode(codec))
    with pytest.raises(CorpusError, match=f"corpus.txt:1: the file is {name} text"):
        list(iter_shard_sentences(str(path)))
    with pytest.raises(CorpusError, match=f"corpus.txt:1: the file is {name} text"):  # even when skipping lines
        list(iter_shard_sentences(str(path), skip_bad_lines=True))
    with pytest.raises(UserError, match=f"corpus.txt:1: the file is {name} text"):
        read_vocab_file(path)
    with pytest.raises(UserError, match=f"corpus.txt:1: the file is {name} text"):
        check_text_file(str(path), "--heldout")
    with pytest.raises(InputFileError, match=f"corpus.txt:1: the file is {name} text"):
        read_sentences(path)


def test_nul_bytes_are_refused_with_their_line(tmp_path, caplog):
    opt, w = write_model(tmp_path / "model")
    (tmp_path / "in.txt").write_bytes(b"a b\nc d\ne\x00f\n")
    with caplog.at_level(logging.ERROR):
        rc = main(["embed", str(tmp_path / "in.txt"), str(tmp_path / "out.hdf5"), "--top", "--quiet",
                   "--options-file", str(opt), "--weight-file", str(w)])
    assert rc == 2
    assert "in.txt: line 3 contains a NUL byte" in _one_error(caplog)
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"a b\nc\x00d\n")
    with pytest.raises(CorpusError, match=r"corpus.txt:2: contains a NUL byte"):
        list(iter_shard_sentences(str(corpus)))
    assert list(iter_shard_sentences(str(corpus), skip_bad_lines=True)) == [["a", "b"]]
    with pytest.raises(UserError, match=r"corpus.txt:2: contains a NUL byte"):
        read_vocab_file(corpus)


def test_utf8_bom_is_ignored_not_glued_to_the_first_token(tmp_path, caplog):
    opt, w = write_model(tmp_path / "model")
    (tmp_path / "plain.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + TEXT.encode("utf-8"))
    for name in ("plain", "bom"):
        with caplog.at_level(logging.INFO):
            assert main(["embed", str(tmp_path / f"{name}.txt"), str(tmp_path / f"{name}.hdf5"), "--all",
                         "--quiet", "--options-file", str(opt), "--weight-file", str(w)]) == 0
    assert any("byte order mark" in r.getMessage() and "bom.txt" in r.getMessage() for r in caplog.records)
    with h5py.File(tmp_path / "plain.hdf5", "r") as a, h5py.File(tmp_path / "bom.hdf5", "r") as b:
        np.testing.assert_array_equal(a["0"][...], b["0"][...])
        assert json.loads(b["sentence_to_index"][0]) == json.loads(a["sentence_to_index"][0])
    assert read_sentences(tmp_path / "bom.txt")[0] == "the bank closed ."
    corpus = tmp_path / "bom.txt"
    assert next(iter_shard_sentences(str(corpus)))[0] == "the"
    vocab = tmp_path / "vocab.txt"
    vocab.write_bytes(b"\xef\xbb\xbf<S>\n</S>\n<UNK>\nthe\n")
    v = Vocabulary.from_file(vocab)
    assert v.bos_id == 0 and v.has_specials


def test_evaluate_names_the_heldout_file_before_loading_a_model(tmp_path, caplog):
    held = tmp_path / "held.txt"
    held.write_bytes(TEXT.encode("utf-16-le"))
    with caplog.at_level(logging.ERROR):
        rc = main(["evaluate", str(tmp_path / "no-such-model"), "--heldout", str(held), "--quiet"])
    assert rc == 2
    assert "held.txt:1: the file is UTF-16LE text" in _one_error(caplog)
    held.write_bytes(b"ok line\nbad \xff line\n")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        rc = main(["evaluate", str(tmp_path / "no-such-model"), "--heldout", str(held), "--quiet"])
    message = _one_error(caplog)
    assert rc == 2 and "held.txt:2: not valid UTF-8" in message
    assert "--skip-bad-lines" not in message  # evaluate has no such flag


def _options_bytes() -> bytes:
    return json.dumps(tiny_options(), indent=1).encode("utf-8")


@pytest.mark.parametrize("content, fragment", [
    pytest.param(lambda b: b[:30] + b"\xff" + b[31:], "options.json:", id="byte 0xff"),
    pytest.param(lambda b: b.decode().encode("utf-16"), "the file is UTF-16LE text", id="UTF-16 with BOM"),
    pytest.param(lambda b: b.decode().encode("utf-16-le"), "the file is UTF-16LE text", id="UTF-16LE"),
    pytest.param(lambda b: b"[" * 100_000 + b"]" * 100_000, "nested more than", id="nested 100,000 deep"),
    pytest.param(lambda b: b'{"lstm": ' * 100_000, "nested more than", id="objects nested 100,000 deep"),
    pytest.param(lambda b: b"{\n\"lstm\": }", "not valid JSON (line 2", id="invalid JSON"),
])
def test_bad_options_files_name_the_file(tmp_path, caplog, content, fragment):
    path = tmp_path / "options.json"
    path.write_bytes(content(_options_bytes()))
    with pytest.raises(OptionsError) as e:
        load_options(path)
    assert str(path) in str(e.value) and fragment in str(e.value) and "\n" not in str(e.value), str(e.value)
    _, w = write_model(tmp_path / "model")
    (tmp_path / "in.txt").write_text(TEXT)
    with caplog.at_level(logging.ERROR):
        rc = main(["embed", str(tmp_path / "in.txt"), str(tmp_path / "out.hdf5"), "--all", "--quiet",
                   "--options-file", str(path), "--weight-file", str(w)])
    assert rc == 2
    message = _one_error(caplog)
    assert str(path) in message and fragment in message, message


def test_options_byte_0xff_names_line_and_column(tmp_path):
    path = tmp_path / "options.json"
    path.write_bytes(b'{\n  "lstm": {"dim": 6\xff4}\n}')
    with pytest.raises(OptionsError, match=r"options.json:2: not UTF-8 \(byte 0xff at line 2, column 20\)"):
        load_options(path)


def test_options_with_a_utf8_bom_load(tmp_path):
    path = tmp_path / "options.json"
    path.write_bytes(b"\xef\xbb\xbf" + _options_bytes())
    assert load_options(path).lstm.dim == tiny_options()["lstm"]["dim"]


def test_wide_encoding_detection():
    from elmo_fast.textfile import wide_encoding
    assert wide_encoding(b"plain ascii text\n") is None
    assert wide_encoding("ünïcödé ☃\n".encode("utf-8")) is None
    assert wide_encoding(b"") is None and wide_encoding(b"a") is None
    assert wide_encoding("abc\n".encode("utf-16-le"))[0] == "UTF-16LE"
    assert wide_encoding("abc\n".encode("utf-16-be"))[0] == "UTF-16BE"
    assert wide_encoding("abc\n".encode("utf-32-le"))[0] == "UTF-32LE"
    assert wide_encoding("abc\n".encode("utf-32-be"))[0] == "UTF-32BE"
    assert wide_encoding("abc".encode("utf-16"))[1].startswith("byte order mark")
