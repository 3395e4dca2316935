"""ELMoForManyLangs (EFML) model directories, run on elmo-fast's backends.

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
  the package's ``padding_idx`` blocks its gradient, so it is never trained, but it is not zero). The sentence markers are the tokens ``<bos>`` and
  ``<eos>`` (chars ``[id('<eow>'), id('<bos>'), id('<bow>'), pad ...]``); a literal input token ``<bos>``
  reads the same way.
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
* the word embedding and the projection (one matmul over ``[word; char]``, as EFML does) run here;
  on the ``triton`` backend the projection uses the Triton projection kernel;
* the LSTM weights are transposed and the gate blocks reordered to bilm-tf's (i, j, f, o) layout of
  :class:`~elmo_fast.nn.lstm.BiLSTM`, the bias carrying EFML's stored forget bias.

Limits: only ``token_embedder.name == "cnn"`` with ``char_dim > 0`` and ``encoder.name == "elmo"`` (the
published models) are supported; the package's LSTM token embedder and plain-LSTM encoder are refused.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from . import backend as backends
from . import numerics
from .errors import UserError
from .nn.bilm import add_sentence_boundaries, token_mask
from .nn.lstm import BiLSTM, StateSlots
from .nn.token_encoder import CharCNNTokenEncoder
from .options import CharCNNOptions, ElmoOptions, LSTMOptions

__all__ = ["EFMLConfig", "EFMLBiLM", "is_efml_dir", "load_efml", "read_lexicon", "load_torch_state",
           "sents2elmo", "EFML_FILES"]

logger = logging.getLogger(__name__)

#: the files that make an ELMoForManyLangs model directory (``word.dic`` only when word_dim > 0)
EFML_FILES = ("config.json", "char.dic", "token_embedder.pkl", "encoder.pkl")
CHAR_SPECIALS = ("<bos>", "<eos>", "<oov>", "<pad>", "<bow>", "<eow>")
WORD_SPECIALS = ("<oov>", "<pad>")

#: The architecture both published files (``cnn_0_100_512_4096_sample.json`` and
#: ``cnn_50_100_512_4096_sample.json``, identical) describe; used when a model directory names one of them
#: but does not contain it (the package falls back to its own copy the same way).
PUBLISHED_ARCHITECTURE: dict[str, Any] = {
    "encoder": {"name": "elmo", "projection_dim": 512, "cell_clip": 3, "proj_clip": 3, "dim": 4096,
                "n_layers": 2},
    "token_embedder": {"name": "cnn", "activation": "relu",
                       "filters": [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]],
                       "n_highway": 2, "word_dim": 100, "char_dim": 50, "max_characters_per_token": 50},
    "classifier": {"name": "sampled_softmax", "n_samples": 8192},
    "dropout": 0.1,
}
PUBLISHED_ARCHITECTURE_NAMES = ("cnn_0_100_512_4096_sample.json", "cnn_50_100_512_4096_sample.json")

#: sanity bounds checked before anything is allocated
_MAX_DIM = 1 << 16
_MAX_CHARS = 1024
_MAX_ROWS = 1 << 24


# ---------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class EFMLConfig:
    """The numbers of an EFML architecture file (validated)."""

    filters: tuple[tuple[int, int], ...]
    char_dim: int
    word_dim: int
    n_highway: int
    activation: str
    max_chars: int
    projection_dim: int
    cell_dim: int
    n_layers: int
    cell_clip: float | None
    proj_clip: float | None
    source: str = "<config>"

    @property
    def n_filters(self) -> int:
        return sum(n for _, n in self.filters)

    @property
    def output_dim(self) -> int:
        return 2 * self.projection_dim

    @classmethod
    def from_dict(cls, d: Any, source: str = "<config>") -> "EFMLConfig":
        """Validate an architecture dict (the content of the file ``config.json`` points at)."""
        def need(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
            if not isinstance(obj, dict) or key not in obj:
                raise UserError(f"{source}: field '{where}{key}' is missing")
            value = obj[key]
            if isinstance(value, bool) or not isinstance(value, kind):
                raise UserError(f"{source}: field '{where}{key}' expected {kind}, found {value!r}")
            return value

        def positive(value: int, name: str, limit: int = _MAX_DIM, low: int = 1) -> int:
            if not low <= value <= limit:
                raise UserError(f"{source}: field '{name}' expected an integer in [{low}, {limit}], found {value}")
            return value

        enc = need(d, "encoder", dict, "")
        tok = need(d, "token_embedder", dict, "")
        enc_name = str(need(enc, "name", str, "encoder.")).lower()
        tok_name = str(need(tok, "name", str, "token_embedder.")).lower()
        if enc_name != "elmo":
            raise UserError(f"{source}: field 'encoder.name' is {enc_name!r}; only 'elmo' encoders are supported "
                            "(the published ELMoForManyLangs models)")
        if tok_name != "cnn":
            raise UserError(f"{source}: field 'token_embedder.name' is {tok_name!r}; only 'cnn' token embedders "
                            "are supported (the published ELMoForManyLangs models)")
        char_dim = positive(need(tok, "char_dim", int, "token_embedder."), "token_embedder.char_dim", low=0)
        if char_dim == 0:
            raise UserError(f"{source}: field 'token_embedder.char_dim' is 0 (a word-only model); only models with a "
                            "character CNN are supported")
        word_dim = positive(need(tok, "word_dim", int, "token_embedder."), "token_embedder.word_dim", low=0)
        raw_filters = need(tok, "filters", list, "token_embedder.")
        filters = []
        for k, f in enumerate(raw_filters):
            if (not isinstance(f, (list, tuple)) or len(f) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in f)):
                raise UserError(f"{source}: field 'token_embedder.filters[{k}]' expected [width, count], found {f!r}")
            filters.append((positive(f[0], f"token_embedder.filters[{k}][0]", _MAX_CHARS),
                            positive(f[1], f"token_embedder.filters[{k}][1]")))
        if not filters:
            raise UserError(f"{source}: field 'token_embedder.filters' is empty")
        activation = need(tok, "activation", str, "token_embedder.")
        if activation not in ("relu", "tanh"):
            raise UserError(f"{source}: field 'token_embedder.activation' expected 'relu' or 'tanh', found {activation!r}")
        max_chars = positive(need(tok, "max_characters_per_token", int, "token_embedder."),
                             "token_embedder.max_characters_per_token", _MAX_CHARS, low=3)
        widest = max(w for w, _ in filters)
        if widest > max_chars:
            raise UserError(f"{source}: filter width {widest} is wider than max_characters_per_token {max_chars}")

        def clip(name: str) -> float | None:
            value = enc.get(name)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise UserError(f"{source}: field 'encoder.{name}' expected a finite number >= 0, found {value!r}")
            return float(value) if value else None  # EFML: 0 means no clipping (`if clip:`)

        return cls(filters=tuple(filters), char_dim=char_dim, word_dim=word_dim,
                   n_highway=positive(need(tok, "n_highway", int, "token_embedder."), "token_embedder.n_highway",
                                      64, low=0),
                   activation=activation, max_chars=max_chars,
                   projection_dim=positive(need(enc, "projection_dim", int, "encoder."), "encoder.projection_dim"),
                   cell_dim=positive(need(enc, "dim", int, "encoder."), "encoder.dim"),
                   n_layers=positive(need(enc, "n_layers", int, "encoder."), "encoder.n_layers", 64),
                   cell_clip=clip("cell_clip"), proj_clip=clip("proj_clip"), source=source)

    def char_cnn_options(self, n_symbols: int) -> CharCNNOptions:
        return CharCNNOptions(filters=self.filters, embedding_dim=self.char_dim, n_highway=self.n_highway,
                              activation=self.activation, n_characters=n_symbols + 1,
                              max_characters_per_token=self.max_chars)

    def lstm_options(self) -> LSTMOptions:
        return LSTMOptions(dim=self.cell_dim, projection_dim=self.projection_dim, n_layers=self.n_layers,
                           cell_clip=self.cell_clip, proj_clip=self.proj_clip, use_skip_connections=True)


def _read_json(path: Path) -> Any:
    from .textfile import read_json_file
    return read_json_file(path, "JSON file")


def architecture_file(model_dir: Path) -> tuple[dict[str, Any], str]:
    """The architecture dict named by ``config.json``'s ``config_path`` and where it was found."""
    cfg_file = model_dir / "config.json"
    args = _read_json(cfg_file)
    if not isinstance(args, dict) or not isinstance(args.get("config_path"), str):
        raise UserError(f"{cfg_file}: expected a JSON object with a string field 'config_path' (the architecture "
                        f"file), found {type(args).__name__}" + ("" if not isinstance(args, dict) else
                                                               f" with keys {sorted(args)[:10]}"))
    named = args["config_path"]
    candidates = [model_dir / named, model_dir / os.path.basename(named)]
    for path in candidates:
        if path.is_file():
            return _read_json(path), str(path)
    base = os.path.basename(named)
    if base in PUBLISHED_ARCHITECTURE_NAMES:
        logger.warning("%s: architecture file %r not in the model directory; using the published %s",
                       cfg_file, named, base)
        return json.loads(json.dumps(PUBLISHED_ARCHITECTURE)), f"published {base}"
    raise UserError(f"{cfg_file}: field 'config_path' names {named!r}, found neither "
                    f"{candidates[0]} nor {candidates[1]} (and it is not one of the published architectures "
                    f"{list(PUBLISHED_ARCHITECTURE_NAMES)})")


