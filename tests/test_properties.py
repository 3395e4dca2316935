"""Property-based tests (hypothesis) of the readers and validators: whatever the bytes, a reader returns what
the format says or raises the project's one-line user error naming the file, never another exception."""
from __future__ import annotations

import json
import os
import tempfile

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from elmo_fast import settings
from elmo_fast.chars import BOW_CHAR, EOW_CHAR, MAX_CHARS_PER_TOKEN, PAD_CHAR, batch_to_ids, byte_char_ids
from elmo_fast.data import CorpusError, iter_shard_sentences, read_vocab_file, word_char_ids
from elmo_fast.embedding import InputFileError, read_sentences
from elmo_fast.errors import UserError
from elmo_fast.options import OptionsError, load_options, options_from_dict, PRESETS
from elmo_fast.textfile import read_json_file, wide_encoding

FAST = hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _file(data: bytes, name: str = "f.txt") -> tuple[tempfile.TemporaryDirectory, str]:
    tmp = tempfile.TemporaryDirectory()
    path = os.path.join(tmp.name, name)
    with open(path, "wb") as f:
        f.write(data)
    return tmp, path


# ---------------------------------------------------------------------------------------------- text lines
# tokens: printable text without whitespace, NUL or line breaks
TOKEN = st.text(st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1, max_size=12)
LINE = st.lists(TOKEN, min_size=1, max_size=6).map(" ".join)


@FAST
@given(st.lists(LINE, min_size=1, max_size=20), st.sampled_from(["\n", "\r\n", "\r"]), st.booleans())
def test_valid_text_reads_back_line_by_line(lines, newline, bom):
    data = (b"\xef\xbb\xbf" if bom else b"") + (newline.join(lines) + newline).encode("utf-8")
    tmp, path = _file(data)
    with tmp:
        assert read_sentences(path) == [line.strip() for line in lines]  # embed: universal newlines
        if newline != "\r":  # the corpus reader ends lines at \n only (a lone \r is whitespace in a line)
            assert list(iter_shard_sentences(path)) == [line.split() for line in lines]


@FAST
@given(st.binary(max_size=300))
def test_any_bytes_give_lines_or_one_line_errors_naming_the_file(data):
    tmp, path = _file(data)
    with tmp:
        try:
            lines = read_sentences(path)
            assert all(line and line == line.strip() and "\x00" not in line for line in lines)
        except InputFileError as e:
            assert str(e).startswith(path) and "\n" not in str(e)
        try:
            for tokens in iter_shard_sentences(path):
                assert tokens and all(t and "\x00" not in t for t in tokens)
        except CorpusError as e:
            assert str(e).startswith(path) and "\n" not in str(e)


@FAST
@given(st.lists(LINE, min_size=1, max_size=10), st.sampled_from(["utf-16-le", "utf-16-be", "utf-32-le",
                                                                  "utf-32-be", "utf-16", "utf-32"]))
def test_wide_encodings_of_ascii_text_are_recognised(lines, codec):
    ascii_lines = [line.encode("ascii", "ignore").decode() or "x" for line in lines]
    data = ("\n".join(ascii_lines) + "\n").encode(codec)
    assert wide_encoding(data[:4096]) is not None
    tmp, path = _file(data)
    with tmp:
        try:
            read_sentences(path)
            raise AssertionError("a wide encoding was read as UTF-8")
        except InputFileError as e:
            assert "the file is UTF-" in str(e)


@FAST
@given(st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=200))
def test_utf8_text_is_never_taken_for_a_wide_encoding(text):
    assert wide_encoding(text.encode("utf-8")) is None


# ---------------------------------------------------------------------------------------------- options
JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) |
                    st.text(max_size=8),
                    lambda children: st.lists(children, max_size=4) |
                    st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=12)
FIELDS = [("lstm", k) for k in PRESETS["tiny"]["lstm"]] + [("char_cnn", k) for k in PRESETS["tiny"]["char_cnn"]]


@FAST
@given(st.sampled_from(FIELDS), JSON)
def test_options_with_any_field_value_load_or_name_the_field(field, value):
    d = json.loads(json.dumps(PRESETS["tiny"]))
    d[field[0]][field[1]] = value
    try:
        options = options_from_dict(d, source="opts.json")
        assert options.output_dim > 0
    except OptionsError as e:
        assert str(e).startswith("opts.json") and "\n" not in str(e)


