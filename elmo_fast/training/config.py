"""Training settings: :class:`TrainConfig` (bilm-tf's defaults) and :func:`resolve_options`."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Iterable

from ..errors import UserError
from ..options import ElmoOptions, load_options, preset

__all__ = ["TrainConfig", "resolve_options"]


@dataclass
class TrainConfig:
    """Training settings. Defaults are bilm-tf's; ``None`` = not limited / derived."""

    batch_size: int = 128              # rows per process (bilm-tf: per GPU)
    unroll_steps: int = 20
    n_negative_samples: int = 8192     # per direction per process batch
    sample_softmax: bool = True        # False: full softmax in training (small vocabularies)
    dropout: float = 0.1
    learning_rate: float = 0.2
    initial_accumulator: float = 1.0
    clip_norm: float = 10.0
    seed: int = 0
    max_steps: int | None = None       # None: n_epochs over the corpus (or until --max-minutes)
    max_minutes: float | None = None
    n_epochs: float = 10.0
    checkpoint_every: int = 1250
    eval_every: int | None = None      # steps between held-out evaluations (None: only at the end)
    eval_batch_size: int = 256
    softmax_chunk: int = 16384         # vocabulary rows per chunk of the full softmax
    data_parts: int | None = None      # disjoint corpus parts in the job (None: the world size)
    min_count: int = 1
    max_vocab: int | None = None
    skip_bad_lines: bool = False
    device: str = "cpu"
    backend: str | None = None
    precision: str = "fp32"            # products of the fast CPU path: fp32 | bf16 (see elmo_fast.numerics)

    #: options.json training key -> config field
    OPTION_KEYS = {"batch_size": "batch_size", "unroll_steps": "unroll_steps", "dropout": "dropout",
                   "n_negative_samples_batch": "n_negative_samples", "learning_rate": "learning_rate",
                   "all_clip_norm_val": "clip_norm", "sample_softmax": "sample_softmax", "n_epochs": "n_epochs"}

    def apply_options(self, options: ElmoOptions, overridden: Iterable[str] = ()) -> "TrainConfig":
        """Take the training keys of an options.json unless the field was set on the command line."""
        values = {}
        skip = set(overridden)
        for key, field in self.OPTION_KEYS.items():
            if key in options.extra and field not in skip:
                kind = type(getattr(self, field))
                values[field] = kind(options.extra[key])
        return dataclasses.replace(self, **values)

    def validate(self) -> None:
        for name in ("batch_size", "unroll_steps", "n_negative_samples", "checkpoint_every", "eval_batch_size",
                     "softmax_chunk", "min_count"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}: expected a positive integer, found {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout: expected 0 <= p < 1, found {self.dropout}")
        if self.learning_rate <= 0 or self.clip_norm <= 0:
            raise UserError("learning_rate and clip_norm must be positive")
        if self.max_steps is not None and self.max_steps < 0:
            raise UserError(f"max_steps: expected >= 0, found {self.max_steps}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_options(spec: str) -> ElmoOptions:
    """``tiny|small|medium|original`` or a path to an options.json: a spec is a path only when it contains a
    path separator or ends in ``.json`` (``tiny`` is the preset even where the current folder has an entry
    named ``tiny``; write ``./tiny`` for that file)."""
    if os.sep in spec or (os.altsep and os.altsep in spec) or spec.endswith(".json"):
        return load_options(spec)
    return preset(spec)

