"""ELMoForManyLangs (EFML) model directories, run on elmo-fast's backends.

The numbers are in docs/numerics.md#elmoformanylangs-folder.

The package's modules, one job each: :mod:`~elmo_fast.efml.formats` (the files: config, architecture, lexicons,
state dicts, validated), :mod:`~elmo_fast.efml.model` (:class:`EFMLBiLM`, a :class:`~elmo_fast.nn.bilm.BiLM`;
:func:`load_efml`; the package's :func:`sents2elmo`) and :mod:`~elmo_fast.efml.convert` (to bilm-tf's format).

An EFML model directory (the 44-language models of HIT-SCIR, read by the ``elmoformanylangs`` package)
holds:

* ``config.json``: the training arguments; its ``config_path`` names the architecture file (looked up as
  given, then by its base name in the model directory, then among the two published architecture files,
  whose numbers are known here), as the package does.
* the architecture file: ``{"encoder": {"name": "elmo", "projection_dim", "dim", "n_layers",
  "cell_clip", "proj_clip"}, "token_embedder": {"name": "cnn", "activation", "filters", "n_highway",
  "word_dim", "char_dim", "max_characters_per_token"}, ...}``.
* ``char.dic`` / ``word.dic``: ``symbol<TAB>id`` lines (a line whose symbol is stripped away, e.g. a
  whitespace character, reads as U+3000, as the package reads it); ``word.dic`` is only used when
  ``word_dim > 0``.
* ``token_embedder.pkl`` / ``encoder.pkl``: ``torch.save`` of the two modules' ``state_dict``. They are read
  with ``torch.load(..., weights_only=True)``: only tensors and containers are accepted, no code from the
  model folder ever runs.

What the model computes (checked against ``elmoformanylangs.Embedder.sents2elmo``, see
``tests/test_efml.py``):

* Characters are code points looked up in the model's ``char.dic`` (unknown -> ``<oov>``). A token of
  ``n`` characters becomes ``[id('<eow>'), c_1 .. c_n, id('<bow>'), id('<pad>') ...]``: the package swaps
  the two word markers (it still reads consistently, because training did the same). Tokens longer than
  ``max_characters_per_token - 2`` characters are cut to that length, for the word lookup too. The padding
  character has its own stored, non-zero embedding row (a random unit-norm vector fixed at initialisation:
  the package's ``padding_idx`` blocks its gradient, so it is never trained, but it is not zero). The
  sentence markers are the tokens ``<bos>`` and ``<eos>`` (chars ``[id('<eow>'), id('<bos>'), id('<bow>'),
  pad ...]``); a literal input token ``<bos>`` reads the same way.
* Token embedding: char-CNN (max over positions, then the activation), highway layers (always ReLU; the
  gate multiplies the *input*, ``g * x + (1 - g) * relu(.)``), optionally concatenated after a word
  embedding (``[word; char]``), then a projection with bias, always present.
* Encoder: AllenNLP's LSTM with projection (gate order i, f, g, o; the stored bias is used as it is, no
  forget bias added), cell and projection clipping (0 = off), residual connections above the first layer.
  Layer 0 of the output is ``[x; x]``; ``output_layer=-1`` is the plain mean of the layers.

Mapping onto elmo-fast's modules (so that the ``reference``, ``fast`` and ``triton`` backends all run it):

* character ids are shifted by +1 (0 keeps meaning "no token here") and the EFML table is stored whole,
  so the padding row is an ordinary row; the token encoder is a
  :class:`~elmo_fast.nn.token_encoder.CharCNNTokenEncoder` with ``n_symbols`` = the table size, without its
  projection;
* the highway gate is stored negated (``sigmoid(-z) = 1 - sigmoid(z)``), which turns EFML's
  ``g * x + (1 - g) * t`` into bilm-tf's ``g' * t + (1 - g') * x``;
* the word embedding and the projection (one matmul over ``[word; char]``, as EFML does) run in
  :meth:`EFMLBiLM.embed_tokens`; on the ``triton`` backend the projection uses the Triton projection kernel;
  everything after the token layer is :meth:`BiLM.forward_embeddings <elmo_fast.nn.bilm.BiLM.forward_embeddings>`;
* the LSTM weights are transposed and the gate blocks reordered to bilm-tf's (i, j, f, o) layout of
  :class:`~elmo_fast.nn.lstm.BiLSTM`, the bias carrying EFML's stored forget bias.

Limits: only ``token_embedder.name == "cnn"`` with ``char_dim > 0`` and ``encoder.name == "elmo"`` (the
published models) are supported; the package's LSTM token embedder and plain-LSTM encoder are refused.
"""
from __future__ import annotations

from .convert import bilm_tf_obstacles, convert, to_bilm_tf
from .formats import (CHAR_SPECIALS, EFML_FILES, PUBLISHED_ARCHITECTURE, PUBLISHED_ARCHITECTURE_NAMES, WORD_SPECIALS,
                      EFMLConfig, architecture_file, is_efml_dir, load_torch_state, read_lexicon)
from .model import EFMLBiLM, load_efml, lstm_bias_from_total, sents2elmo

__all__ = ["EFMLConfig", "EFMLBiLM", "is_efml_dir", "load_efml", "read_lexicon", "load_torch_state",
           "sents2elmo", "EFML_FILES", "CHAR_SPECIALS", "WORD_SPECIALS", "PUBLISHED_ARCHITECTURE",
           "PUBLISHED_ARCHITECTURE_NAMES", "architecture_file", "lstm_bias_from_total", "bilm_tf_obstacles",
           "to_bilm_tf", "convert"]
