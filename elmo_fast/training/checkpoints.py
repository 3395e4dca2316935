"""Training checkpoints (``checkpoint.pt``): atomic writes, validated loads, models from checkpoints."""
from __future__ import annotations

import os
from typing import Any

import torch

from ..atomic import atomic_path
from ..options import options_from_dict
from .model import LanguageModel

__all__ = ["CHECKPOINT_NAME", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "checkpoint_path", "load_checkpoint",
           "save_checkpoint_file", "model_from_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "elmo-fast-checkpoint"
CHECKPOINT_VERSION = 1


def checkpoint_path(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINT_NAME)


def save_checkpoint_file(obj: dict[str, Any], path: str) -> None:
    """Write a checkpoint dict (format and version added) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **obj}, tmp)


def load_checkpoint(path: str) -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True`` and check its format."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an elmo-fast training checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {ckpt.get('version')}, this elmo-fast reads {CHECKPOINT_VERSION}")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], backend: str | None = None) -> LanguageModel:
    options = options_from_dict(ckpt["options"], source="checkpoint options")
    has_proj = any(k.endswith("W_proj") for k in ckpt["model"])
    model = LanguageModel(options, int(ckpt["vocab_size"]), backend=backend, has_projection=has_proj)
    model.load_state_dict(ckpt["model"])
    return model

