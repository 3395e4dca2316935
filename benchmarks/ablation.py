"""Before/after measurements of the fast path's ideas, in one process on the same inputs.

    .venv/bin/python benchmarks/ablation.py [--shape small] [--reps 3]

Each row switches one idea off and reports biLM forward tokens/s at batch 32 (realistic length mix):
oneDNN-packed weights vs plain BLAS matmuls; small-weight products as one bmm over both directions vs
oneDNN per direction; char-CNN on distinct tokens with short windows vs the
reference encoder; length-grouped batches vs random batches. The reference path is the "nothing" row.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.run import best_time, make_sentences, random_model  # noqa: E402
from elmo_fast import backend as backends  # noqa: E402
from elmo_fast.chars import batch_to_ids  # noqa: E402
from elmo_fast.embedder import length_groups  # noqa: E402
from elmo_fast.fast import packing  # noqa: E402
from elmo_fast.fast import lstm as fast_lstm  # noqa: E402
from elmo_fast.fast.lstm import PairLinear  # noqa: E402
from elmo_fast.runtime import retain_freed_memory  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="small", help="model preset (default small)")
    parser.add_argument("--reps", type=int, default=3, help="timed runs per row (best kept)")
    parser.add_argument("--batches", type=int, default=2, help="batches of 32 sentences per run")
    args = parser.parse_args(argv)
    retain_freed_memory()  # as the elmo-fast commands and benchmarks/run.py run
    sentences = make_sentences(32 * args.batches, seed=33)
    n_tokens = sum(len(s) for s in sentences)
    random_batches = [batch_to_ids(sentences[i:i + 32]) for i in range(0, len(sentences), 32)]
    groups = length_groups([len(s) for s in sentences], 32)
    grouped_batches = [batch_to_ids([sentences[i] for i in g]) for g in groups]
    model = random_model(args.shape, "fast")

    def tok_s(batches) -> float:
        @torch.no_grad()
        def run():
            for ids in batches:
                model(ids)
        return n_tokens / best_time(run, args.reps)

    rows = []
    rows.append(("fast path (all ideas)", tok_s(random_batches)))
    saved = packing.PackedLinear.MIN_PACKED_MACS
    packing.PackedLinear.MIN_PACKED_MACS = 1 << 62  # every product through plain BLAS (weights repacked per call)
    packing.clear_cache()
    rows.append(("  without oneDNN-packed weights", tok_s(random_batches)))
    packing.PackedLinear.MIN_PACKED_MACS = saved
    packing.clear_cache()
    saved_bmm = PairLinear.BMM_MAX_WEIGHT
    PairLinear.BMM_MAX_WEIGHT = 0  # only single-row products as one bmm over the direction pair
    rows.append(("  small-weight products per direction (oneDNN) instead of one bmm over the pair",
                 tok_s(random_batches)))
    PairLinear.BMM_MAX_WEIGHT = saved_bmm
    fast_lstm.DISTINCT_FIRST_LAYER = False
    rows.append(("  first-layer input projection per position instead of per distinct row", tok_s(random_batches)))
    fast_lstm.DISTINCT_FIRST_LAYER = True
    ref_encoder = backends.get_op("reference", "token_encoder")
    fast_encoder = backends._REGISTRY[("fast", "token_encoder")]
    backends._REGISTRY[("fast", "token_encoder")] = ref_encoder
    rows.append(("  with the reference token encoder (every position, 7 convolutions)", tok_s(random_batches)))
    backends._REGISTRY[("fast", "token_encoder")] = fast_encoder
    rows.append(("  + length-grouped batches (embedder, stateless)", tok_s(grouped_batches)))
    model.backend = "reference"
    rows.append(("reference path", tok_s(random_batches)))
    print(f"| {args.shape}, biLM forward, batch 32, {n_tokens} tokens | tokens/s |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value:.1f} |")


if __name__ == "__main__":
    main()
