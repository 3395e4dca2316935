"""Token strings -> character ids, exactly as AllenNLP's ``ELMoCharacterMapper`` / ``batch_to_ids``.

Symbol space (docs/numerics.md#character-ids): 0-255 UTF-8 bytes, 256 begin-of-sentence char, 257 end-of-sentence char,
258 begin-of-word, 259 end-of-word, 260 padding char. Every id handed to the model is shifted by +1 so
that 0 can mean "no token here" (batch padding).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

MAX_CHARS_PER_TOKEN = 50
#: raw symbols (before the +1 shift)
BOS_CHAR = 256
EOS_CHAR = 257
BOW_CHAR = 258
EOW_CHAR = 259
PAD_CHAR = 260
#: number of stored character-embedding rows (symbols 0..260)
NUM_SYMBOLS = 261

BOS_TOKEN = "<S>"
EOS_TOKEN = "</S>"


def _marker_ids(symbol: int) -> list[int]:
    ids = [PAD_CHAR] * MAX_CHARS_PER_TOKEN
    ids[0], ids[1], ids[2] = BOW_CHAR, symbol, EOW_CHAR
    return [i + 1 for i in ids]


#: the (+1 shifted) 50 ids of the sentence markers the model inserts around every sentence
BOS_IDS: tuple[int, ...] = tuple(_marker_ids(BOS_CHAR))
EOS_IDS: tuple[int, ...] = tuple(_marker_ids(EOS_CHAR))


class CharacterMapper:
    """Maps one token to its 50 (+1 shifted) character ids.

    ``tokens_to_add`` maps extra literal tokens to a single symbol ``c`` (< 261) that replaces the bytes,
    as AllenNLP's mapper does (e.g. ``{"@@UNKNOWN@@": 1}``).
    """

    def __init__(self, tokens_to_add: Mapping[str, int] | None = None) -> None:
        self.tokens_to_add = dict(tokens_to_add or {})
        for token, symbol in self.tokens_to_add.items():
            if not 0 <= symbol < NUM_SYMBOLS:
                raise ValueError(f"tokens_to_add[{token!r}] = {symbol}: expected a symbol in [0, {NUM_SYMBOLS})")

    def token_to_ids(self, token: str) -> list[int]:
        """Return the 50 character ids of ``token`` (values 1..261)."""
        if token in self.tokens_to_add:
            return _marker_ids(self.tokens_to_add[token])
        if token == BOS_TOKEN:
            return list(BOS_IDS)
        if token == EOS_TOKEN:
            return list(EOS_IDS)
        return byte_char_ids(token)


def byte_char_ids(token: str, max_chars: int = MAX_CHARS_PER_TOKEN) -> list[int]:
    """``<bow>``, the token's UTF-8 bytes cut to ``max_chars - 2``, ``<eow>``, padding; all +1 (0 = no token).

    ``errors="ignore"`` drops only unencodable code points (lone surrogates); the cut is byte-level and may
    split a multi-byte character, as in AllenNLP and bilm-tf.
    """
    encoded = token.encode("utf-8", "ignore")[: max_chars - 2]
    ids = [PAD_CHAR + 1] * max_chars
    ids[0] = BOW_CHAR + 1
    for k, byte in enumerate(encoded, start=1):
        ids[k] = byte + 1
    ids[len(encoded) + 1] = EOW_CHAR + 1
    return ids


_DEFAULT_MAPPER = CharacterMapper()


def as_token_lists(sentences: Any, name: str = "sentences") -> list[list[str]]:
    """Validate a batch of tokenized sentences and return it as a list of lists of str.

    Accepted: any iterable (list, tuple, generator, numpy array of str) of sentences, each an iterable of
    ``str`` tokens (``numpy.str_`` is a ``str``). Rejected with a TypeError saying what was expected: a ``str``
    or ``bytes`` batch or sentence (text must be tokenized first, e.g. ``line.split()``), sets and dicts
    (unordered), and non-``str`` tokens (numbers, bytes, None). A generator is consumed.
    """
    if isinstance(sentences, (str, bytes)):
        raise TypeError(f"{name}: expected a list of tokenized sentences (lists of str tokens), found a "
                        f"{type(sentences).__name__}; tokenize first, e.g. [line.split() for line in lines]")
    if isinstance(sentences, (set, frozenset, dict, torch.Tensor)):
        raise TypeError(f"{name}: expected an ordered sequence of sentences (lists of str tokens), found "
                        f"{type(sentences).__name__}")
    try:
        rows = list(sentences)
    except TypeError:
        raise TypeError(f"{name}: expected a sequence of sentences (lists of str tokens), found "
                        f"{type(sentences).__name__}") from None
    out: list[list[str]] = []
    for i, sentence in enumerate(rows):
        if isinstance(sentence, (str, bytes)):
            raise TypeError(f"{name}[{i}] is a {type(sentence).__name__}; expected a list of tokens "
                            f"(use str.split())")
        if isinstance(sentence, (set, frozenset, dict)):
            raise TypeError(f"{name}[{i}]: expected an ordered list of str tokens, found {type(sentence).__name__}")
        try:
            tokens = list(sentence)
        except TypeError:
            raise TypeError(f"{name}[{i}]: expected a list of str tokens, found {type(sentence).__name__}") from None
        for j, token in enumerate(tokens):
            if not isinstance(token, str):
                raise TypeError(f"{name}[{i}][{j}]: expected a str token, found {type(token).__name__} "
                                f"{token!r:.60}")
        out.append(tokens)
    return out


def batch_to_ids(sentences: Sequence[Sequence[str]], mapper: CharacterMapper | None = None) -> torch.Tensor:
    """Convert a batch of tokenized sentences to character ids.

    Args:
        sentences: B sentences, each a list of token strings (no ``<S>``/``</S>``: the model adds them);
            validated by :func:`as_token_lists` (a ``str`` batch or sentence, or a non-``str`` token, is a
            TypeError). An empty batch gives a ``(0, 0, 50)`` tensor.
        mapper: optional custom :class:`CharacterMapper` (``tokens_to_add``).

    Returns:
        int64 tensor ``(B, T, 50)`` with T = the longest sentence; rows are right-padded with all-zero
        token slots.
    """
    if mapper is not None and not isinstance(mapper, CharacterMapper):
        raise TypeError(f"mapper: expected a CharacterMapper, found {type(mapper).__name__}")
    sentences = as_token_lists(sentences)
    mapper = mapper or _DEFAULT_MAPPER
    max_len = max((len(s) for s in sentences), default=0)
    out = torch.zeros(len(sentences), max_len, MAX_CHARS_PER_TOKEN, dtype=torch.long)
    cache: dict[str, list[int]] = {}
    for row, sentence in enumerate(sentences):
        if not sentence:
            continue
        ids = []
        for token in sentence:
            cached = cache.get(token)
            if cached is None:
                cached = cache[token] = mapper.token_to_ids(token)
            ids.append(cached)
        out[row, : len(sentence)] = torch.tensor(ids, dtype=torch.long)
    return out


def check_char_ids(inputs: Any, n_symbols: int | None, name: str = "inputs", *, leading_dims: bool = False) -> None:
    """Validate character ids handed to a model: the one check behind every public entry point.

    Args:
        inputs: ``(B, T, L)`` integer ids (with ``leading_dims``: ``(..., B, T, L)``, any number of leading
            dims); 0 is padding, id ``k`` reads row ``k - 1`` of the character table.
        n_symbols: rows of the model's character table (bilm-tf: 261, so ids in ``[0, 261]``); None skips the
            range check (for a caller that checks the range later, on a reshaped view).
        name: the argument's name in the messages.

    Raises:
        TypeError: not a tensor, or not integer ids. ValueError: the wrong number of dims, an empty batch, or an
            id out of ``[0, n_symbols]``; every message names ``name`` and what was found.
    """
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of character ids, found {type(inputs).__name__}")
    if inputs.dtype.is_floating_point or inputs.dtype.is_complex or inputs.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer character ids (torch.long), found dtype {inputs.dtype}")
    if leading_dims and inputs.dim() < 3:
        raise ValueError(f"{name}: expected shape (batch, tokens, characters) or with more leading dims, "
                         f"found {tuple(inputs.shape)}")
    if not leading_dims and inputs.dim() != 3:
        raise ValueError(f"{name}: expected shape (batch, tokens, characters), found {tuple(inputs.shape)}")
    if any(d == 0 for d in inputs.shape[:-2]):
        raise ValueError(f"{name}: the batch is empty (shape {tuple(inputs.shape)}); give at least one sentence")
    if n_symbols is not None and inputs.numel():
        lo, hi = int(inputs.min()), int(inputs.max())
        if lo < 0 or hi > n_symbols:
            raise ValueError(f"{name}: character ids must be in [0, {n_symbols}], found values in [{lo}, {hi}] "
                             "(make them with batch_to_ids)")