# ---------------------------------------------------------------------------------------------- files
def read_lexicon(path: str | os.PathLike) -> dict[str, int]:
    """Read ``char.dic`` / ``word.dic`` the way the package does.

    Lines are split as Python's ``str.splitlines`` splits them (the package reads through ``codecs``, which
    also breaks at U+2028, U+0085, ...); each line is stripped, then split at tabs; a line left with one
    field is the id of the symbol U+3000 (how the package recovers a whitespace symbol that the strip
    removed). A later line overrides an earlier one with the same symbol.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 ({e})") from None
    lexicon: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.strip().split("\t")
        if len(fields) == 1:
            fields.insert(0, "\u3000")
        if len(fields) != 2:
            raise UserError(f"{path}:{lineno}: expected 'symbol<TAB>id', found {line!r}")
        symbol, value = fields
        try:
            index = int(value)
        except ValueError:
            raise UserError(f"{path}:{lineno}: expected an integer id, found {value!r}") from None
        if not 0 <= index < _MAX_ROWS:
            raise UserError(f"{path}:{lineno}: id {index} out of range [0, {_MAX_ROWS})")
        lexicon[symbol] = index
    return lexicon


def load_torch_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A ``state_dict`` saved with ``torch.save``, read with ``weights_only=True`` (no code is executed).

    Raises:
        UserError: the file is missing, not a torch file, holds more than tensors (a pickled object whose
            loading would run code: refused), or is not a flat name -> tensor mapping.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except pickle.UnpicklingError as e:
        text = str(e)
        match = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if match:
            raise UserError(f"{path}: refused: the pickle names {match.group(1)}, which torch.load(weights_only=True) "
                            "does not allow: the file holds more than tensors and loading it would run code from "
                            "the model folder") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.S)
        raise UserError(f"{path}: not a torch state_dict file readable with weights_only=True "
                        f"({detail.group(1).strip() if detail else text.strip().splitlines()[0]})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise UserError(f"{path}: not a readable torch file ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise UserError(f"{path}: expected a state_dict (name -> tensor), found {type(state).__name__}")
    return dict(state)


def _tensor(state: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], path: Path) -> torch.Tensor:
    if name not in state:
        raise UserError(f"{path}: tensor '{name}' is missing (found {sorted(state)[:8]}...)")
    t = state[name]
    if tuple(t.shape) != tuple(shape):
        raise UserError(f"{path}: tensor '{name}' expected shape {tuple(shape)}, found {tuple(t.shape)}")
    if not t.is_floating_point():
        raise UserError(f"{path}: tensor '{name}' expected floating point values, found {t.dtype}")
    t = t.detach().to(torch.float32)
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        first = [int(i) for i in torch.nonzero(bad)[0]]
        raise UserError(f"{path}: tensor '{name}' holds {int(bad.sum())} NaN/Inf values (first at index {first})")
    return t


def _check_keys(state: dict[str, torch.Tensor], expected: set[str], path: Path) -> None:
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise UserError(f"{path}: state_dict does not match the architecture file: missing {missing}, "
                        f"unexpected {extra}")


def _lexicon_rows(lexicon: dict[str, int], required: Sequence[str], path: Path, rows: int) -> None:
    missing = [s for s in required if s not in lexicon]
    if missing:
        raise UserError(f"{path}: the special symbols {missing} are missing")
    top = max(lexicon.values())
    if top >= rows:
        raise UserError(f"{path}: id {top} is outside the embedding table's {rows} rows")


def is_efml_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory holding the ELMoForManyLangs model files."""
    p = Path(path)
    return p.is_dir() and all((p / name).is_file() for name in EFML_FILES)


