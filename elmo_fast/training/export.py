"""ELMo files out of a run (:func:`export_run`, :func:`export_model`) and models into jobs
(:func:`load_model_dir`: a run directory or an ELMo export)."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from ..data import Vocabulary
from ..options import load_options
from ..weights import read_weights, write_softmax_weights
from .checkpoints import CHECKPOINT_NAME, checkpoint_path, load_checkpoint, model_from_checkpoint
from .model import LanguageModel

__all__ = ["load_model_dir", "export_model", "export_run"]


def load_model_dir(model_dir: str, backend: str | None = None,
                   need_softmax: bool = True) -> tuple[LanguageModel, Vocabulary | None, bool]:
    """A run directory (``checkpoint.pt`` + ``vocab.txt``) or an ELMo export (``options.json``,
    ``weights.hdf5``, ``softmax_weights.hdf5``, ``vocab.txt``) -> (model, vocabulary, has_softmax).

    With ``need_softmax=False`` an export without softmax weights/vocab loads too (softmax left
    uninitialised, vocabulary None)."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model directory not found: {model_dir}")
    vocab_file = os.path.join(model_dir, "vocab.txt")
    ckpt_file = checkpoint_path(model_dir)
    if os.path.exists(ckpt_file):
        ckpt = load_checkpoint(ckpt_file)
        vocab = Vocabulary.from_file(vocab_file)
        if vocab.digest() != ckpt["vocab_digest"]:
            raise ValueError(f"{vocab_file} does not match the vocabulary {ckpt_file} was trained with")
        return model_from_checkpoint(ckpt, backend), vocab, True
    opt_file, w_file = os.path.join(model_dir, "options.json"), os.path.join(model_dir, "weights.hdf5")
    sm_file = os.path.join(model_dir, "softmax_weights.hdf5")
    for f in (opt_file, w_file):
        if not os.path.exists(f):
            raise FileNotFoundError(f"{model_dir}: neither a run directory ({CHECKPOINT_NAME}) nor ELMo files "
                                    f"({os.path.basename(f)} is missing)")
    has_softmax = os.path.exists(sm_file) and os.path.exists(vocab_file)
    if need_softmax and not has_softmax:
        missing = [os.path.basename(f) for f in (sm_file, vocab_file) if not os.path.exists(f)]
        raise FileNotFoundError(f"{model_dir}: {', '.join(missing)} missing (perplexity needs the softmax weights "
                                f"and the vocabulary)")
    options = load_options(opt_file)
    weights = read_weights(w_file, options)
    vocab = Vocabulary.from_file(vocab_file) if has_softmax else None
    model = LanguageModel(options, len(vocab) if vocab else 1, backend=backend,
                          has_projection="CNN_proj/W_proj" in weights)
    model.bilm.load_bilm_tf_weights(weights)
    if has_softmax:
        model.load_elmo_files(w_file, sm_file)
    return model, vocab, has_softmax


def export_model(model: LanguageModel, vocab: Vocabulary, out_dir: str, extra: dict[str, Any] | None = None) -> None:
    """Write ``options.json`` (``n_characters`` 262), ``weights.hdf5``, ``softmax_weights.hdf5``, ``vocab.txt``."""
    os.makedirs(out_dir, exist_ok=True)
    options = model.bilm.options
    assert options.char_cnn is not None
    options = dataclasses.replace(options, char_cnn=dataclasses.replace(options.char_cnn, n_characters=262),
                                  extra={**options.extra, **(extra or {})})
    options.save(os.path.join(out_dir, "options.json"))
    from ..weights import write_weights
    write_weights(os.path.join(out_dir, "weights.hdf5"), model.bilm.bilm_tf_weights())
    write_softmax_weights(os.path.join(out_dir, "softmax_weights.hdf5"),
                          model.softmax_weight.detach().cpu().numpy(), model.softmax_bias.detach().cpu().numpy())
    vocab.save(os.path.join(out_dir, "vocab.txt"))


def export_run(run_dir: str, out_dir: str) -> dict[str, Any]:
    """``elmo-fast export``: the latest checkpoint of ``run_dir`` -> ELMo files in ``out_dir``."""
    ckpt = load_checkpoint(checkpoint_path(run_dir))
    vocab_file = os.path.join(run_dir, "vocab.txt")
    vocab = Vocabulary.from_file(vocab_file)
    if vocab.digest() != ckpt["vocab_digest"]:
        raise ValueError(f"{vocab_file} does not match the vocabulary the checkpoint was trained with")
    model = model_from_checkpoint(ckpt)
    export_model(model, vocab, out_dir)
    return {"step": int(ckpt["step"]), "out_dir": out_dir, "vocab_size": len(vocab)}

