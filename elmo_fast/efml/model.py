"""The ELMoForManyLangs model on elmo-fast's :class:`~elmo_fast.nn.bilm.BiLM`, its loader and the package's API.

:class:`EFMLBiLM` is a :class:`BiLM` whose token layer reads the model's own lexicon (see :mod:`elmo_fast.efml`
for the mapping); :func:`load_efml` reads a model directory into it (:mod:`elmo_fast.efml.formats` checks the
files) and :func:`sents2elmo` is the package's ``Embedder.sents2elmo``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .. import backend as backends
from ..errors import UserError
from ..nn.bilm import BiLM, add_sentence_boundaries, token_mask
from ..nn.lstm import FORGET_BIAS
from ..nn.token_encoder import CharCNNTokenEncoder
from ..options import ElmoOptions
from .formats import (CHAR_SPECIALS, EFML_FILES, WORD_SPECIALS, EFMLConfig, architecture_file, check_keys,
                      check_lexicon_rows, checked_tensor, load_torch_state, read_lexicon)

__all__ = ["EFMLBiLM", "load_efml", "sents2elmo", "lstm_bias_from_total"]


#: EFML's gate blocks (i, f, g, o) -> bilm-tf's (i, j=g, f, o)
_GATE_ORDER = (0, 2, 1, 3)


def _reorder_gates(t: torch.Tensor, cell: int) -> torch.Tensor:
    """Permute the 4 gate blocks along the last axis from EFML's order to bilm-tf's."""
    blocks = t.split(cell, dim=-1)
    return torch.cat([blocks[k] for k in _GATE_ORDER], dim=-1)


class EFMLBiLM(BiLM):
    """An ELMoForManyLangs model as a :class:`~elmo_fast.nn.bilm.BiLM` (what :class:`~elmo_fast.ElmoEmbedder` wraps).

    ``forward(char_ids (B, T, L), word_ids (B, T) or None)`` -> ``{"activations": [n_layers + 1 tensors
    (B, T+2, 2P)], "mask": (B, T+2) bool}``, with the ``<bos>``/``<eos>`` positions included, zeros at padding.
    Inputs come from :meth:`prepare_inputs`. Stateful like the package by default; with ``stateful=False``
    every call starts from zero states (the only output of the package that is reproducible).

    Only the token layer is EFML's own (:meth:`embed_tokens`: the character table and markers of the model's
    lexicon, an optional word embedding, a projection over ``[word; char]``); the token encoder op, the biLSTM,
    the carried states, backends and numerics are the :class:`BiLM`'s. There is no bilm-tf weight layout
    (:func:`elmo_fast.efml.to_bilm_tf` converts one when it exists).

    Build it with :func:`load_efml`.
    """

    def __init__(self, config: EFMLConfig, char_lexicon: dict[str, int], n_char_rows: int,
                 word_lexicon: dict[str, int] | None = None, n_word_rows: int = 0, *, stateful: bool = True,
                 backend: str | None = None) -> None:
        #: the same numbers as ElmoOptions (``lstm.n_layers``, ``output_dim``, the char-CNN with this model's table
        #: size and characters per token); not a bilm-tf options file (see :func:`to_bilm_tf` for that)
        options = ElmoOptions(lstm=config.lstm_options(), char_cnn=config.char_cnn_options(n_char_rows),
                              extra={"efml": True})
        super().__init__(options, stateful=stateful, has_projection=True, backend=backend)
        self.config = config
        self.char_lexicon = dict(char_lexicon)
        self.word_lexicon = dict(word_lexicon) if word_lexicon is not None else None
        F_, P = config.n_filters, config.projection_dim
        # EFML's table size, and no projection inside the encoder: it runs over [word; char] in embed_tokens
        self.token_encoder = CharCNNTokenEncoder(config.char_cnn_options(n_char_rows), F_, has_projection=False,
                                                 n_symbols=n_char_rows)
        if config.word_dim > 0:
            self.word_embed = nn.Parameter(torch.empty(n_word_rows, config.word_dim))
        else:
            self.register_parameter("word_embed", None)
        self.W_proj = nn.Parameter(torch.empty(config.word_dim + F_, P))  # x @ W_proj (TF orientation)
        self.b_proj = nn.Parameter(torch.empty(P))
        self.output_dim = config.output_dim
        self.files: list[str] = []
        # character ids of a token, +1 shifted (0 = no token): EFML's markers are swapped
        self._first = self.char_lexicon["<eow>"] + 1
        self._last = self.char_lexicon["<bow>"] + 1
        self._pad = self.char_lexicon["<pad>"] + 1
        self._oov = self.char_lexicon["<oov>"] + 1
        # the model's own marker tokens replace the BiLM's bilm-tf ones
        self.bos_ids = torch.tensor(self.token_char_ids("<bos>"), dtype=torch.long)
        self.eos_ids = torch.tensor(self.token_char_ids("<eos>"), dtype=torch.long)
        if self.word_lexicon is not None:
            self.register_buffer("bos_word", torch.tensor(self.word_id("<bos>")), persistent=False)
            self.register_buffer("eos_word", torch.tensor(self.word_id("<eos>")), persistent=False)

    # ------------------------------------------------------------------ inputs
    def _cut(self, token: str) -> str:
        keep = self.config.max_chars - 2
        return token[:keep] if len(token) > keep else token

    def token_char_ids(self, token: str) -> list[int]:
        """The ``L`` (+1 shifted) character ids of one token (cut to ``max_characters_per_token - 2``)."""
        token = self._cut(token)
        ids = [self._pad] * self.config.max_chars
        ids[0] = self._first
        if token in ("<bos>", "<eos>"):
            ids[1] = self.char_lexicon[token] + 1
            ids[2] = self._last
            return ids
        lex, oov = self.char_lexicon, self._oov
        for k, ch in enumerate(token):
            ids[k + 1] = lex[ch] + 1 if ch in lex else oov
        ids[len(token) + 1] = self._last
        return ids

    def word_id(self, token: str) -> int:
        """The word-embedding row of a token (cut like its characters; unknown -> ``<oov>``)."""
        assert self.word_lexicon is not None
        token = self._cut(token)
        return self.word_lexicon.get(token, self.word_lexicon["<oov>"])

    def prepare_inputs(self, sentences: Sequence[Sequence[str]]) -> tuple[torch.Tensor, ...]:
        """Sentences -> ``(char_ids (B, T, L) int64,)`` or ``(char_ids, word_ids (B, T) int64)`` (no markers;
        ``T`` = the longest sentence; padding positions are all-zero ids)."""
        batch = len(sentences)
        steps = max((len(s) for s in sentences), default=0)
        chars = np.zeros((batch, steps, self.config.max_chars), dtype=np.int64)
        words = None
        if self.word_lexicon is not None:
            words = np.full((batch, steps), self.word_lexicon["<pad>"], dtype=np.int64)
        cache: dict[str, list[int]] = {}
        for b, sentence in enumerate(sentences):
            for t, token in enumerate(sentence):
                if not isinstance(token, str):
                    raise TypeError(f"sentence {b}, token {t}: expected str, found {type(token).__name__}")
                ids = cache.get(token)
                if ids is None:
                    ids = cache[token] = self.token_char_ids(token)
                chars[b, t] = ids
                if words is not None:
                    words[b, t] = self.word_id(token)
        if words is None:
            return (torch.from_numpy(chars),)
        return torch.from_numpy(chars), torch.from_numpy(words)

    # ------------------------------------------------------------------ files
    def source_files(self) -> list[str]:
        """The model files (for fingerprints)."""
        return list(self.files)

    @classmethod
    def from_files(cls, *args: Any, **kwargs: Any) -> "EFMLBiLM":
        raise TypeError("an ELMoForManyLangs model is a directory: load it with elmo_fast.efml.load_efml")

    def bilm_tf_parameters(self) -> dict[str, nn.Parameter]:
        """Refused: EFML's layout has no bilm-tf equivalent in general (:func:`elmo_fast.efml.to_bilm_tf`)."""
        raise TypeError("an ELMoForManyLangs model has no bilm-tf weight layout; convert it with "
                        "elmo_fast.efml.to_bilm_tf (or `elmo-fast convert`) where that is exact")

    # ------------------------------------------------------------------ forward
    def embed_tokens(self, char_ids: torch.Tensor, word_ids: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, L)`` (+ ``(B, T)`` word ids) -> token embeddings ``(B, T+2, P)`` with the markers, mask
        ``(B, T+2)``: the BiLM's token-encoder op (``(N, F)`` features), then ``[word; char] @ W_proj + b``."""
        L = self.config.max_chars
        if char_ids.dim() != 3 or char_ids.shape[-1] != L:
            raise ValueError(f"char_ids: expected shape (B, T, {L}), found {tuple(char_ids.shape)}")
        mask = token_mask(char_ids)
        ids, new_mask = add_sentence_boundaries(char_ids, mask, self.bos_ids, self.eos_ids)
        feats = self.encode_tokens(ids).reshape(-1, self.config.n_filters)  # (N, F)
        if self.word_embed is not None:
            if word_ids is None:
                raise ValueError("this model has a word embedding: forward needs word_ids (see prepare_inputs)")
            if tuple(word_ids.shape) != tuple(char_ids.shape[:2]):
                raise ValueError(f"word_ids: expected shape {tuple(char_ids.shape[:2])}, "
                                 f"found {tuple(word_ids.shape)}")
            wids, _ = add_sentence_boundaries(word_ids, mask, self.bos_word, self.eos_word)
            words = torch.nn.functional.embedding(wids.reshape(-1), self.word_embed)
            x = torch.cat([words, feats], dim=-1)
        else:
            x = feats
        name = self.backend_name(ids.device, "token_encoder")
        emb = backends.get_op(name, "projection")(x.contiguous(), self.W_proj, self.b_proj)
        return emb.reshape(ids.shape[0], ids.shape[1], -1), new_mask

    def forward(self, char_ids: torch.Tensor, word_ids: torch.Tensor | None = None) -> dict[str, Any]:
        """Run the model (the biLSTM part is :meth:`BiLM.forward_embeddings`); see the class docstring."""
        embeddings, mask = self.embed_tokens(char_ids, word_ids)
        return self.forward_embeddings(embeddings, mask)

    # ------------------------------------------------------------------ weights
    def load_efml_state(self, token_state: dict[str, torch.Tensor], encoder_state: dict[str, torch.Tensor],
                        token_path: Path, encoder_path: Path) -> None:
        """Copy the two EFML ``state_dict`` s into this module (every name and shape checked)."""
        cfg = self.config
        F_, P, C, d = cfg.n_filters, cfg.projection_dim, cfg.cell_dim, cfg.char_dim
        expected = {"char_emb_layer.embedding.weight", "projection.weight", "projection.bias"}
        expected |= {f"convolutions.{i}.{k}" for i in range(len(cfg.filters)) for k in ("weight", "bias")}
        expected |= {f"highways._layers.{k}.{n}" for k in range(cfg.n_highway) for n in ("weight", "bias")}
        if cfg.word_dim > 0:
            expected.add("word_emb_layer.embedding.weight")
        check_keys(token_state, expected, token_path)
        enc_expected = {f"{side}_layer_{l}.{n}" for side in ("forward", "backward") for l in range(cfg.n_layers)
                        for n in ("input_linearity.weight", "state_linearity.weight", "state_linearity.bias",
                                  "state_projection.weight")}
        check_keys(encoder_state, enc_expected, encoder_path)
        te = self.token_encoder
        with torch.no_grad():
            te.char_embed.copy_(checked_tensor(token_state, "char_emb_layer.embedding.weight",
                                               tuple(te.char_embed.shape), token_path))
            for i, (w, n) in enumerate(cfg.filters):
                W = checked_tensor(token_state, f"convolutions.{i}.weight", (n, d, w), token_path)
                te.conv_weights[i].copy_(W.permute(2, 1, 0).unsqueeze(0))
                te.conv_biases[i].copy_(checked_tensor(token_state, f"convolutions.{i}.bias", (n,), token_path))
            for k, hw in enumerate(te.highways):
                W = checked_tensor(token_state, f"highways._layers.{k}.weight", (2 * F_, F_), token_path)
                b = checked_tensor(token_state, f"highways._layers.{k}.bias", (2 * F_,), token_path)
                hw.W_transform.copy_(W[:F_].t())
                hw.b_transform.copy_(b[:F_])
                hw.W_carry.copy_(-W[F_:].t())  # EFML gates the input: g * x + (1 - g) * t
                hw.b_carry.copy_(-b[F_:])
            if self.word_embed is not None:
                self.word_embed.copy_(checked_tensor(token_state, "word_emb_layer.embedding.weight",
                                              tuple(self.word_embed.shape), token_path))
            self.W_proj.copy_(checked_tensor(token_state, "projection.weight", (P, cfg.word_dim + F_), token_path).t())
            self.b_proj.copy_(checked_tensor(token_state, "projection.bias", (P,), token_path))
            for direction, side in enumerate(("forward", "backward")):
                for layer, cell in enumerate(self.lstm.cells[direction]):
                    pre = f"{side}_layer_{layer}"
                    W_in = checked_tensor(encoder_state, f"{pre}.input_linearity.weight", (4 * C, P), encoder_path)
                    W_h = checked_tensor(encoder_state, f"{pre}.state_linearity.weight", (4 * C, P), encoder_path)
                    b = checked_tensor(encoder_state, f"{pre}.state_linearity.bias", (4 * C,), encoder_path)
                    W_P = checked_tensor(encoder_state, f"{pre}.state_projection.weight", (P, C), encoder_path)
                    cell.W_0.copy_(_reorder_gates(torch.cat([W_in.t(), W_h.t()], dim=0), C))
                    cell.B.copy_(lstm_bias_from_total(_reorder_gates(b, C), C))
                    cell.W_P_0.copy_(W_P.t())