# ---------------------------------------------------------------------------------------------- model
#: EFML's gate blocks (i, f, g, o) -> bilm-tf's (i, j=g, f, o)
_GATE_ORDER = (0, 2, 1, 3)


def _reorder_gates(t: torch.Tensor, cell: int) -> torch.Tensor:
    """Permute the 4 gate blocks along the last axis from EFML's order to bilm-tf's."""
    blocks = t.split(cell, dim=-1)
    return torch.cat([blocks[k] for k in _GATE_ORDER], dim=-1)


class EFMLBiLM(nn.Module):
    """An ELMoForManyLangs model as a biLM-like module (what :class:`~elmo_fast.ElmoEmbedder` wraps).

    ``forward(char_ids (B, T, L), word_ids (B, T) or None)`` -> ``{"activations": [n_layers + 1 tensors
    (B, T+2, 2P)], "mask": (B, T+2) bool}``, with the ``<bos>``/``<eos>`` positions included, zeros at padding.
    Inputs come from :meth:`prepare_inputs`. Stateful like the package by default; with ``stateful=False``
    every call starts from zero states (the only output of the package that is reproducible).

    Build it with :func:`load_efml`.
    """

    def __init__(self, config: EFMLConfig, char_lexicon: dict[str, int], n_char_rows: int,
                 word_lexicon: dict[str, int] | None = None, n_word_rows: int = 0, *, stateful: bool = True,
                 backend: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.backend = backend
        self.stateful = stateful
        self.char_lexicon = dict(char_lexicon)
        self.word_lexicon = dict(word_lexicon) if word_lexicon is not None else None
        F_, P = config.n_filters, config.projection_dim
        self.token_encoder = CharCNNTokenEncoder(config.char_cnn_options(n_char_rows), F_, has_projection=False,
                                                 n_symbols=n_char_rows)
        if config.word_dim > 0:
            self.word_embed = nn.Parameter(torch.empty(n_word_rows, config.word_dim))
        else:
            self.register_parameter("word_embed", None)
        self.W_proj = nn.Parameter(torch.empty(config.word_dim + F_, P))  # x @ W_proj (TF orientation)
        self.b_proj = nn.Parameter(torch.empty(P))
        self.lstm = BiLSTM(config.lstm_options())
        self.states = StateSlots()
        self.output_dim = config.output_dim
        #: the same numbers as ElmoOptions (``lstm.n_layers``, ``output_dim``, the char-CNN with this model's table
        #: size and characters per token); not a bilm-tf options file (see :func:`to_bilm_tf` for that)
        self.options = ElmoOptions(lstm=config.lstm_options(), char_cnn=config.char_cnn_options(n_char_rows),
                                   extra={"efml": True})
        self.files: list[str] = []
        # character ids of a token, +1 shifted (0 = no token): EFML's markers are swapped
        self._first = self.char_lexicon["<eow>"] + 1
        self._last = self.char_lexicon["<bow>"] + 1
        self._pad = self.char_lexicon["<pad>"] + 1
        self._oov = self.char_lexicon["<oov>"] + 1
        self.register_buffer("bos_ids", torch.tensor(self.token_char_ids("<bos>"), dtype=torch.long),
                             persistent=False)
        self.register_buffer("eos_ids", torch.tensor(self.token_char_ids("<eos>"), dtype=torch.long),
                             persistent=False)
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

    # ------------------------------------------------------------------ state / files
    def reset_states(self) -> None:
        """Forget the carried LSTM states."""
        self.states.reset()

    def source_files(self) -> list[str]:
        """The model files (for fingerprints)."""
        return list(self.files)

    def backend_name(self, device: torch.device, op: str) -> str:
        return backends.resolve(self.backend, device, op)

    # ------------------------------------------------------------------ forward
    def embed_tokens(self, char_ids: torch.Tensor, word_ids: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, L)`` (+ ``(B, T)`` word ids) -> token embeddings ``(B, T+2, P)`` with the markers, mask
        ``(B, T+2)``."""
        L = self.config.max_chars
        if char_ids.dim() != 3 or char_ids.shape[-1] != L:
            raise ValueError(f"char_ids: expected shape (B, T, {L}), found {tuple(char_ids.shape)}")
        mask = token_mask(char_ids)
        ids, new_mask = add_sentence_boundaries(char_ids, mask, self.bos_ids, self.eos_ids)
        name = self.backend_name(ids.device, "token_encoder")
        op = backends.get_op(name, "token_encoder")
        with numerics.use(getattr(self, "precision", None), getattr(self, "order", None)):
            feats = op(self.token_encoder, ids.reshape(-1, L))  # (N, F)
        if self.word_embed is not None:
            if word_ids is None:
                raise ValueError("this model has a word embedding: forward needs word_ids (see prepare_inputs)")
            if tuple(word_ids.shape) != tuple(char_ids.shape[:2]):
                raise ValueError(f"word_ids: expected shape {tuple(char_ids.shape[:2])}, found {tuple(word_ids.shape)}")
            wids, _ = add_sentence_boundaries(word_ids, mask, self.bos_word, self.eos_word)
            words = torch.nn.functional.embedding(wids.reshape(-1), self.word_embed)
            x = torch.cat([words, feats], dim=-1)
        else:
            x = feats
        if name == "triton":
            from .kernels.highway import projection
            emb = projection(x.contiguous(), self.W_proj, self.b_proj)
        else:
            emb = torch.addmm(self.b_proj, x, self.W_proj)
        return emb.reshape(ids.shape[0], ids.shape[1], -1), new_mask

    def forward(self, char_ids: torch.Tensor, word_ids: torch.Tensor | None = None) -> dict[str, Any]:
        """Run the model; see the class docstring."""
        embeddings, mask = self.embed_tokens(char_ids, word_ids)
        lengths = mask.long().sum(dim=1)
        batch = embeddings.shape[0]
        zero = self.lstm.zero_state(batch, embeddings)
        initial = self.states.initial(batch, zero) if self.stateful else zero
        op = backends.get_op(self.backend_name(embeddings.device, "bilstm"), "bilstm")
        with numerics.use(getattr(self, "precision", None), getattr(self, "order", None)):
            outputs, (h, c) = op(self.lstm, embeddings, lengths, initial, 0.0)
        if self.stateful:
            self.states.update(h, c)
        fmask = mask.unsqueeze(-1).to(embeddings.dtype)
        layer0 = torch.cat([embeddings, embeddings], dim=-1) * fmask
        return {"activations": [layer0] + list(outputs), "mask": mask}

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
        _check_keys(token_state, expected, token_path)
        enc_expected = {f"{side}_layer_{l}.{n}" for side in ("forward", "backward") for l in range(cfg.n_layers)
                        for n in ("input_linearity.weight", "state_linearity.weight", "state_linearity.bias",
                                  "state_projection.weight")}
        _check_keys(encoder_state, enc_expected, encoder_path)
        te = self.token_encoder
        with torch.no_grad():
            te.char_embed.copy_(_tensor(token_state, "char_emb_layer.embedding.weight", tuple(te.char_embed.shape),
                                        token_path))
            for i, (w, n) in enumerate(cfg.filters):
                W = _tensor(token_state, f"convolutions.{i}.weight", (n, d, w), token_path)
                te.conv_weights[i].copy_(W.permute(2, 1, 0).unsqueeze(0))
                te.conv_biases[i].copy_(_tensor(token_state, f"convolutions.{i}.bias", (n,), token_path))
            for k, hw in enumerate(te.highways):
                W = _tensor(token_state, f"highways._layers.{k}.weight", (2 * F_, F_), token_path)
                b = _tensor(token_state, f"highways._layers.{k}.bias", (2 * F_,), token_path)
                hw.W_transform.copy_(W[:F_].t())
                hw.b_transform.copy_(b[:F_])
                hw.W_carry.copy_(-W[F_:].t())  # EFML gates the input: g * x + (1 - g) * t
                hw.b_carry.copy_(-b[F_:])
            if self.word_embed is not None:
                self.word_embed.copy_(_tensor(token_state, "word_emb_layer.embedding.weight",
                                              tuple(self.word_embed.shape), token_path))
            self.W_proj.copy_(_tensor(token_state, "projection.weight", (P, cfg.word_dim + F_), token_path).t())
            self.b_proj.copy_(_tensor(token_state, "projection.bias", (P,), token_path))
            for direction, side in enumerate(("forward", "backward")):
                for layer, cell in enumerate(self.lstm.cells[direction]):
                    pre = f"{side}_layer_{layer}"
                    W_in = _tensor(encoder_state, f"{pre}.input_linearity.weight", (4 * C, P), encoder_path)
                    W_h = _tensor(encoder_state, f"{pre}.state_linearity.weight", (4 * C, P), encoder_path)
                    b = _tensor(encoder_state, f"{pre}.state_linearity.bias", (4 * C,), encoder_path)
                    W_P = _tensor(encoder_state, f"{pre}.state_projection.weight", (P, C), encoder_path)
                    cell.W_0.copy_(_reorder_gates(torch.cat([W_in.t(), W_h.t()], dim=0), C))
                    cell.B.copy_(lstm_bias_from_total(_reorder_gates(b, C), C))
                    cell.W_P_0.copy_(W_P.t())


def lstm_bias_from_total(bias: torch.Tensor, cell: int) -> torch.Tensor:
    """The value for :class:`~elmo_fast.nn.lstm.LSTMCellWeights` ``.B`` given the *total* gate bias ``(4C,)``
    in (i, j, f, o) order (what EFML stores and uses, no forget bias added).

    The reference LSTM adds ``FORGET_BIAS`` to the f block at run time, so it is subtracted here (float32
    rounding of ``(b - 1) + 1`` only).
    """
    from .nn import lstm as lstm_mod
    forget = float(getattr(lstm_mod, "FORGET_BIAS", 0.0))
    if not forget:
        return bias.clone()
    out = bias.clone()
    out[2 * cell:3 * cell] -= forget
    return out


def load_efml(model_dir: str | os.PathLike, *, stateful: bool = True, backend: str | None = None,
              requires_grad: bool = False) -> EFMLBiLM:
    """Load an ELMoForManyLangs model directory as an :class:`EFMLBiLM` (see the module docstring)."""
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
    _lexicon_rows(char_lexicon, CHAR_SPECIALS, char_path, int(char_table.shape[0]))
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
        _lexicon_rows(word_lexicon, WORD_SPECIALS, word_path, n_word_rows)
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


# ---------------------------------------------------------------------------------------------- convert
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


def to_bilm_tf(model: EFMLBiLM, ascii_only: bool = False):
    """The equivalent :class:`~elmo_fast.BiLM` (raises :class:`UserError` listing every obstacle, see
    :func:`bilm_tf_obstacles`)."""
    from .chars import BOS_CHAR, BOW_CHAR, EOS_CHAR, EOW_CHAR, PAD_CHAR
    from .nn.bilm import BiLM
    from .options import options_from_dict

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
    from .atomic import write_json
    from .publish import MODEL_FILES, publish_folder
    from .weights import h5_size_estimate, write_weights
    weights = bilm.bilm_tf_weights()
    # one folder, swapped into place whole: with --overwrite an export's softmax and vocabulary (of the model
    # being replaced) are dropped rather than left beside the converted biLM
    publish_folder(out, {"options.json": lambda path: write_json(path, bilm.options.to_dict()),
                         "weights.hdf5": lambda path: write_weights(path, weights)},
                   replaces=MODEL_FILES, needed_bytes=h5_size_estimate(weights.values()) + (1 << 20), what="convert")
    return {"options_file": str(targets[0]), "weight_file": str(targets[1]), "ascii_only": ascii_only,
            "characters": len(model.char_lexicon)}
