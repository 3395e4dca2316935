"""Test helpers: tiny random ELMo files written the way a user would have them (options.json + hdf5)."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from elmo_fast.options import PRESETS, options_from_dict
from elmo_fast.weights import expected_shapes, write_weights

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ELMO_FAST_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "data" / "elmo-test-fixtures"


def tiny_options(**overrides: Any) -> dict[str, Any]:
    """The ``tiny`` preset as a dict, with ``lstm.*``/``char_cnn.*`` overrides (``None`` deletes a key)."""
    d = copy.deepcopy(PRESETS["tiny"])
    for key, value in overrides.items():
        section, field = key.split("__")
        if value is None:
            d[section].pop(field, None)
        else:
            d[section][field] = value
    return d


def random_weights(options: dict[str, Any], seed: int = 0, scale: float = 0.5,
                   with_projection: bool = True) -> dict[str, np.ndarray]:
    """Random float32 arrays for every dataset; ``scale`` large enough that the clips (3) are active."""
    rng = np.random.default_rng(seed)
    opts = options_from_dict(options)
    out = {}
    for name, shape in expected_shapes(opts).items():
        if name.startswith("CNN_proj") and not with_projection:
            continue
        fan_in = shape[-2] if len(shape) >= 2 else 1
        s = scale if len(shape) == 1 else scale * 3.0 / np.sqrt(fan_in)
        out[name] = rng.normal(0.0, s, size=shape).astype(np.float32)
    return out


def write_model(directory: Path, options: dict[str, Any] | None = None, seed: int = 0,
                with_projection: bool = True, scale: float = 0.5) -> tuple[Path, Path]:
    """Write ``options.json`` and ``weights.hdf5`` under ``directory``; return both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    options = options or tiny_options()
    opt_path, w_path = directory / "options.json", directory / "weights.hdf5"
    opt_path.write_text(json.dumps(options))
    write_weights(w_path, random_weights(options, seed, scale, with_projection))
    return opt_path, w_path


#: CLI flags of a tiny, fast training run on the reference backend
TRAIN_FLAGS = ["--batch-size", "2", "--unroll-steps", "4", "--n-negative-samples", "6", "--backend", "reference",
               "--quiet"]


def write_corpus(path: Path, lines: int = 40) -> Path:
    """A synthetic corpus of ``lines`` sentences (3 to 7 tokens) over 12 words ``w0``..``w11``; returns ``path``."""
    words = [f"w{i}" for i in range(12)]
    path.write_text("\n".join(" ".join(words[(i * 7 + k * 3) % 12] for k in range(3 + i % 5)) for i in range(lines))
                    + "\n", encoding="utf-8")
    return path


def softmax_inputs(dtype: torch.dtype = torch.float32, device: str = "cpu", *, seed: int = 4,
                   n: int = 9) -> list[torch.Tensor]:
    """Arguments of ``sampled_softmax_loss``: ``hidden (n, 16)``, ``targets (n,)``, ``weight (40, 16)``,
    ``bias (40,)``, ``sampled_ids (12,)`` (distinct), ``target_expected_count (n,)``, ``sampled_expected_count
    (12,)``; floating tensors in ``dtype``, all on ``device``."""
    g = torch.Generator().manual_seed(seed)
    P, V, S = 16, 40, 12
    h = torch.randn(n, P, generator=g)
    W = torch.randn(V, P, generator=g) * 0.3
    b = torch.randn(V, generator=g)
    ids = torch.randperm(V, generator=g)[:S]
    t = torch.randint(0, V, (n,), generator=g)
    q_t, q_s = torch.rand(n, generator=g) * 0.5 + 0.1, torch.rand(S, generator=g) * 0.5 + 0.1
    return [(x.to(dtype) if x.is_floating_point() else x).to(device) for x in (h, t, W, b, ids, q_t, q_s)]
