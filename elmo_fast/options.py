"""``options.json`` <-> a validated :class:`ElmoOptions` dataclass, and the public model presets.

The JSON layout is bilm-tf's (docs/numerics.md#file-layouts): ``{"lstm": {...}, "char_cnn": {...}, <training keys>}``.
Unknown keys are kept in ``extra`` so that a load/save round trip loses nothing.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from typing import Any

from .atomic import write_json
from .errors import UserError

__all__ = ["CharCNNOptions", "LSTMOptions", "ElmoOptions", "OptionsError", "load_options", "PRESETS", "preset",
           "LIMITS", "MAX_PARAMETERS"]

#: upper bounds checked before anything is allocated (generous: the largest public model uses
#: dim 4096, projection 512, 2 layers, 2 highway layers, 7 filters of at most 1024, embedding 16)
LIMITS: dict[str, int] = {
    "dim": 1 << 16, "projection_dim": 1 << 15, "n_layers": 16, "n_highway": 16, "filters": 64,
    "filter_count": 1 << 15, "embedding.dim": 4096,
}
#: the largest model (parameters of options + weights) accepted: 2^31 floats = 8 GiB in float32
MAX_PARAMETERS = 1 << 31


class OptionsError(UserError):
    """An options.json is missing a field or has a value of the wrong type or range."""


@dataclass(frozen=True)
class CharCNNOptions:
    """The character CNN token encoder. ``filters`` is a tuple of (width, count)."""

    filters: tuple[tuple[int, int], ...]
    embedding_dim: int = 16
    n_highway: int = 0
    activation: str = "relu"
    n_characters: int = 262
    max_characters_per_token: int = 50

    @property
    def n_filters(self) -> int:
        """F: total number of CNN features (sum of filter counts)."""
        return sum(n for _, n in self.filters)


@dataclass(frozen=True)
class LSTMOptions:
    """The biLSTM: cell size ``dim`` (C), ``projection_dim`` (P), clips (None = no clip)."""

    dim: int
    projection_dim: int
    n_layers: int = 2
    cell_clip: float | None = None
    proj_clip: float | None = None
    use_skip_connections: bool = True


@dataclass(frozen=True)
class ElmoOptions:
    """Everything in an options.json. ``char_cnn`` is None for word-input models (unsupported here)."""

    lstm: LSTMOptions
    char_cnn: CharCNNOptions | None
    #: training keys (n_tokens_vocab, batch_size, unroll_steps, dropout, ...) and anything unknown
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def projection_dim(self) -> int:
        return self.lstm.projection_dim

    @property
    def output_dim(self) -> int:
        """2P: width of every output layer."""
        return 2 * self.lstm.projection_dim

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = copy.deepcopy(self.extra)
        lstm = {
            "dim": self.lstm.dim,
            "projection_dim": self.lstm.projection_dim,
            "n_layers": self.lstm.n_layers,
            "use_skip_connections": self.lstm.use_skip_connections,
        }
        if self.lstm.cell_clip is not None:
            lstm["cell_clip"] = self.lstm.cell_clip
        if self.lstm.proj_clip is not None:
            lstm["proj_clip"] = self.lstm.proj_clip
        out["lstm"] = {**out.get("lstm", {}), **lstm}
        if self.char_cnn is not None:
            c = self.char_cnn
            out["char_cnn"] = {
                **out.get("char_cnn", {}),
                "activation": c.activation,
                "embedding": {"dim": c.embedding_dim},
                "filters": [[w, n] for w, n in c.filters],
                "n_highway": c.n_highway,
                "n_characters": c.n_characters,
                "max_characters_per_token": c.max_characters_per_token,
            }
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write options.json atomically (temporary file + rename)."""
        write_json(path, self.to_dict())


