"""ELMoForManyLangs -> bilm-tf: the converter behind ``elmo-fast convert``.

An :class:`~elmo_fast.efml.model.EFMLBiLM` whose numbers bilm-tf's format can express (no word embedding, 50
characters per token, ASCII characters) becomes an ordinary :class:`~elmo_fast.nn.bilm.BiLM` and is written as
``options.json`` + ``weights.hdf5`` (docs/numerics.md#file-layouts).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..chars import BOS_CHAR, BOW_CHAR, EOS_CHAR, EOW_CHAR, PAD_CHAR
from ..errors import UserError
from ..nn.bilm import BiLM
from ..options import options_from_dict
from .formats import CHAR_SPECIALS
from .model import EFMLBiLM, load_efml

__all__ = ["bilm_tf_obstacles", "to_bilm_tf", "convert"]


def bilm_tf_obstacles(model: EFMLBiLM, ascii_only: bool = False) -> list[str]:
    """Why ``model`` cannot be written as bilm-tf ``options.json`` + ``weights.hdf5`` with the same numbers
    (empty: it can).

    bilm-tf's format reads a token as its UTF-8 *bytes* (261 fixed symbols, 50 per token) and has no word
    embedding; EFML reads *code points* through the model's own ``char.dic`` and may concatenate a word
    embedding. What maps exactly: the char-CNN, highway (gate negated), projection with bias, the LSTM
    (gates reordered, forget bias moved), the markers (EFML's ``<eow>`` row -> bilm-tf's begin-of-word row,
    ``<bow>`` -> end-of-word, ``<bos>``/``<eos>``/``<pad>`` -> their rows) and every ASCII character (one
    byte); bytes without a character get the ``<oov>`` row. Not expressible: a word embedding, another
    ``max_characters_per_token`` than 50, and non-ASCII characters (several bytes in bilm-tf, one symbol in
    EFML). ``ascii_only=True`` accepts the last one: the converted model then equals the EFML model on
    ASCII text only.
    """
    cfg = model.config
    problems = []
    if cfg.word_dim > 0:
        problems.append(f"the token embedder concatenates a word embedding (word_dim {cfg.word_dim}, "
                        f"{0 if model.word_embed is None else model.word_embed.shape[0]} words) before its "
                        "projection; bilm-tf's char-CNN models have no word embedding")
    if cfg.max_chars != 50:
        problems.append(f"max_characters_per_token is {cfg.max_chars}; bilm-tf's format fixes it at 50")
    if not ascii_only:
        wide = sorted(ch for ch in model.char_lexicon if ch not in CHAR_SPECIALS and (len(ch) != 1 or ord(ch) > 127))
        if wide:
            shown = ", ".join(repr(ch) for ch in wide[:8]) + (", ..." if len(wide) > 8 else "")
            problems.append(f"char.dic has {len(wide)} non-ASCII characters ({shown}): EFML reads each as one "
                            "symbol, bilm-tf reads its UTF-8 bytes (pass ascii_only / --ascii-only to convert "
                            "anyway: the result equals the EFML model on ASCII text only)")
    return problems


def to_bilm_tf(model: EFMLBiLM, ascii_only: bool = False) -> BiLM:
    """The equivalent :class:`~elmo_fast.BiLM` (raises :class:`UserError` listing every obstacle, see
    :func:`bilm_tf_obstacles`)."""

    problems = bilm_tf_obstacles(model, ascii_only)
    if problems:
        raise UserError("cannot convert to bilm-tf's format with the same numbers: " + "; ".join(problems))
    cfg = model.config
    lstm: dict[str, Any] = {"dim": cfg.cell_dim, "projection_dim": cfg.projection_dim, "n_layers": cfg.n_layers,
                            "use_skip_connections": True}
    if cfg.cell_clip is not None:
        lstm["cell_clip"] = cfg.cell_clip
    if cfg.proj_clip is not None:
        lstm["proj_clip"] = cfg.proj_clip
    options = options_from_dict({
        "lstm": lstm,
        "char_cnn": {"activation": cfg.activation, "embedding": {"dim": cfg.char_dim},
                     "filters": [[w, n] for w, n in cfg.filters], "n_highway": cfg.n_highway,
                     "n_characters": 262, "max_characters_per_token": 50},
    }, "<converted ELMoForManyLangs model>")
    out = BiLM(options, stateful=model.stateful, has_projection=True, backend=model.backend)
    src, dst = model.token_encoder, out.token_encoder
    lex = model.char_lexicon
    table = src.char_embed.detach()
    with torch.no_grad():
        rows = torch.full((dst.char_embed.shape[0],), lex["<oov>"], dtype=torch.long)
        for ch, index in lex.items():
            if len(ch) == 1 and ord(ch) < 128:
                rows[ord(ch)] = index
        for symbol, name in ((BOW_CHAR, "<eow>"), (EOW_CHAR, "<bow>"), (BOS_CHAR, "<bos>"), (EOS_CHAR, "<eos>"),
                             (PAD_CHAR, "<pad>")):  # EFML writes <eow> first and <bow> last
            rows[symbol] = lex[name]
        dst.char_embed.copy_(table[rows])
        for a, b in zip(dst.conv_weights, src.conv_weights):
            a.copy_(b)
        for a, b in zip(dst.conv_biases, src.conv_biases):
            a.copy_(b)
        for a, b in zip(dst.highways, src.highways):
            for name in ("W_carry", "b_carry", "W_transform", "b_transform"):
                getattr(a, name).copy_(getattr(b, name))
        dst.W_proj.copy_(model.W_proj)
        dst.b_proj.copy_(model.b_proj)
        out.lstm.load_state_dict(model.lstm.state_dict())
    out.requires_grad_(False)
    return out


def convert(model_dir: str | os.PathLike, out_dir: str | os.PathLike, *, ascii_only: bool = False,
            overwrite: bool = False) -> dict[str, Any]:
    """Write an ELMoForManyLangs model as bilm-tf ``options.json`` + ``weights.hdf5`` in ``out_dir``.

    Refuses (:class:`UserError`, every reason listed) when the model cannot be expressed exactly, see
    :func:`bilm_tf_obstacles`. The folder is published whole with a manifest (:mod:`elmo_fast.publish`).
    """
    model = load_efml(model_dir, stateful=False, backend="reference")
    bilm = to_bilm_tf(model, ascii_only)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    targets = [out / "options.json", out / "weights.hdf5"]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise UserError(f"{out}: would overwrite {existing}; pass --overwrite")
    from ..atomic import write_json
    from ..publish import MODEL_FILES, publish_folder
    from ..weights import h5_size_estimate, write_weights
    weights = bilm.bilm_tf_weights()
    # one folder, swapped into place whole: with --overwrite an export's softmax and vocabulary (of the model
    # being replaced) are dropped rather than left beside the converted biLM
    publish_folder(out, {"options.json": lambda path: write_json(path, bilm.options.to_dict()),
                         "weights.hdf5": lambda path: write_weights(path, weights)},
                   replaces=MODEL_FILES, needed_bytes=h5_size_estimate(weights.values()) + (1 << 20), what="convert")
    return {"options_file": str(targets[0]), "weight_file": str(targets[1]), "ascii_only": ascii_only,
            "characters": len(model.char_lexicon)}
