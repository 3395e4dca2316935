"""Training data (docs/numerics.md#training-recipe), one job per module:

* :mod:`.corpus`: shard globs, validated sentence lines, and the file checks the commands run before any work;
* :mod:`.vocabulary`: the in-memory vocabulary (ids, char-id table) and sentence encoding; vocabulary *files* are
  read and written by :mod:`elmo_fast.vocab`;
* :mod:`.batching`: bilm-tf's stateful ``B x T`` batches, data parts for distributed training, held-out batches.
"""
from __future__ import annotations

from ..vocab import read_vocab_file
from .batching import (Batch, SentenceStream, ShardSpec, StreamBatcher, TrainingBatches, heldout_batches, make_batch,
                       split_into_parts)
from .corpus import (CorpusError, check_readable_file, check_text_file, count_targets, expand_shards,
                     format_line_numbers, iter_shard_sentences)
from .vocabulary import (BOS_ID, BOS_TOKEN, EOS_ID, EOS_TOKEN, SPECIAL_TOKENS, UNK_ID, UNK_TOKEN, Vocabulary,
                         encode_sentence, word_char_ids)

__all__ = ["CorpusError", "Vocabulary", "SPECIAL_TOKENS", "BOS_ID", "EOS_ID", "UNK_ID", "BOS_TOKEN", "EOS_TOKEN",
           "UNK_TOKEN", "read_vocab_file", "word_char_ids", "encode_sentence", "format_line_numbers",
           "check_readable_file", "check_text_file", "count_targets", "expand_shards", "iter_shard_sentences",
           "ShardSpec", "SentenceStream", "StreamBatcher", "Batch", "TrainingBatches", "heldout_batches",
           "make_batch", "split_into_parts"]