def _get(d: dict, key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if key not in d:
        if default is ...:
            raise OptionsError(f"{where}: missing required field '{key}'")
        return default
    value = d[key]
    if kind is float and value is None and default is None:
        return None  # an explicit null means "no clip", as an absent field
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if not ok:
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise OptionsError(f"{where}: field '{key}' expected {name}, found {value!r}")
    if kind is float and not math.isfinite(value):
        raise OptionsError(f"{where}: field '{key}' expected a finite number, found {value!r}")
    return value


def _bounded(value: int, name: str, where: str, low: int = 1, limit_key: str | None = None) -> int:
    """Check ``low <= value <= LIMITS[limit_key or name]`` (before anything of that size is allocated)."""
    high = LIMITS[limit_key or name]
    if value < low:
        kind = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise OptionsError(f"{where}: field '{name}' expected {kind}, found {value}")
    if value > high:
        raise OptionsError(f"{where}: field '{name}' expected at most {high}, found {value}")
    return value


def parameter_count(options: "ElmoOptions") -> int:
    """Number of float parameters a weight file for ``options`` holds (char-CNN, highway, projection, LSTM)."""
    lstm = options.lstm
    P, C = lstm.projection_dim, lstm.dim
    total = 2 * lstm.n_layers * (2 * P * 4 * C + 4 * C + C * P)
    if options.char_cnn is not None:
        c = options.char_cnn
        F, d = c.n_filters, c.embedding_dim
        # char_embed has 261 rows (docs/numerics.md#file-layouts)
        total += 261 * d + sum(w * d * n + n for w, n in c.filters) + c.n_highway * (2 * F * F + 2 * F) + F * P + P
    return total


def options_from_dict(d: dict[str, Any], source: str = "<options>") -> ElmoOptions:
    """Validate a parsed options.json. ``source`` names the file in error messages."""
    if not isinstance(d, dict):
        raise OptionsError(f"{source}: expected a JSON object, found {type(d).__name__}")
    lstm_d = _get(d, "lstm", dict, source)
    w = f"{source} [lstm]"
    dim = _get(lstm_d, "dim", int, w)
    proj = _get(lstm_d, "projection_dim", int, w, dim)
    n_layers = _get(lstm_d, "n_layers", int, w, 1)
    cell_clip = _get(lstm_d, "cell_clip", float, w, None)
    proj_clip = _get(lstm_d, "proj_clip", float, w, None)
    skip = _get(lstm_d, "use_skip_connections", bool, w, False)
    for name, value in (("dim", dim), ("projection_dim", proj), ("n_layers", n_layers)):
        _bounded(value, name, w)
    for name, value in (("cell_clip", cell_clip), ("proj_clip", proj_clip)):
        if value is not None and value <= 0:
            raise OptionsError(f"{w}: field '{name}' expected a positive number, found {value}")
    lstm = LSTMOptions(dim, proj, n_layers, cell_clip, proj_clip, skip)

    char_cnn = None
    if "char_cnn" in d:
        c = _get(d, "char_cnn", dict, source)
        w = f"{source} [char_cnn]"
        raw_filters = _get(c, "filters", list, w)
        if len(raw_filters) > LIMITS["filters"]:
            raise OptionsError(f"{w}: field 'filters' expected at most {LIMITS['filters']} filters, "
                               f"found {len(raw_filters)}")
        filters = []
        for k, f in enumerate(raw_filters):
            if (not isinstance(f, (list, tuple)) or len(f) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in f)):
                raise OptionsError(f"{w}: filters[{k}] expected [width, count] of positive integers, found {f!r}")
            _bounded(f[1], f"filters[{k}] count", w, limit_key="filter_count")
            filters.append((int(f[0]), int(f[1])))
        if not filters:
            raise OptionsError(f"{w}: field 'filters' expected at least one [width, count], found []")
        emb = _get(c, "embedding", dict, w)
        emb_dim = _bounded(_get(emb, "dim", int, f"{w} [embedding]"), "embedding.dim", w)
        activation = _get(c, "activation", str, w, "relu")
        if activation not in ("relu", "tanh"):
            raise OptionsError(f"{w}: field 'activation' expected 'relu' or 'tanh', found {activation!r}")
        n_chars = _get(c, "n_characters", int, w, 262)
        if n_chars not in (261, 262):
            raise OptionsError(f"{w}: field 'n_characters' expected 262 (inference) or 261 (training), found {n_chars}")
        max_chars = _get(c, "max_characters_per_token", int, w, 50)
        if max_chars != 50:
            raise OptionsError(f"{w}: field 'max_characters_per_token' expected 50, found {max_chars}")
        widest = max(wd for wd, _ in filters)
        if widest > max_chars:
            raise OptionsError(f"{w}: filter width {widest} is wider than max_characters_per_token {max_chars}")
        n_highway = _bounded(_get(c, "n_highway", int, w, 0), "n_highway", w, low=0)
        char_cnn = CharCNNOptions(tuple(filters), emb_dim, n_highway, activation, n_chars, max_chars)
    extra = {k: copy.deepcopy(v) for k, v in d.items() if k not in ("lstm", "char_cnn")}
    options = ElmoOptions(lstm, char_cnn, extra)
    n_params = parameter_count(options)
    if n_params > MAX_PARAMETERS:
        raise OptionsError(f"{source}: the model would have {n_params:,} parameters; expected at most "
                           f"{MAX_PARAMETERS:,} (check 'dim', 'projection_dim', 'n_layers', 'n_highway', 'filters')")
    return options


def load_options(path: str | os.PathLike) -> ElmoOptions:
    """Read and validate an options.json file (errors name the file and the field; encodings, invalid JSON and
    deep nesting as :func:`elmo_fast.textfile.read_json_file`)."""
    from .textfile import read_json_file
    path = os.fspath(path)
    return options_from_dict(read_json_file(path, "options file", OptionsError), source=path)


_PUBLIC_FILTERS = [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]]


def _public(dim: int, proj: int, n_highway: int) -> dict[str, Any]:
    return {
        "lstm": {"dim": dim, "projection_dim": proj, "n_layers": 2, "cell_clip": 3, "proj_clip": 3,
                 "use_skip_connections": True},
        "char_cnn": {"activation": "relu", "embedding": {"dim": 16}, "filters": _PUBLIC_FILTERS,
                     "n_highway": n_highway, "n_characters": 262, "max_characters_per_token": 50},
    }


#: options of the public models (docs/numerics.md#public-models-and-presets) plus ``tiny`` for CPU tests and demos
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "lstm": {"dim": 64, "projection_dim": 16, "n_layers": 2, "cell_clip": 3, "proj_clip": 3,
                 "use_skip_connections": True},
        "char_cnn": {"activation": "relu", "embedding": {"dim": 4},
                     "filters": [[1, 4], [2, 8], [3, 16], [4, 32], [5, 64]],
                     "n_highway": 2, "n_characters": 262, "max_characters_per_token": 50},
    },
    "small": _public(1024, 128, 1),
    "medium": _public(2048, 256, 1),
    "original": _public(4096, 512, 2),
}


def preset(name: str) -> ElmoOptions:
    """Options of a named preset (``tiny``, ``small``, ``medium``, ``original``)."""
    if name not in PRESETS:
        note = f" (for the file {name!r}, write ./{name})" if os.path.exists(name) else ""
        raise OptionsError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)} or a path to an "
                           f"options.json{note}")
    return options_from_dict(copy.deepcopy(PRESETS[name]), source=f"preset '{name}'")
