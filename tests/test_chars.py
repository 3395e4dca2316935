import torch

from elmo_fast.chars import BOS_IDS, EOS_IDS, CharacterMapper, batch_to_ids

PAD = 261  # padding char (260) + 1


def ids(token):
    return CharacterMapper().token_to_ids(token)


def test_ascii_token_matches_spec_example():
    assert ids("a") == [259, 98, 260] + [PAD] * 47


def test_sentence_markers():
    assert list(BOS_IDS) == [259, 257, 260] + [PAD] * 47
    assert list(EOS_IDS) == [259, 258, 260] + [PAD] * 47
    assert ids("<S>") == list(BOS_IDS) and ids("</S>") == list(EOS_IDS)
    # only the exact literal strings are markers
    assert ids("<s>")[:5] == [259, ord("<") + 1, ord("s") + 1, ord(">") + 1, 260]


def test_byte_level_cut_at_48_bytes_may_split_a_character():
    token = "x" * 47 + "é"  # é is two bytes: C3 A9; only C3 fits
    out = ids(token)
    assert len(out) == 50
    assert out[1:48] == [ord("x") + 1] * 47
    assert out[48] == 0xC3 + 1 and out[49] == 260
    long = "abc" * 40
    out = ids(long)
    assert out[1:49] == [b + 1 for b in long.encode()[:48]] and out[49] == 260


def test_non_ascii_and_lone_surrogate():
    out = ids("naïve")
    enc = "naïve".encode("utf-8")
    assert out[1:1 + len(enc)] == [b + 1 for b in enc] and out[1 + len(enc)] == 260
    # a lone surrogate cannot be encoded and is dropped
    assert ids("a\ud800b") == ids("ab")


def test_tokens_to_add():
    m = CharacterMapper({"@@UNKNOWN@@": 1})
    assert m.token_to_ids("@@UNKNOWN@@") == [259, 2, 260] + [PAD] * 47


def test_batch_to_ids_pads_with_zero_rows():
    out = batch_to_ids([["a", "bb"], [], ["c"]])
    assert out.shape == (3, 2, 50) and out.dtype == torch.long
    assert out[0, 1].tolist() == ids("bb")
    assert (out[1] == 0).all() and (out[2, 1] == 0).all()
    assert out[2, 0].tolist() == ids("c")
    assert batch_to_ids([[]]).shape == (1, 0, 50)


def test_batch_to_ids_rejects_untokenized_strings():
    try:
        batch_to_ids(["not tokenized"])
    except TypeError as e:
        assert "list of tokens" in str(e)
    else:
        raise AssertionError("expected TypeError")
