"""ELMo files out of a run (:func:`export_run`, :func:`export_model`) and models into jobs
(:func:`load_model_dir`: a run directory or an ELMo export)."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

from ..data import Vocabulary
from ..options import load_options
from ..atomic import json_text, write_text
from ..errors import MissingFileError, UserError
from ..publish import MODEL_FILES, publish_folder, recover_folder, verify_folder
from ..weights import h5_size_estimate, read_weights, write_softmax_weights, write_weights
from .checkpoints import (CHECKPOINT_NAME, NonFiniteError, checkpoint_path, checkpoint_tensors, first_non_finite,
                          load_checkpoint, model_from_checkpoint)
from .model import LanguageModel

__all__ = ["load_model_dir", "export_model", "export_run", "check_export_dir"]


def load_model_dir(model_dir: str, backend: str | None = None,
                   need_softmax: bool = True) -> tuple[LanguageModel, Vocabulary | None, bool]:
    """A run directory (``checkpoint.pt`` + ``vocab.txt``) or an ELMo export (``options.json``,
    ``weights.hdf5``, ``softmax_weights.hdf5``, ``vocab.txt``) -> (model, vocabulary, has_softmax).

    With ``need_softmax=False`` an export without softmax weights/vocab loads too (softmax left
    uninitialised, vocabulary None)."""
    if not os.path.exists(model_dir):
        raise MissingFileError(f"model directory not found: {model_dir}")
    if not os.path.isdir(model_dir):
        raise UserError(f"{model_dir}: not a directory; expected a run directory ({CHECKPOINT_NAME}, vocab.txt) or "
                        f"ELMo files (options.json, weights.hdf5, softmax_weights.hdf5, vocab.txt)")
    vocab_file = os.path.join(model_dir, "vocab.txt")
    ckpt_file = checkpoint_path(model_dir)
    if os.path.exists(ckpt_file):
        ckpt = load_checkpoint(ckpt_file)
        vocab = Vocabulary.from_file(vocab_file)
        if vocab.digest() != ckpt["vocab_digest"]:
            raise UserError(f"{vocab_file} does not match the vocabulary {ckpt_file} was trained with")
        return model_from_checkpoint(ckpt, backend, source=ckpt_file), vocab, True
    opt_file, w_file = os.path.join(model_dir, "options.json"), os.path.join(model_dir, "weights.hdf5")
    sm_file = os.path.join(model_dir, "softmax_weights.hdf5")
    for f in (opt_file, w_file):
        if not os.path.exists(f):
            raise MissingFileError(f"{model_dir}: neither a run directory ({CHECKPOINT_NAME}) nor ELMo files "
                                    f"({os.path.basename(f)} is missing)")
    has_softmax = os.path.exists(sm_file) and os.path.exists(vocab_file)
    # a published folder is checked against its manifest (the files read here: a mix of two exports is refused)
    verify_folder(model_dir, MODEL_FILES if has_softmax else ("options.json", "weights.hdf5"))
    if need_softmax and not has_softmax:
        missing = [os.path.basename(f) for f in (sm_file, vocab_file) if not os.path.exists(f)]
        raise MissingFileError(f"{model_dir}: {', '.join(missing)} missing (perplexity needs the softmax weights "
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


def export_model(model: LanguageModel, vocab: Vocabulary, out_dir: str, extra: dict[str, Any] | None = None) -> str:
    """Publish ``options.json`` (``n_characters`` 262), ``weights.hdf5``, ``softmax_weights.hdf5``, ``vocab.txt``
    and their manifest in ``out_dir`` as one folder (:func:`elmo_fast.publish.publish_folder`): a kill or a
    full disk at any point leaves ``out_dir`` as it was or wholly new. Returns the published path.

    Raises:
        PublishError: a write failed or the disk lacks the room (checked first): one line naming the file.
    """
    options = model.bilm.options
    assert options.char_cnn is not None
    options = dataclasses.replace(options, char_cnn=dataclasses.replace(options.char_cnn, n_characters=262),
                                  extra={**options.extra, **(extra or {})})
    weights = model.bilm.bilm_tf_weights()
    W, b = model.softmax_weight.detach().cpu().numpy(), model.softmax_bias.detach().cpu().numpy()
    options_text = json_text(options.to_dict())
    vocab_bytes = sum(len(t.encode("utf-8", "surrogatepass")) + 1 for t in vocab.tokens)
    needed = (h5_size_estimate(weights.values()) + h5_size_estimate([W, b]) + vocab_bytes + len(options_text)
              + (1 << 20))
    return publish_folder(out_dir, {
        "options.json": lambda path: write_text(path, options_text),
        "weights.hdf5": lambda path: write_weights(path, weights),
        "softmax_weights.hdf5": lambda path: write_softmax_weights(path, W, b),
        "vocab.txt": lambda path: vocab.save(path),
    }, replaces=MODEL_FILES, needed_bytes=needed, what="export")


def check_export_dir(out_dir: str, run_dir: str | None = None, overwrite: bool = False) -> None:
    """Refuse an export target that would destroy something: a path that is not a directory, the run directory
    itself, or (unless ``overwrite``) a directory that already holds files."""
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"{out_dir}: exists and is not a directory; expected a new or empty directory for the "
                        f"ELMo files (OUT_DIR)")
    if run_dir is not None and os.path.isdir(out_dir) and os.path.samefile(out_dir, run_dir):
        raise UserError(f"{out_dir}: is the run directory; export into another directory (its options.json and "
                        f"vocab.txt would be replaced)")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise UserError(f"{out_dir}: directory is not empty ({len(os.listdir(out_dir))} entries); pass --overwrite "
                        f"to replace options.json, weights.hdf5, softmax_weights.hdf5 and vocab.txt in it, or choose "
                        f"a new directory")
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(out_dir) and (not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK)):
        raise UserError(f"{out_dir}: cannot create the directory ({parent} is missing or not writable)")
    if os.path.isdir(out_dir) and not os.access(out_dir, os.W_OK | os.X_OK):
        raise UserError(f"{out_dir}: directory is not writable")


@torch.no_grad()
def check_model_output(model: LanguageModel, vocab: Vocabulary, source: str, n_words: int = 8) -> None:
    """Run the biLM and the softmax on one short sentence of vocabulary words; NaN/Inf anywhere means the
    weights, though finite, are unusable (a diverged run: weights near float32's limit) -> NonFiniteError."""
    from ..chars import batch_to_ids
    words = [t for t in vocab.tokens if t and t not in ("<S>", "</S>", "<UNK>")][:n_words] or ["the"]
    model.eval()
    out = model.bilm(batch_to_ids([words]))["activations"]
    top = out[-1][0, :, out[-1].shape[-1] // 2:]                      # backward half: (T+2, P)
    logits = torch.cat([out[-1][0, :, :top.shape[-1]], top]) @ model.softmax_weight.t() + model.softmax_bias
    for name, t in [(f"layer {k}", a) for k, a in enumerate(out)] + [("softmax logits", logits)]:
        if not bool(torch.isfinite(t).all()):
            biggest = max(float(p.detach().abs().max()) for p in model.parameters())
            raise NonFiniteError(f"{source}: the weights are finite but the model computes NaN/Inf ({name}) on a "
                                 f"test sentence (largest weight {biggest:.3g}: training diverged); refusing to "
                                 f"export it. Train again from an earlier checkpoint or with a lower --learning-rate")


def export_run(run_dir: str, out_dir: str, overwrite: bool = False) -> dict[str, Any]:
    """``elmo-fast export``: the latest checkpoint of ``run_dir`` -> ELMo files in ``out_dir``.

    Refuses (:class:`~elmo_fast.errors.UserError`) an ``out_dir`` that is a file, the run directory or a
    non-empty directory (unless ``overwrite``), and a checkpoint whose weights hold NaN/Inf
    (:class:`~elmo_fast.training.checkpoints.NonFiniteError`): nothing is written then.
    """
    if not os.path.isdir(run_dir):
        raise UserError(f"{run_dir}: {'not a directory' if os.path.exists(run_dir) else 'no such directory'}; "
                        f"expected a run directory written by `elmo-fast train`")
    recover_folder(out_dir)  # an interrupted export's way back (OUT.old-PID) first: --overwrite is judged on it
    check_export_dir(out_dir, run_dir, overwrite)
    ckpt_file = checkpoint_path(run_dir)
    ckpt = load_checkpoint(ckpt_file)
    bad = first_non_finite(checkpoint_tensors(ckpt))
    if bad is not None:
        raise NonFiniteError(f"{ckpt_file}: tensor '{bad}' holds NaN/Inf (step {ckpt['step']}); refusing to export "
                             f"a model that embeds to NaN")
    vocab_file = os.path.join(run_dir, "vocab.txt")
    vocab = Vocabulary.from_file(vocab_file)
    if vocab.digest() != ckpt["vocab_digest"]:
        raise UserError(f"{vocab_file} does not match the vocabulary {ckpt_file} was trained with")
    model = model_from_checkpoint(ckpt, source=ckpt_file)
    check_model_output(model, vocab, f"{ckpt_file} (step {ckpt['step']})")
    export_model(model, vocab, out_dir)
    return {"step": int(ckpt["step"]), "out_dir": out_dir, "vocab_size": len(vocab)}
