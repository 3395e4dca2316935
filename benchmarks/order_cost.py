"""Speed cost of ``order="allennlp"`` vs ``order="fast"`` on the fast CPU path at inference.

``order="allennlp"`` (:mod:`elmo_fast.numerics`) computes in AllenNLP's order of operations: the token encoder's
per-filter convolutions, highway and projection as AllenNLP computes them, and every biLSTM product through the
BLAS instead of oneDNN-packed weights. This measures what that costs: tokens/s of the stateless biLM forward (no
grad) for each preset and batch size, on the sentences of ``make bench``'s inference rows
(:func:`benchmarks.run.make_sentences`: mean ~25 tokens), one model per order with the same random weights.

Timed runs of the two orders alternate in one process (best of ``--reps`` after one warm-up run each), so that a
change of machine load hits both alike; the token-encoder share is timed the same way. Also checked: both orders
compute the same function (max |difference| of the top layer, printed).

Run: ``.venv/bin/python benchmarks/order_cost.py [--presets small,original] [--batches 1,32] [--threads 1]``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.run import make_sentences, random_model  # noqa: E402
from elmo_fast.chars import batch_to_ids  # noqa: E402

logger = logging.getLogger("order_cost")

ORDERS = ("fast", "allennlp")


def measure(preset: str, batch: int, n_batches: int, reps: int) -> dict[str, float]:
    """Tokens/s per order for the whole forward and for the token encoder alone; max |diff| between orders."""
    sentences = make_sentences(batch * n_batches, seed=1 + batch)
    batches = [batch_to_ids(sentences[i * batch:(i + 1) * batch]) for i in range(n_batches)]
    n_tokens = sum(len(s) for s in sentences)
    models = {}
    for order in ORDERS:
        model = random_model(preset, "fast")
        model.order = order  # entered around each op (BiLM.numerics_context)
        models[order] = model

    def whole(model) -> None:
        for ids in batches:
            model(ids)

    def encoder(model) -> None:
        for ids in batches:
            model.embed_tokens(ids)

    best = {(part, order): math.inf for part in ("whole", "encoder") for order in ORDERS}
    with torch.no_grad():
        for order in ORDERS:  # warm-up: packed weights, oneDNN primitives
            whole(models[order])
        for _ in range(reps):
            for part, fn in (("whole", whole), ("encoder", encoder)):
                for order in ORDERS:
                    t = time.perf_counter()
                    fn(models[order])
                    best[part, order] = min(best[part, order], time.perf_counter() - t)
        top = [models[order](batches[0])["activations"][-1] for order in ORDERS]
    out = {f"{part}_{order}_tok_s": n_tokens / best[part, order] for part, order in best}
    out["tokens"] = n_tokens
    out["encoder_share_allennlp"] = best["encoder", "allennlp"] / best["whole", "allennlp"]
    out["max_abs_diff_top_layer"] = float((top[0] - top[1]).abs().max())
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="small,original", help="model shapes (comma-separated)")
    p.add_argument("--batches", default="1,32", help="batch sizes (comma-separated)")
    p.add_argument("--n-batches", type=int, default=None,
                   help="batches per timed run (default: 8 at batch 1, 1 otherwise)")
    p.add_argument("--reps", type=int, default=5, help="timed runs per order, alternating (best of)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    rows = []
    for preset in args.presets.split(","):
        for batch in [int(b) for b in args.batches.split(",")]:
            n_batches = args.n_batches or (8 if batch == 1 else 1)
            logger.info("%s, batch %d x %d, %d reps", preset, batch, n_batches, args.reps)
            r = measure(preset, batch, n_batches, args.reps)
            r.update(preset=preset, batch=batch, n_batches=n_batches)
            rows.append(r)
            logger.info("  %s", r)
    print(f"\ntokens/s, best of {args.reps} alternating runs, {args.threads} thread(s), torch {torch.__version__}")
    print("| preset | batch | fast | allennlp | allennlp / fast | token encoder fast / allennlp (share of allennlp "
          "run) | max diff top layer |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['batch']} | {r['whole_fast_tok_s']:,.0f} | {r['whole_allennlp_tok_s']:,.0f} | "
              f"{r['whole_allennlp_tok_s'] / r['whole_fast_tok_s']:.2f} | {r['encoder_fast_tok_s']:,.0f} / "
              f"{r['encoder_allennlp_tok_s']:,.0f} ({100 * r['encoder_share_allennlp']:.0f}%) | "
              f"{r['max_abs_diff_top_layer']:.1e} |")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "reps": args.reps, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
