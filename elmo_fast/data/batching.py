"""bilm-tf's stateful batching over sentence streams, training batches per data part, and held-out batches.

Batching (bilm-tf): every batch is ``B`` rows x ``T`` steps with no padding. Each row is an endless stream of
sentences: ``[<S>, w1..wn, </S>]`` contributes inputs ``<S>, w1..wn`` and targets ``w1..wn, </S>``; a
sentence that does not fit continues in the same row of the next batch. The reverse stream is a second,
independent sentence stream (its own random order) whose sentences are reversed: inputs ``</S>, wn..w1``,
targets ``wn..w1, <S>``.

Data parts (distributed training): the corpus is split into ``parts`` disjoint parts (shards ``i::parts``,
or lines ``i::parts`` of every shard when there are fewer shards than parts). Part ``g`` feeds its own
block of rows with streams seeded by ``(seed, g)``. A process handles a contiguous range of parts, so a
1-process run with ``parts=2`` reads exactly the data that a 2-process run reads.

Held-out files: :func:`heldout_batches` with ``whole_file=True`` scores every token (rows that run out of
sentences are padded with target ``-1`` while the others finish theirs).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..errors import UserError
from .corpus import SKIP_HINT, CorpusError, expand_shards, iter_shard_sentences
from .vocabulary import UNK_ID, Vocabulary, encode_sentence

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardSpec:
    """One source of sentences: lines ``offset::stride`` of ``path``."""

    path: str
    stride: int = 1
    offset: int = 0


class SentenceStream:
    """An endless (or single-pass) stream of encoded sentences, bilm-tf style.

    One shard is loaded at a time; shards are visited in a random order that is reshuffled every pass, and
    sentences are shuffled within a shard. The order is a pure function of ``seed_key``, the pass and the
    shard position, so the stream position is three integers (see :meth:`state_dict`).

    Args:
        shards: the sources to read.
        vocab: the vocabulary (ids and char ids).
        seed_key: integers seeding every shuffle (e.g. ``(seed, part, direction)``).
        reverse: yield reversed sentences (the backward LM's stream).
        shuffle: shuffle shards and sentences (off for evaluation).
        loop: cycle forever (training) or stop after one pass (evaluation).
    """

    def __init__(self, shards: Sequence[ShardSpec], vocab: Vocabulary, seed_key: Sequence[int], reverse: bool,
                 shuffle: bool = True, loop: bool = True, skip_bad_lines: bool = False,
                 bad_line_hint: str = SKIP_HINT) -> None:
        if not shards:
            raise CorpusError("no corpus files to read")
        self.shards = list(shards)
        self.vocab = vocab
        self.seed_key = [int(k) for k in seed_key]
        self.reverse = reverse
        self.shuffle = shuffle
        self.loop = loop
        self.skip_bad_lines = skip_bad_lines
        self.bad_line_hint = bad_line_hint
        self.pass_index = 0
        self.shard_pos = 0      # index into this pass's shard order
        self.sent_pos = 0       # index into the current shard's sentence order
        self.sentences_this_pass = 0
        self._loaded: tuple[int, int] | None = None
        self._sentences: list[list[str]] = []
        self._order: np.ndarray = np.empty(0, dtype=np.int64)
        self._warned_empty: set[str] = set()

    def _shard_order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.shards))
        return np.random.default_rng(self.seed_key + [self.pass_index]).permutation(len(self.shards))

    def _load(self) -> None:
        key = (self.pass_index, self.shard_pos)
        if self._loaded == key:
            return
        spec = self.shards[int(self._shard_order()[self.shard_pos])]
        self._sentences = list(iter_shard_sentences(spec.path, stride=spec.stride, offset=spec.offset,
                                                    skip_bad_lines=self.skip_bad_lines, hint=self.bad_line_hint))
        if not self._sentences and spec.path not in self._warned_empty:
            self._warned_empty.add(spec.path)
            logger.warning("%s: empty shard (no sentences%s), skipped", spec.path,
                           f" in lines {spec.offset + 1}::{spec.stride}" if spec.stride > 1 else "")
        n = len(self._sentences)
        if self.shuffle:
            rng = np.random.default_rng(self.seed_key + [self.pass_index, self.shard_pos, 1])
            self._order = rng.permutation(n)
        else:
            self._order = np.arange(n)
        self._loaded = key

    def next_words(self) -> list[str]:
        """The next sentence as a list of words; raises StopIteration at the end of a single pass."""
        while True:
            if self.shard_pos >= len(self.shards):
                if self.sentences_this_pass == 0:
                    names = sorted({s.path for s in self.shards})
                    raise CorpusError(f"corpus is empty: {len(names)} file(s) ({', '.join(names[:3])}"
                                      f"{', ...' if len(names) > 3 else ''}) hold no sentences")
                if not self.loop:
                    raise StopIteration
                self.pass_index += 1
                self.shard_pos = self.sent_pos = self.sentences_this_pass = 0
                continue
            self._load()
            if self.sent_pos < len(self._order):
                words = self._sentences[int(self._order[self.sent_pos])]
                self.sent_pos += 1
                self.sentences_this_pass += 1
                return words
            self.shard_pos += 1
            self.sent_pos = 0

    def __iter__(self) -> "SentenceStream":
        return self

    def __next__(self) -> list[str]:
        return self.next_words()

    def state_dict(self) -> dict[str, int]:
        return {"pass_index": self.pass_index, "shard_pos": self.shard_pos, "sent_pos": self.sent_pos,
                "sentences_this_pass": self.sentences_this_pass, "n_shards": len(self.shards)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["n_shards"]) != len(self.shards):
            raise UserError(f"data position: the checkpoint was written for {state['n_shards']} corpus sources, "
                             f"this run has {len(self.shards)} (the --train files changed)")
        self.pass_index, self.shard_pos = int(state["pass_index"]), int(state["shard_pos"])
        self.sent_pos, self.sentences_this_pass = int(state["sent_pos"]), int(state["sentences_this_pass"])
        self._loaded = None


class StreamBatcher:
    """bilm-tf's ``_get_batch`` for one direction: ``rows`` endless rows x ``steps`` tokens.

    Each row keeps the unconsumed tail of its current sentence; a sentence continues in the same row of the
    next batch. ``</S>`` (``<S>`` for the reverse stream) is never an input.
    """

    def __init__(self, stream: SentenceStream, rows: int, steps: int) -> None:
        self.stream = stream
        self.rows, self.steps = rows, steps
        # per row: (words of the current sentence, number of its tokens already consumed)
        self._words: list[list[str] | None] = [None] * rows
        self._done = [0] * rows
        self._enc: list[tuple[np.ndarray, np.ndarray] | None] = [None] * rows
        self._exhausted = False

    def next_batch(self, pad: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> inputs ids ``(rows, steps)`` int64 (OOV = ``<UNK>``), input char ids ``(rows, steps, W)`` int16,
        targets ``(rows, steps)`` int64.

        A single-pass stream that ends raises StopIteration: by default at once (the incomplete batch is
        dropped, as bilm-tf does); with ``pad=True`` only when every row has used up its last sentence, the
        rows that ran out being padded with target ``-1`` (input ``<S>``), so that every token is scored.
        """
        if pad and self._exhausted and all(e is None or len(e[0]) - d <= 1 for e, d in zip(self._enc, self._done)):
            raise StopIteration
        inputs = np.empty((self.rows, self.steps), dtype=np.int64)
        targets = np.empty((self.rows, self.steps), dtype=np.int64)
        chars = np.empty((self.rows, self.steps, self.stream.vocab.max_word_length), dtype=np.int16)
        for r in range(self.rows):
            pos = 0
            while pos < self.steps:
                enc = self._enc[r]
                if enc is None or len(enc[0]) - self._done[r] <= 1:
                    try:
                        if self._exhausted:
                            raise StopIteration
                        words = self.stream.next_words()
                    except StopIteration:
                        self._exhausted = True
                        if not pad:
                            raise
                        vocab = self.stream.vocab
                        inputs[r, pos:] = vocab.bos_id
                        chars[r, pos:] = vocab.char_table[vocab.bos_id]
                        targets[r, pos:] = -1
                        self._enc[r] = None
                        break
                    self._words[r], self._done[r] = words, 0
                    enc = self._enc[r] = encode_sentence(self.stream.vocab, words, self.stream.reverse)
                ids, sent_chars = enc
                start = self._done[r]
                take = min(len(ids) - 1 - start, self.steps - pos)
                inputs[r, pos:pos + take] = ids[start:start + take]
                targets[r, pos:pos + take] = ids[start + 1:start + take + 1]
                chars[r, pos:pos + take] = sent_chars[start:start + take]
                self._done[r] += take
                pos += take
        return inputs, chars, targets

    def state_dict(self) -> dict[str, Any]:
        return {"stream": self.stream.state_dict(), "rows": self.rows,
                "words": [list(w) if w is not None else None for w in self._words], "done": list(self._done)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["rows"]) != self.rows:
            raise UserError(f"data position: the checkpoint has {state['rows']} rows per data part, this run "
                             f"{self.rows} (--batch-size or the number of processes changed)")
        self.stream.load_state_dict(state["stream"])
        self._words = [list(w) if w is not None else None for w in state["words"]]
        self._done = [int(d) for d in state["done"]]
        self._enc = [encode_sentence(self.stream.vocab, w, self.stream.reverse) if w is not None else None
                     for w in self._words]


# ---------------------------------------------------------------------------------------------- batches
@dataclass
class Batch:
    """One training/eval batch for both directions (CPU tensors).

    Attributes:
        token_chars: ``(U, 50)`` int64 char ids of the distinct input tokens of the batch (both directions).
        fw_inputs, bw_inputs: ``(B, T)`` int64 indices into ``token_chars``.
        fw_targets, bw_targets: ``(B, T)`` int64 vocabulary ids.
    """

    token_chars: torch.Tensor
    fw_inputs: torch.Tensor
    bw_inputs: torch.Tensor
    fw_targets: torch.Tensor
    bw_targets: torch.Tensor

    @property
    def n_tokens(self) -> int:
        """Tokens per direction (B x T)."""
        return int(self.fw_targets.numel())

    def char_ids(self, direction: int) -> torch.Tensor:
        """``(B, T, 50)`` char ids of one direction's inputs (0 = forward, 1 = reverse stream)."""
        return self.token_chars[self.fw_inputs if direction == 0 else self.bw_inputs]

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) for t in (self.token_chars, self.fw_inputs, self.bw_inputs,
                                                                  self.fw_targets, self.bw_targets)))


