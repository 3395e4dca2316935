"""ELMoForManyLangs (EFML) model directories: the files and their validation.

Readers for ``config.json`` and the architecture file it names (:class:`EFMLConfig`), the ``char.dic`` /
``word.dic`` lexicons (:func:`read_lexicon`) and the two ``torch.save`` state dicts (:func:`load_torch_state`,
``weights_only=True``: no code from the model folder runs). Every failure is a :class:`~elmo_fast.errors.UserError`
naming the file and field. The layout is described in :mod:`elmo_fast.efml` and docs/numerics.md.
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

from ..errors import UserError
from ..options import CharCNNOptions, LSTMOptions

__all__ = ["EFML_FILES", "CHAR_SPECIALS", "WORD_SPECIALS", "PUBLISHED_ARCHITECTURE", "PUBLISHED_ARCHITECTURE_NAMES",
           "EFMLConfig", "architecture_file", "read_lexicon", "load_torch_state", "is_efml_dir", "checked_tensor",
           "check_keys", "check_lexicon_rows"]

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
            raise UserError(f"{source}: field 'token_embedder.activation' expected 'relu' or 'tanh', "
                            f"found {activation!r}")
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
    from ..textfile import read_json_file
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


def checked_tensor(state: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], path: Path) -> torch.Tensor:
    """``state[name]`` as float32, refused unless present, of ``shape``, floating point and finite."""
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


def check_keys(state: dict[str, torch.Tensor], expected: set[str], path: Path) -> None:
    """Refuse a state dict whose names are not exactly ``expected`` (listing the missing and the unexpected)."""
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise UserError(f"{path}: state_dict does not match the architecture file: missing {missing}, "
                        f"unexpected {extra}")


def check_lexicon_rows(lexicon: dict[str, int], required: Sequence[str], path: Path, rows: int) -> None:
    """Refuse a lexicon without the ``required`` special symbols or with an id outside the table's ``rows``."""
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
