"""Pretraining benchmark: train biLMs on WikiText-2 ``valid.txt`` for a fixed time, evaluate on ``test.txt``.

For each model (``tiny`` and a CPU-sized shape, see :data:`MODELS`):

1. ``elmo_fast.train.run_training`` on ``valid.txt`` (vocabulary built from it, every word kept) for
   ``--minutes`` of wall time: bilm-tf recipe, sampled softmax with ``--negatives`` negatives, dropout 0.1,
   Adagrad 0.2, B x T = ``--batch-size`` x ``--unroll-steps``. Records training tokens/s (both directions
   counted once: B x T per step, as bilm-tf).
2. Held-out perplexity on ``test.txt`` with bilm-tf's protocol (batch 256, unroll 1, stateful, full softmax;
   the word-level vocabulary of valid.txt, test words outside it map to ``<UNK>``).
3. Step time of one training step with the sampled softmax (``--negatives`` and 8192) vs the full softmax
   on the same batches, best of ``--reps`` after a warm-up.

WikiText-2 train.txt is not available here, so these perplexities are NOT comparable to published
WikiText-2 numbers (different training data: 217k tokens of valid.txt, a few minutes of CPU).

Usage::

    .venv/bin/python benchmarks/pretraining.py --minutes 8 --json benchmarks/pretraining.json
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elmo_fast import backend as backends  # noqa: E402
from elmo_fast.data import TrainingBatches, Vocabulary, expand_shards  # noqa: E402
from elmo_fast.options import PRESETS, options_from_dict  # noqa: E402
from elmo_fast.train import LanguageModel, TrainConfig, Trainer, init_weights, run_training  # noqa: E402

logger = logging.getLogger("bench.train")

#: the CPU-sized model: 512-cell LSTMs with 128-dim projections, a 384-filter char-CNN, 1 highway layer
CPU_MODEL = {
    "lstm": {"dim": 512, "projection_dim": 128, "n_layers": 2, "cell_clip": 3, "proj_clip": 3,
             "use_skip_connections": True},
    "char_cnn": {"activation": "relu", "embedding": {"dim": 16},
                 "filters": [[1, 32], [2, 32], [3, 64], [4, 128], [5, 128]],
                 "n_highway": 1, "n_characters": 262, "max_characters_per_token": 50},
}
MODELS = {"tiny": PRESETS["tiny"], "cpu": CPU_MODEL}


def step_times(options_dict: dict, vocab: Vocabulary, files: list[str], config: TrainConfig, reps: int) -> dict:
    """Best-of-``reps`` seconds per training step: sampled (config negatives, 8192) vs full softmax."""
    out = {}
    variants = [(f"sampled_{config.n_negative_samples}", dict(sample_softmax=True)),
                ("sampled_8192", dict(sample_softmax=True, n_negative_samples=8192)),
                ("full", dict(sample_softmax=False))]
    for name, change in variants:
        cfg = TrainConfig(**{**config.to_dict(), **change})
        model = LanguageModel(options_from_dict(copy.deepcopy(options_dict)), len(vocab), backend=cfg.backend)
        init_weights(model.bilm, model.softmax_weight, model.softmax_bias, torch.Generator().manual_seed(0))
        trainer = Trainer(model, cfg)
        data = TrainingBatches(files, vocab, cfg.batch_size, cfg.unroll_steps, seed=0)
        batches = [data.next_batch() for _ in range(reps + 1)]
        trainer.step(batches[0])
        best = float("inf")
        for b in batches[1:]:
            t = time.perf_counter()
            trainer.step(b)
            best = min(best, time.perf_counter() - t)
        out[name] = best
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"),
                   help="directory with valid.txt and test.txt")
    p.add_argument("--models", default="tiny,cpu", help="comma-separated: tiny, cpu")
    p.add_argument("--minutes", type=float, default=8.0, help="training wall time per model")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--unroll-steps", type=int, default=20)
    p.add_argument("--negatives", type=int, default=1024, help="sampled-softmax negatives for the training run")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: least disturbed on a shared 2-core box)")
    p.add_argument("--reps", type=int, default=5, help="timed steps per softmax variant")
    p.add_argument("--backend", default=None, help="reference | fast | triton (default: by device)")
    p.add_argument("--out-dir", default=None, help="keep the run directories here (default: a temporary dir)")
    p.add_argument("--json", default=None, help="write the results as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    valid, test = os.path.join(args.data_dir, "valid.txt"), os.path.join(args.data_dir, "test.txt")
    for f in (valid, test):
        if not os.path.exists(f):
            raise SystemExit(f"missing {f} (set --data-dir)")
    work = args.out_dir or tempfile.mkdtemp(prefix="elmo-fast-bench-")
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                           "torch": torch.__version__, "cores": os.cpu_count()},
               "command": " ".join([sys.executable.split("/")[-1]] + sys.argv), "models": {}}
    files = expand_shards(valid)
    vocab = Vocabulary.build(files)
    for name in args.models.split(","):
        options_dict = copy.deepcopy(MODELS[name])
        options = options_from_dict(copy.deepcopy(options_dict), source=name)
        config = TrainConfig(batch_size=args.batch_size, unroll_steps=args.unroll_steps,
                             n_negative_samples=args.negatives, max_minutes=args.minutes, checkpoint_every=10 ** 9,
                             backend=args.backend, seed=0)
        run_dir = os.path.join(work, name)
        summary = run_training(valid, run_dir, options, config, heldout=test, progress=False)
        backend_used = backends.resolve(args.backend, "cpu", "bilstm_streams")
        times = step_times(options_dict, vocab, files, config, args.reps)
        n_params = sum(p.numel() for p in LanguageModel(options, len(vocab)).parameters())
        results["models"][name] = {
            "options": options_dict, "parameters": n_params, "vocab_size": len(vocab), "backend": backend_used,
            "batch": [args.batch_size, args.unroll_steps], "negatives": args.negatives,
            "train_minutes": summary["seconds"] / 60.0, "steps": summary["step"], "train_tokens": summary["run_tokens"],
            "tokens_per_second": summary["tokens_per_second"], "last_train_loss": summary["last_loss"],
            "test": summary["heldout"], "step_seconds": times}
        h = summary["heldout"]
        print(f"{name}: {summary['step']} steps, {summary['tokens_per_second']:.0f} tokens/s, test perplexity "
              f"{h['perplexity']:.1f} (fw {h['forward_perplexity']:.1f}, bw {h['backward_perplexity']:.1f}); "
              f"step s: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in times.items()), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
