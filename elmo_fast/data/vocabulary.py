"""Training vocabularies: the in-memory :class:`Vocabulary` (word ids, char-id table) and sentence encoding.

Vocabulary files are read as bilm-tf reads them (:func:`elmo_fast.vocab.read_vocab_file`): one token per line, stripped,
``!!!MAXTERMID`` lines skipped, ``<S>``/``</S>``/``<UNK>`` found by name on any line (their ids are their
positions; vocabularies built here put them first). Training uses ``Vocabulary.bos_id``/``eos_id``/``unk_id``.

Character ids are the inference ids (+1 shifted, :class:`elmo_fast.chars.CharacterMapper` with literal
``<S>``/``</S>`` markers); with no padding in training batches this is the same function as bilm-tf's raw
ids, so one embedding table serves both. Char ids of vocabulary words are computed once (``(V, 50)`` table,
bilm-tf's ``max_word_length`` handling: bytes cut to ``max_word_length - 2``).
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from typing import Sequence

import numpy as np

from ..chars import BOS_CHAR, BOW_CHAR, EOS_CHAR, EOW_CHAR, MAX_CHARS_PER_TOKEN, PAD_CHAR, byte_char_ids
from ..errors import UserError
from ..vocab import read_vocab_file, write_vocab
from .corpus import CorpusError, format_line_numbers, iter_shard_sentences

logger = logging.getLogger(__name__)

BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<S>", "</S>", "<UNK>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
#: the special tokens' ids in vocabularies *built* here (a vocabulary file may put them anywhere: use
#: ``Vocabulary.bos_id`` / ``eos_id`` / ``unk_id``)
BOS_ID, EOS_ID, UNK_ID = 0, 1, 2


def word_char_ids(word: str, max_word_length: int = MAX_CHARS_PER_TOKEN) -> list[int]:
    """bilm-tf's ``UnicodeCharsVocabulary._convert_word_to_char_ids`` (+1 shifted, as the model's inputs):
    ``<bow>``, the UTF-8 bytes cut to ``max_word_length - 2``, ``<eow>``, padding; ``<S>``/``</S>`` get the
    sentence-boundary patterns. For 50 this equals :meth:`elmo_fast.chars.CharacterMapper.token_to_ids`."""
    if word in (BOS_TOKEN, EOS_TOKEN):
        ids = [PAD_CHAR + 1] * max_word_length
        ids[0], ids[1], ids[2] = BOW_CHAR + 1, (BOS_CHAR if word == BOS_TOKEN else EOS_CHAR) + 1, EOW_CHAR + 1
        return ids
    return byte_char_ids(word, max_word_length)


class Vocabulary:
    """A bilm-tf vocabulary: one token per softmax row; ``<S>``, ``</S>`` and ``<UNK>`` are found by name
    wherever they are (bilm-tf's own files put them anywhere), and their ids are their positions.

    Row ``v`` of the softmax belongs to ``tokens[v]``. Output-side OOV words map to ``<UNK>``
    (:attr:`unk_id`); the input side always uses characters, so OOV words keep their own spelling. As in
    bilm-tf, a token listed twice maps to its last line, and an empty line is a token that never occurs.
    Vocabularies built here list the three specials first.

    Args:
        tokens: the tokens in id order.
        source: where they came from (file name, for messages).
        max_word_length: characters per token of :attr:`char_table` (bilm-tf's ``max_word_length``; the
            model's ``max_characters_per_token``, 50).
    """

    def __init__(self, tokens: Sequence[str], source: str = "vocabulary",
                 max_word_length: int = MAX_CHARS_PER_TOKEN) -> None:
        tokens = list(tokens)
        if not tokens:
            raise UserError(f"{source}: empty vocabulary")
        if max_word_length < 3:
            raise ValueError(f"max_word_length: expected >= 3 (<bow>, one byte, <eow>), found {max_word_length}")
        self.tokens = tokens
        self.source = source
        self.max_word_length = int(max_word_length)
        self.index: dict[str, int] = {}
        duplicates: list[int] = []
        for i, token in enumerate(tokens):
            if not isinstance(token, str):
                raise TypeError(f"{source}: token {i + 1} is {type(token).__name__}; expected str")
            if token in self.index:
                duplicates.append(i + 1)
            self.index[token] = i   # bilm-tf: the last line of a repeated token wins
        if duplicates:
            logger.warning("%s: %s repeat an earlier token (each maps to its last line, as in bilm-tf)", source,
                           format_line_numbers(duplicates))
        self.bos_id: int | None = self.index.get(BOS_TOKEN)
        self.eos_id: int | None = self.index.get(EOS_TOKEN)
        self.unk_id: int | None = self.index.get(UNK_TOKEN)
        self._char_table: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def has_specials(self) -> bool:
        return None not in (self.bos_id, self.eos_id, self.unk_id)

    def require_specials(self) -> "Vocabulary":
        """Training needs all three special tokens; raise a one-line error naming the missing ones."""
        missing = [t for t, i in zip(SPECIAL_TOKENS, (self.bos_id, self.eos_id, self.unk_id)) if i is None]
        if missing:
            raise UserError(f"{self.source}: no line {' / '.join(missing)}; training needs <S>, </S> and <UNK> "
                            f"somewhere in the vocabulary (bilm-tf finds them by name on any line)")
        return self

    @classmethod
    def from_file(cls, path: str | os.PathLike, max_word_length: int = MAX_CHARS_PER_TOKEN) -> "Vocabulary":
        """Read a bilm-tf vocab file (see :func:`read_vocab_file`); errors name the file and line."""
        path = os.fspath(path)
        return cls(read_vocab_file(path), source=path, max_word_length=max_word_length)

    @classmethod
    def build(cls, files: Sequence[str], min_count: int = 1, max_vocab: int | None = None,
              skip_bad_lines: bool = False) -> "Vocabulary":
        """Count words in ``files`` (streamed) and keep those with ``count >= min_count``.

        Order: the three specials, then descending count, ties broken by the token string (deterministic).
        ``max_vocab`` caps the total size including the specials. Literal ``<S>``/``</S>``/``<UNK>`` in the
        text are not counted as words.
        """
        if max_vocab is not None and max_vocab < 4:
            raise ValueError(f"max_vocab: expected >= 4 (three special tokens + one word), found {max_vocab}")
        counts: Counter[str] = Counter()
        for path in files:
            for tokens in iter_shard_sentences(path, skip_bad_lines=skip_bad_lines):
                counts.update(tokens)
        for special in SPECIAL_TOKENS:
            counts.pop(special, None)
        if not counts:
            raise CorpusError(f"corpus is empty: {len(files)} file(s) ({', '.join(files[:3])}"
                              f"{', ...' if len(files) > 3 else ''}) hold no tokens")
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_vocab is not None:
            words = words[:max_vocab - len(SPECIAL_TOKENS)]
        if not words:
            raise CorpusError(f"no word occurs at least {min_count} times (--min-count); the vocabulary would be empty")
        return cls(list(SPECIAL_TOKENS) + words, source="built vocabulary")

    def save(self, path: str | os.PathLike) -> None:
        """Write the bilm-tf vocab file (one token per line, UTF-8), atomically."""
        write_vocab(path, self.tokens)

    def digest(self) -> str:
        """A short hash identifying the token list (stored in checkpoints)."""
        h = hashlib.sha256()
        for token in self.tokens:
            h.update(token.encode("utf-8", "surrogatepass") + b"\n")
        return h.hexdigest()[:16]

    def ids(self, tokens: Sequence[str]) -> np.ndarray:
        """Token strings -> int64 ids (OOV -> :attr:`unk_id`; a vocabulary without ``<UNK>`` raises on OOV)."""
        get = self.index.get
        unk = self.unk_id if self.unk_id is not None else -1
        out = np.fromiter((get(t, unk) for t in tokens), dtype=np.int64, count=len(tokens))
        if unk < 0 and (out < 0).any():
            word = tokens[int(np.argmax(out < 0))]
            raise UserError(f"{self.source}: {word!r} is not in the vocabulary, which has no <UNK> line")
        return out

    def word_char_ids(self, word: str) -> list[int]:
        """The :attr:`max_word_length` (+1 shifted) char ids of any word (see :func:`word_char_ids`)."""
        return word_char_ids(word, self.max_word_length)

    @property
    def char_table(self) -> np.ndarray:
        """``(V, max_word_length)`` int16: the (+1 shifted) char ids of every vocabulary token, computed once
        as bilm-tf's ``UnicodeCharsVocabulary`` does (bytes cut to ``max_word_length - 2``; the rows of
        ``<S>`` and ``</S>``, wherever they are, get the sentence-boundary patterns)."""
        if self._char_table is None:
            table = np.empty((len(self.tokens), self.max_word_length), dtype=np.int16)
            for i, token in enumerate(self.tokens):
                table[i] = word_char_ids(token, self.max_word_length)
            self._char_table = table
        return self._char_table


def encode_sentence(vocab: Vocabulary, words: Sequence[str], reverse: bool) -> tuple[np.ndarray, np.ndarray]:
    """``[<S>, w1..wn, </S>]`` (reversed when ``reverse``) -> ids ``(n+2,)`` int64, char ids
    ``(n+2, max_word_length)`` int16. OOV words get id ``<UNK>`` but keep their own characters.
    """
    ids = np.empty(len(words) + 2, dtype=np.int64)
    ids[0], ids[-1] = vocab.bos_id, vocab.eos_id
    ids[1:-1] = vocab.ids(words)
    chars = vocab.char_table[ids]
    oov = np.nonzero(ids == vocab.unk_id)[0]
    for k in oov:
        if 0 < k < len(ids) - 1:
            word = words[k - 1]
            if word != UNK_TOKEN:
                chars[k] = vocab.word_char_ids(word)
    if reverse:
        ids, chars = ids[::-1].copy(), chars[::-1].copy()
    return ids, chars
