"""Speed of the two floating-point orders side by side: ``order="fast"`` against ``order="allennlp"``.

The same random model of the ``original`` shape (:func:`benchmarks.run.random_model`) is built once per order, and
both embed the same batches of the benchmark's realistic sentence mix (:func:`benchmarks.run.make_sentences`:
log-normal lengths, mean ~25 tokens, 1..80) without states. Runs of the two orders are interleaved and the best of
``--reps`` is kept (the machine may be shared: the best run is the least disturbed one); the load average before
and after is printed. ``--part lstm`` times the biLSTM alone (:meth:`BiLM.forward_embeddings` on token embeddings
computed once), ``--part model`` the whole model from char ids.

Also checked in the same run: both orders compute the same function (last layer within 1e-3 of each other).

Run: ``.venv/bin/python benchmarks/exact_order.py --threads 1 --batch 32 --batches 1 --reps 3``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.run import make_sentences, random_model  # noqa: E402
from elmo_fast.chars import batch_to_ids  # noqa: E402
from elmo_fast.nn.bilm import add_sentence_boundaries, token_mask  # noqa: E402

ORDERS = ("fast", "allennlp")


def cpu_name() -> str:
    """``lscpu``'s model name (the processor the numbers belong to)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                "unknown")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="original", help="options preset of the random model (default original)")
    p.add_argument("--batch", type=int, default=32, help="sentences per batch (default 32)")
    p.add_argument("--batches", type=int, default=1, help="batches per timed run (default 1)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    p.add_argument("--reps", type=int, default=3, help="timed runs per order, interleaved; best kept (default 3)")
    p.add_argument("--part", choices=["model", "lstm"], default="model",
                   help="model: char ids to the three layers; lstm: the biLSTM on precomputed token embeddings")
    p.add_argument("--seed", type=int, default=None, help="sentence seed (default 1 + batch, as benchmarks/run.py)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sentences = make_sentences(args.batch * args.batches, seed=args.seed if args.seed is not None else 1 + args.batch)
    batches = [batch_to_ids(sentences[k * args.batch:(k + 1) * args.batch]) for k in range(args.batches)]
    n_tokens = sum(len(s) for s in sentences)
    models = {}
    for order in ORDERS:
        model = random_model(args.shape, "fast")
        model.order = order
        models[order] = model
    inputs: list = batches
    if args.part == "lstm":  # token embeddings once (the same for both orders: the fast order's encoder)
        with torch.no_grad():
            inputs = []
            for ids in batches:
                ids, mask = add_sentence_boundaries(ids, token_mask(ids), models["fast"].bos_ids,
                                                    models["fast"].eos_ids)
                inputs.append((models["fast"].encode_tokens(ids), mask))

    @torch.no_grad()
    def run(order: str) -> list[torch.Tensor]:
        model = models[order]
        if args.part == "lstm":
            return [model.forward_embeddings(emb, mask)["activations"][-1] for emb, mask in inputs]
        return [model(ids)["activations"][-1] for ids in inputs]

    load_before = os.getloadavg()
    outs = {order: run(order) for order in ORDERS}  # warm-up (weights packed, caches filled)
    best = dict.fromkeys(ORDERS, math.inf)
    for _ in range(args.reps):
        for order in ORDERS:
            t = time.perf_counter()
            run(order)
            best[order] = min(best[order], time.perf_counter() - t)
    load_after = os.getloadavg()
    diff = max(float((a - b).abs().max()) for a, b in zip(outs["fast"], outs["allennlp"]))
    if diff > 1e-3:
        raise AssertionError(f"the orders differ by {diff}")
    result = {"cpu": cpu_name(), "shape": args.shape, "part": args.part, "threads": args.threads,
              "batch": args.batch, "batches": args.batches, "tokens": n_tokens, "reps": args.reps,
              "longest": max(len(s) for s in sentences),
              "tokens_per_s": {order: n_tokens / best[order] for order in ORDERS},
              "ratio_allennlp_to_fast": best["fast"] / best["allennlp"], "max_abs_diff_between_orders": diff,
              "load_before": load_before, "load_after": load_after}
    print(f"{result['cpu']}, {args.threads} thread(s), {args.shape}, {args.part}, batch {args.batch} x "
          f"{args.batches} ({n_tokens} tokens, longest {result['longest']}), best of {args.reps}; load "
          f"{load_before[0]:.2f} -> {load_after[0]:.2f}")
    for order in ORDERS:
        print(f"  {order:9s} {result['tokens_per_s'][order]:8.1f} tokens/s  ({best[order]:.3f} s)")
    print(f"  allennlp / fast speed: {result['ratio_allennlp_to_fast']:.3f}; max |diff| between orders {diff:.1e}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
