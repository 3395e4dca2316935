"""One entry point for a model directory of any supported format: :func:`load_pretrained`.

Recognised formats (checked in this order):

* **ELMoForManyLangs**: ``config.json``, ``char.dic``, ``token_embedder.pkl``, ``encoder.pkl`` (and
  ``word.dic`` when the model has a word embedding) -> :class:`elmo_fast.efml.EFMLBiLM`.
* **bilm-tf / AllenNLP**: ``options.json`` + ``weights.hdf5`` (what ``elmo-fast export`` and
  ``elmo-fast convert`` write) -> :class:`elmo_fast.BiLM`.

Both return a biLM-like module: ``forward(*inputs) -> {"activations": [layers (B, T+2, 2P)], "mask"}``,
``reset_states()``, ``stateful``; the EFML one also has ``prepare_inputs(sentences)`` (its own character
vocabulary) and ``source_files()``.
"""
from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .errors import UserError

__all__ = ["load_pretrained", "detect_format"]


def detect_format(path: str | os.PathLike) -> str:
    """``"efml"`` or ``"bilm-tf"`` for a model directory; raises :class:`UserError` otherwise."""
    from .efml import EFML_FILES, is_efml_dir

    root = Path(path)
    if not root.exists():
        raise UserError(f"{root}: model directory not found")
    if not root.is_dir():
        raise UserError(f"{root}: expected a model directory, found a file")
    if is_efml_dir(root):
        return "efml"
    if (root / "options.json").is_file() and (root / "weights.hdf5").is_file():
        return "bilm-tf"
    present = sorted(p.name for p in root.iterdir())[:12]
    raise UserError(f"{root}: not a model directory: expected options.json + weights.hdf5 (bilm-tf) or "
                    f"{' + '.join(EFML_FILES)} (ELMoForManyLangs); found {present}")


def load_pretrained(path: str | os.PathLike, *, stateful: bool = True, backend: str | None = None) -> nn.Module:
    """Load the model in directory ``path`` (format detected, see the module docstring), for inference.

    Args:
        path: the model directory, the URL of one (``options.json`` + ``weights.hdf5`` under it) or a public
            model's name (:mod:`elmo_fast.hub`).
        stateful: carry LSTM states across calls (AllenNLP's and the ELMoForManyLangs package's behaviour);
            ``False``: every call starts from zero states.
        backend: ``"reference"``, ``"fast"``, ``"triton"`` or None (see :mod:`elmo_fast.backend`).
    """
    from .hub import resolve
    path = resolve(path, "model_dir")  # a folder URL or a public model's name: its cached folder
    kind = detect_format(path)
    root = Path(path)
    if kind == "efml":
        from .efml import load_efml
        return load_efml(root, stateful=stateful, backend=backend)
    from .nn.bilm import BiLM
    model = BiLM.from_files(root / "options.json", root / "weights.hdf5", stateful=stateful, backend=backend)
    model.eval()
    return model
