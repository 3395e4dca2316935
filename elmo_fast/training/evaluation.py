"""Held-out perplexity with bilm-tf's protocol, over the whole file (:func:`evaluate_perplexity`)."""
from __future__ import annotations

import math
import os
from typing import Any

import torch

from ..data import CorpusError, Vocabulary, count_targets, heldout_batches
from ..errors import UserError
from ..progress import bar as progress_bar
from .model import LanguageModel

__all__ = ["evaluate_perplexity", "describe_coverage"]


@torch.no_grad()
def evaluate_perplexity(model: LanguageModel, vocab: Vocabulary, heldout: str, batch_size: int = 256,
                        unroll_steps: int = 1, softmax_chunk: int = 16384, progress: bool = False,
                        max_batches: int | None = None) -> dict[str, Any]:
    """Held-out perplexity with bilm-tf's protocol, scoring every token of the file.

    The file is read in order by a forward and a reverse stream of ``batch_size`` rows x ``unroll_steps``
    (stateful from zero, no dropout, full softmax). bilm-tf drops the batches after the first row runs out of
    sentences (with 256 rows and long lines that can be most of the file); here the other rows then finish
    their last sentences with their carried states (only the rows still reading are computed), so every
    target is scored. Perplexity is ``exp`` of the mean loss per target (for full batches this is bilm-tf's
    mean over batches).

    Args:
        max_batches: stop after this many batches (a quick estimate); the result says which fraction of the
            file was scored (``fraction``, ``total_tokens``).

    Returns:
        ``{"forward_perplexity", "backward_perplexity", "perplexity" (average), "forward_loss",
        "backward_loss", "batches", "tokens" (targets scored per direction), "total_tokens" (targets in the
        file per direction), "fraction", "heldout"}``.
    """
    if len(vocab) != model.vocab_size:
        raise UserError(f"{vocab.source}: the vocabulary has {len(vocab)} tokens, the model's softmax "
                        f"{model.vocab_size} rows")
    vocab.require_specials()
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches: expected a positive integer, found {max_batches}")
    total_tokens, _ = count_targets(heldout)
    if total_tokens == 0:
        raise CorpusError(f"{heldout}: no sentences to score (the file is empty or blank); expected UTF-8 text, "
                          f"one tokenized sentence per line")
    model.eval()
    device = model.softmax_weight.device
    h, c = model.zero_state(batch_size, device)
    fw_total = bw_total = 0.0
    n_tokens = 0
    n = 0
    bar = progress_bar(progress, desc="evaluating", unit="tok", unit_scale=True, total=total_tokens)
    for batch in heldout_batches(heldout, vocab, batch_size, unroll_steps, whole_file=True):
        batch = batch.to(device)
        valid = batch.fw_targets >= 0                                     # (B, T); False: row ran out
        rows = None
        if not bool(valid.all()):
            rows = torch.nonzero(valid.any(dim=1)).squeeze(1)
            batch = type(batch)(batch.token_chars, batch.fw_inputs[rows], batch.bw_inputs[rows],
                                batch.fw_targets[rows], batch.bw_targets[rows])
            state = (h[:, rows], c[:, rows])
        else:
            state = (h, c)
        fw_top, bw_top, (h_new, c_new) = model.hidden(batch, state)
        if rows is None:
            h, c = h_new, c_new
        else:
            h, c = h.clone(), c.clone()
            h[:, rows], c[:, rows] = h_new, c_new
        P = fw_top.shape[-1]
        full_softmax = model.softmax_op("full_softmax_loss", fw_top)
        sums = []
        for top, targets in ((fw_top, batch.fw_targets), (bw_top, batch.bw_targets)):
            t = targets.reshape(-1)
            keep = t >= 0
            sums.append(float(full_softmax(top.reshape(-1, P)[keep], t[keep], model.softmax_weight,
                                           model.softmax_bias, softmax_chunk).sum()))
        k = int((batch.fw_targets >= 0).sum())
        fw_total += sums[0]
        bw_total += sums[1]
        n_tokens += k
        n += 1
        bar.update(k)
        if max_batches is not None and n >= max_batches:
            break
    bar.close()
    if n_tokens == 0:
        raise CorpusError(f"{heldout}: no sentences to score (the file is empty or blank)")
    fw_mean, bw_mean = fw_total / n_tokens, bw_total / n_tokens
    return {"forward_perplexity": math.exp(fw_mean), "backward_perplexity": math.exp(bw_mean),
            "perplexity": math.exp(0.5 * (fw_mean + bw_mean)), "forward_loss": fw_mean, "backward_loss": bw_mean,
            "batches": n, "tokens": n_tokens, "total_tokens": total_tokens,
            "fraction": n_tokens / total_tokens if total_tokens else 0.0, "heldout": os.fspath(heldout)}


def describe_coverage(result: dict[str, Any], flag: str = "--max-batches") -> str:
    """The first line of a held-out report: all of the file, or which fraction and how to score all."""
    if result["tokens"] >= result["total_tokens"]:
        return f"scored the whole held-out file: {result['tokens']} tokens per direction"
    return (f"scored {result['tokens']} of {result['total_tokens']} held-out tokens ({100 * result['fraction']:.1f}%) "
            f"because of {flag}; leave out {flag} to score the whole file")