def make_batch(fw: tuple[np.ndarray, np.ndarray, np.ndarray], bw: tuple[np.ndarray, np.ndarray, np.ndarray],
               vocab_size: int, unk_id: int | None = UNK_ID) -> Batch:
    """Assemble a :class:`Batch` from the two directions' ``(ids, chars, targets)``, deduplicating tokens so
    the char-CNN runs once per distinct spelling (in-vocabulary words by id, OOV words by characters)."""
    ids = np.concatenate([fw[0].reshape(-1), bw[0].reshape(-1)])
    width = fw[1].shape[-1]
    chars = np.concatenate([fw[1].reshape(-1, width), bw[1].reshape(-1, width)])
    keys = ids.copy()
    oov = np.nonzero(ids == unk_id)[0] if unk_id is not None else np.empty(0, dtype=np.int64)
    if oov.size:
        _, oov_key = np.unique(chars[oov], axis=0, return_inverse=True)
        keys[oov] = vocab_size + oov_key.reshape(-1)
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    half = fw[0].size
    shape = fw[0].shape
    return Batch(token_chars=torch.from_numpy(chars[first].astype(np.int64)),
                 fw_inputs=torch.from_numpy(inverse[:half].reshape(shape).astype(np.int64)),
                 bw_inputs=torch.from_numpy(inverse[half:].reshape(shape).astype(np.int64)),
                 fw_targets=torch.from_numpy(np.ascontiguousarray(fw[2])),
                 bw_targets=torch.from_numpy(np.ascontiguousarray(bw[2])))