def lstm_bias_from_total(bias: torch.Tensor, cell: int) -> torch.Tensor:
    """The value for :class:`~elmo_fast.nn.lstm.LSTMCellWeights` ``.B`` given the *total* gate bias ``(4C,)``
    in (i, j, f, o) order (what EFML stores and uses, no forget bias added).

    The reference LSTM adds ``FORGET_BIAS`` to the f block at run time, so it is subtracted here (float32
    rounding of ``(b - 1) + 1`` only).
    """
    forget = float(FORGET_BIAS)
    if not forget:
        return bias.clone()
    out = bias.clone()
    out[2 * cell:3 * cell] -= forget
    return out


def load_efml(model_dir: str | os.PathLike, *, stateful: bool = True, backend: str | None = None,
              requires_grad: bool = False) -> EFMLBiLM:
    """Load an ELMoForManyLangs model directory as an :class:`EFMLBiLM` (the layout: :mod:`elmo_fast.efml`)."""
    root = Path(model_dir)
    if not root.is_dir():
        raise UserError(f"{root}: not a directory (expected an ELMoForManyLangs model directory)")
    missing = [name for name in EFML_FILES if not (root / name).is_file()]
    if missing:
        raise UserError(f"{root}: not an ELMoForManyLangs model directory: missing {missing}")
    arch, arch_source = architecture_file(root)
    config = EFMLConfig.from_dict(arch, arch_source)
    token_path, encoder_path = root / "token_embedder.pkl", root / "encoder.pkl"
    token_state = load_torch_state(token_path)
    encoder_state = load_torch_state(encoder_path)
    char_path = root / "char.dic"
    char_lexicon = read_lexicon(char_path)
    char_table = token_state.get("char_emb_layer.embedding.weight")
    if char_table is None or char_table.dim() != 2:
        raise UserError(f"{token_path}: tensor 'char_emb_layer.embedding.weight' (rows, {config.char_dim}) is missing")
    check_lexicon_rows(char_lexicon, CHAR_SPECIALS, char_path, int(char_table.shape[0]))
    word_lexicon, n_word_rows = None, 0
    files = [str(root / "config.json")] + ([arch_source] if os.path.isfile(arch_source) else [])
    files += [str(char_path)]
    if config.word_dim > 0:
        word_path = root / "word.dic"
        if not word_path.is_file():
            raise UserError(f"{root}: the architecture has a word embedding (word_dim {config.word_dim}) but "
                            "word.dic is missing")
        word_lexicon = read_lexicon(word_path)
        table = token_state.get("word_emb_layer.embedding.weight")
        if table is None or table.dim() != 2:
            raise UserError(f"{token_path}: tensor 'word_emb_layer.embedding.weight' (rows, {config.word_dim}) "
                            "is missing")
        n_word_rows = int(table.shape[0])
        check_lexicon_rows(word_lexicon, WORD_SPECIALS, word_path, n_word_rows)
        files.append(str(word_path))
    files += [str(token_path), str(encoder_path)]
    model = EFMLBiLM(config, char_lexicon, int(char_table.shape[0]), word_lexicon, n_word_rows,
                     stateful=stateful, backend=backend)
    model.load_efml_state(token_state, encoder_state, token_path, encoder_path)
    model.files = files
    model.requires_grad_(requires_grad)
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------- API
def sents2elmo(model: EFMLBiLM, sents: Sequence[Sequence[str]], output_layer: int = -1,
               batch_size: int = 64) -> list[np.ndarray]:
    """The package's ``Embedder.sents2elmo`` on an :class:`EFMLBiLM`: one float32 array per sentence.

    Args:
        model: from :func:`load_efml`. With ``model.stateful`` the states carry from batch to batch in input
            order (the package shuffles its batch order at random, so its stateful output is not
            reproducible; with ``stateful=False`` the numbers equal the package's on a fresh model).
        sents: tokenized sentences.
        output_layer: 0..n_layers for one layer ``(n, 2P)``, -1 for the unweighted mean of all layers
            ``(n, 2P)``, -2 for all layers ``(n_layers + 1, n, 2P)``.
        batch_size: sentences per forward call.
    """
    n_out = model.config.n_layers + 1
    if isinstance(output_layer, bool) or output_layer not in (-2, -1, *range(n_out)):
        raise UserError(f"output_layer: expected -2 (all), -1 (mean) or 0..{n_out - 1}, found {output_layer!r}")
    if batch_size < 1:
        raise UserError(f"batch_size: expected a positive integer, found {batch_size}")
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(sents), batch_size):
            chunk = [list(s) for s in sents[start:start + batch_size]]
            inputs = [t.to(device) for t in model.prepare_inputs(chunk)]
            layers = torch.stack(model(*inputs)["activations"], dim=1).cpu().numpy()  # (B, n_out, T+2, 2P)
            for b, sentence in enumerate(chunk):
                data = layers[b, :, 1:len(sentence) + 1]
                if output_layer == -1:  # the package's np.average; it raises ZeroDivisionError on an empty sentence
                    out.append(np.average(data, axis=0) if data.size else np.zeros(data.shape[1:], np.float32))
                elif output_layer == -2:
                    out.append(np.ascontiguousarray(data))
                else:
                    out.append(np.ascontiguousarray(data[output_layer]))
    return out