@FAST
@given(st.binary(max_size=400) | JSON.map(lambda v: json.dumps(v).encode()))
def test_any_options_file_loads_or_gives_one_line_naming_it(data):
    tmp, path = _file(data, "options.json")
    with tmp:
        try:
            load_options(path)
        except OptionsError as e:
            assert str(e).startswith(path) and "\n" not in str(e), str(e)


@FAST
@given(st.integers(1, 3000), st.sampled_from(["[", "{\"a\": "]))
def test_deep_json_is_refused_or_parsed_never_a_recursion_error(depth, opener):
    closer = "]" if opener == "[" else "}"
    tmp, path = _file((opener * depth + "0" + closer * depth).encode(), "c.json")
    with tmp:
        try:
            read_json_file(path)
            assert depth <= 500
        except UserError as e:
            assert depth > 500 and path in str(e)


# ---------------------------------------------------------------------------------------------- vocabularies
VOCAB_TOKEN = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="\x85"),
                      min_size=1, max_size=10).map(str.strip).filter(bool)


@FAST
@given(st.lists(VOCAB_TOKEN, min_size=1, max_size=30))
def test_vocabulary_files_round_trip(tokens):
    tmp, path = _file(("\n".join(tokens) + "\n").encode("utf-8"), "vocab.txt")
    with tmp:
        assert read_vocab_file(path) == [t for t in tokens if t != "!!!MAXTERMID"]


@FAST
@given(st.binary(max_size=200))
def test_any_vocabulary_bytes_read_or_name_the_file(data):
    tmp, path = _file(data, "vocab.txt")
    with tmp:
        try:
            tokens = read_vocab_file(path)
            assert tokens and all("\x00" not in t for t in tokens)
        except UserError as e:
            assert path in str(e) and "\n" not in str(e)


# ---------------------------------------------------------------------------------------------- char ids
@FAST
@given(st.text(max_size=80))
def test_char_ids_of_any_token(token):
    ids = byte_char_ids(token)
    encoded = token.encode("utf-8", "ignore")[:MAX_CHARS_PER_TOKEN - 2]
    assert len(ids) == MAX_CHARS_PER_TOKEN and all(1 <= i <= PAD_CHAR + 1 for i in ids)
    assert ids[0] == BOW_CHAR + 1 and ids[len(encoded) + 1] == EOW_CHAR + 1
    assert ids[1:len(encoded) + 1] == [b + 1 for b in encoded]
    assert all(i == PAD_CHAR + 1 for i in ids[len(encoded) + 2:])
    if token not in ("<S>", "</S>"):
        assert word_char_ids(token) == ids


@FAST
@given(st.lists(st.lists(st.text(min_size=1, max_size=6), max_size=5), min_size=1, max_size=5))
def test_batch_to_ids_shape_and_padding(sentences):
    ids = batch_to_ids(sentences)
    longest = max(len(s) for s in sentences)
    assert tuple(ids.shape) == (len(sentences), longest, MAX_CHARS_PER_TOKEN)
    for row, s in enumerate(sentences):
        assert bool((ids[row, len(s):] == 0).all())
        assert bool((ids[row, :len(s)] > 0).all())


# ---------------------------------------------------------------------------------------------- settings
@FAST
@given(st.sampled_from(sorted(settings.SETTINGS)), st.text(max_size=12))
def test_every_setting_parses_or_names_the_variable(name, value):
    old = os.environ.get(name)
    try:
        if "\x00" in value:
            return  # the environment cannot hold NUL
        os.environ[name] = value
        try:
            settings.get(name)
        except settings.SettingsError as e:
            assert f"environment variable {name}:" in str(e) and "\n" not in str(e)
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@FAST
@given(st.integers(-5, 200), st.integers(1, 16))
def test_thread_counts_are_bounded(n, cpus):
    try:
        assert settings.check_thread_count(n, "--threads", cpus=cpus) == n
        assert 1 <= n <= 4 * cpus
    except settings.SettingsError as e:
        assert (n < 1 or n > 4 * cpus) and str(e).startswith("--threads:")