def split_into_parts(files: Sequence[str], parts: int) -> list[list[ShardSpec]]:
    """Disjoint corpus parts: shards ``g::parts`` when there are enough files, else lines ``g::parts``."""
    if parts < 1:
        raise ValueError(f"parts: expected >= 1, found {parts}")
    if len(files) >= parts:
        return [[ShardSpec(f) for f in files[g::parts]] for g in range(parts)]
    logger.info("%d corpus file(s) for %d data parts: each part reads every %d-th line of every file",
                len(files), parts, parts)
    return [[ShardSpec(f, parts, g) for f in files] for g in range(parts)]


class TrainingBatches:
    """Endless stateful training batches for this process: both directions, ``rows`` x ``steps``.

    Args:
        files: the corpus shards (sorted list, e.g. from :func:`expand_shards`).
        vocab: the vocabulary.
        rows: B, rows per batch for this process.
        steps: T, unroll steps.
        seed: data seed.
        parts: number of disjoint corpus parts in the whole job (default 1; usually the world size).
        part_ids: the parts this process feeds (default all); ``rows`` is split evenly among them, part
            ``part_ids[k]`` filling rows ``k*rows/len(part_ids) ...``.
    """

    def __init__(self, files: Sequence[str], vocab: Vocabulary, rows: int, steps: int, seed: int, parts: int = 1,
                 part_ids: Sequence[int] | None = None, skip_bad_lines: bool = False) -> None:
        if rows < 1 or steps < 1:
            raise ValueError(f"batch size and unroll steps must be positive, found {rows} x {steps}")
        part_ids = list(range(parts)) if part_ids is None else list(part_ids)
        if rows % len(part_ids):
            raise UserError(f"batch size {rows} is not divisible by the {len(part_ids)} data parts of this process")
        self.vocab = vocab
        self.rows, self.steps = rows, steps
        all_parts = split_into_parts(files, parts)
        per_part = rows // len(part_ids)
        self.part_ids = part_ids
        self.batchers: list[tuple[StreamBatcher, StreamBatcher]] = []
        for g in part_ids:
            fw = SentenceStream(all_parts[g], vocab, (seed, g, 0), reverse=False, skip_bad_lines=skip_bad_lines)
            bw = SentenceStream(all_parts[g], vocab, (seed, g, 1), reverse=True, skip_bad_lines=skip_bad_lines)
            self.batchers.append((StreamBatcher(fw, per_part, steps), StreamBatcher(bw, per_part, steps)))

    def next_batch(self) -> Batch:
        fw = [b[0].next_batch() for b in self.batchers]
        bw = [b[1].next_batch() for b in self.batchers]
        cat = lambda parts, i: np.concatenate([p[i] for p in parts], axis=0)  # noqa: E731
        return make_batch((cat(fw, 0), cat(fw, 1), cat(fw, 2)), (cat(bw, 0), cat(bw, 1), cat(bw, 2)), len(self.vocab),
                          self.vocab.unk_id)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Data position of every part: plain ints/strings/lists (safe for ``torch.load(weights_only=True)``)."""
        return {str(g): {"fw": b[0].state_dict(), "bw": b[1].state_dict()}
                for g, b in zip(self.part_ids, self.batchers)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for g, (fw, bw) in zip(self.part_ids, self.batchers):
            if str(g) not in state:
                raise UserError(f"data position: the checkpoint has no state for data part {g} "
                                 f"(it has parts {sorted(state)})")
            fw.load_state_dict(state[str(g)]["fw"])
            bw.load_state_dict(state[str(g)]["bw"])


def heldout_batches(path: str, vocab: Vocabulary, rows: int = 256, steps: int = 1,
                    whole_file: bool = False) -> Iterator[Batch]:
    """One pass over a held-out file, bilm-tf's test protocol: no shuffling, the forward and reverse streams
    read the file in order, stateful rows; the incomplete final batch is dropped (bilm-tf), or with
    ``whole_file=True`` the rows finish their last sentences in further batches where the rows that ran out
    have targets ``-1`` (to be left out of the loss), so that every token of the file is scored."""
    files = expand_shards(path)
    specs = [ShardSpec(f) for f in files]
    fw = StreamBatcher(SentenceStream(specs, vocab, (0,), reverse=False, shuffle=False, loop=False, bad_line_hint=""),
                       rows, steps)
    bw = StreamBatcher(SentenceStream(specs, vocab, (0,), reverse=True, shuffle=False, loop=False, bad_line_hint=""),
                       rows, steps)
    while True:
        try:
            f, b = fw.next_batch(pad=whole_file), bw.next_batch(pad=whole_file)
        except StopIteration:
            return
        yield make_batch(f, b, len(vocab), vocab.unk_id)
