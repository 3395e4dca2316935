"""Held-out perplexity with bilm-tf's protocol (:func:`evaluate_perplexity`)."""
from __future__ import annotations

import math
import os
from typing import Any

import torch

from ..data import CorpusError, Vocabulary, heldout_batches
from .model import LanguageModel

__all__ = ["evaluate_perplexity"]


@torch.no_grad()
def evaluate_perplexity(model: LanguageModel, vocab: Vocabulary, heldout: str, batch_size: int = 256,
                        unroll_steps: int = 1, softmax_chunk: int = 16384, progress: bool = False,
                        max_batches: int | None = None) -> dict[str, Any]:
    """Held-out perplexity with bilm-tf's protocol.

    The file is read in order by a forward and a reverse stream of ``batch_size`` rows x ``unroll_steps``
    (stateful from zero, no dropout, full softmax); the incomplete last batch is dropped. Per batch the
    forward and backward mean losses are averaged; ppl = exp(mean over batches).

    Returns:
        ``{"forward_perplexity", "backward_perplexity", "perplexity" (average), "batches", "tokens"}``.
    """
    if len(vocab) != model.vocab_size:
        raise ValueError(f"vocabulary has {len(vocab)} tokens, the model's softmax {model.vocab_size} rows")
    model.eval()
    device = model.softmax_weight.device
    state = model.zero_state(batch_size, device)
    fw_total = bw_total = 0.0
    n = 0
    from tqdm import tqdm
    bar = tqdm(desc="evaluating", unit="tok", unit_scale=True, disable=not progress)
    for batch in heldout_batches(heldout, vocab, batch_size, unroll_steps):
        batch = batch.to(device)
        fw_top, bw_top, state = model.hidden(batch, state)
        P = fw_top.shape[-1]
        full_softmax = model.softmax_op("full_softmax_loss", fw_top)
        fw = full_softmax(fw_top.reshape(-1, P), batch.fw_targets.reshape(-1), model.softmax_weight,
                          model.softmax_bias, softmax_chunk).mean()
        bw = full_softmax(bw_top.reshape(-1, P), batch.bw_targets.reshape(-1), model.softmax_weight,
                          model.softmax_bias, softmax_chunk).mean()
        fw_total += float(fw)
        bw_total += float(bw)
        n += 1
        bar.update(batch.n_tokens)
        if max_batches is not None and n >= max_batches:
            break
    bar.close()
    if n == 0:
        raise CorpusError(f"{heldout}: too little text for one evaluation batch of {batch_size} rows x "
                          f"{unroll_steps} steps (use a smaller --eval-batch-size / --batch-size)")
    fw_mean, bw_mean = fw_total / n, bw_total / n
    return {"forward_perplexity": math.exp(fw_mean), "backward_perplexity": math.exp(bw_mean),
            "perplexity": math.exp(0.5 * (fw_mean + bw_mean)), "forward_loss": fw_mean, "backward_loss": bw_mean,
            "batches": n, "tokens": n * batch_size * unroll_steps, "heldout": os.fspath(heldout)}

