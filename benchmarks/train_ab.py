"""A/B of the training step between checkouts: ``Trainer.step`` of each tree, alternated, in separate processes.

On a shared machine the speed of the same code drifts by several percent within minutes (this 2-core VM's
square ``mm`` rate moved between 177 and 198 GFLOP/s in one session), so a change is measured against the code
before it by alternating the two trees, a few steps at a time, several rounds, and comparing the best (and median)
step of each. With ``--threads 1`` the stepping thread's CPU time is used (``time.thread_time``), which other jobs
on the machine inflate much less than wall time.

Each tree is imported in its own process (``sys.path`` set to the tree), on the batch ``benchmarks/run.py`` times
(same words, same Zipf draw, sampled softmax with 8192 negatives over a 100k vocabulary, dropout 0.1).

Usage::

    git worktree add /tmp/before <commit>
    python benchmarks/train_ab.py /tmp/before . --shape small --threads 1 --rounds 2 --steps 8
    python benchmarks/train_ab.py /tmp/before . --shape original --threads 2 --precision fp32 --steps 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

_CHILD = r"""
import json, sys, time
tree, shape, threads, steps, precisions = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
sys.path[:0] = [tree, tree + "/benchmarks"]
import numpy as np
import torch
import elmo_fast
assert elmo_fast.__file__.startswith(tree), elmo_fast.__file__
from run import NEGATIVES, VOCAB, _Batch, _make_data_batch, make_words, random_model
from elmo_fast import numerics
from elmo_fast.options import preset
from elmo_fast.runtime import retain_freed_memory
from elmo_fast.training import LanguageModel, TrainConfig, Trainer
retain_freed_memory()
torch.set_num_threads(threads)
clock = time.thread_time if threads == 1 else time.perf_counter
rows, unroll = {"small": (32, 20), "original": (128, 20)}[shape]
rng = np.random.default_rng(7)
data = _make_data_batch(_Batch(rows, unroll, make_words(VOCAB, rng), rng))
trainers = {}
for precision in precisions.split(","):
    torch.manual_seed(0)
    model = LanguageModel(preset(shape), VOCAB, backend=None)
    model.bilm.load_state_dict(random_model(shape, "fast").state_dict())
    with torch.no_grad():
        model.softmax_weight.normal_(0, 0.05)
        model.softmax_bias.zero_()
    trainers[precision] = Trainer(model, TrainConfig(batch_size=rows, unroll_steps=unroll,
                                                     n_negative_samples=NEGATIVES))
    with numerics.use(precision=precision):
        trainers[precision].step(data)  # warm-up: packs weights, grows the heap
times = {p: [] for p in trainers}
for _ in range(steps):
    for precision, trainer in trainers.items():
        with numerics.use(precision=precision):
            t = clock()
            trainer.step(data)
            times[precision].append(clock() - t)
print(json.dumps(times))
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="+", help="checkouts to compare (each a directory holding elmo_fast/)")
    parser.add_argument("--shape", choices=["small", "original"], default="small", help="model preset and batch "
                        "(small: 32 x 20, original: 128 x 20, as benchmarks/run.py)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads; 1 times CPU time")
    parser.add_argument("--precision", default="fp32,bf16",
                        help="comma-separated settings timed in each process (fp32, bf16), alternated per step")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per precision per round")
    parser.add_argument("--rounds", type=int, default=2, help="times every tree is run, alternating")
    args = parser.parse_args(argv)
    trees = [os.path.abspath(t) for t in args.trees]
    for t in trees:
        if not os.path.isfile(os.path.join(t, "elmo_fast", "__init__.py")):
            parser.error(f"{t}: no elmo_fast/ package there")
    results: dict[str, dict[str, list[float]]] = {t: {} for t in trees}
    for r in range(args.rounds):
        for t in trees:
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", _CHILD, t, args.shape, str(args.threads), str(args.steps),
                                  args.precision], capture_output=True, text=True, check=False)
            if out.returncode != 0:
                sys.exit(f"{t}: the step failed:\n{out.stderr[-2000:]}")
            times = json.loads(out.stdout.strip().splitlines()[-1])
            for p, v in times.items():
                results[t].setdefault(p, []).extend(v)
            line = " | ".join(f"{p} best {min(v) * 1e3:.1f} ms, median {statistics.median(v) * 1e3:.1f} ms"
                              for p, v in times.items())
            print(f"round {r + 1} {t}: {line} ({time.perf_counter() - start:.0f} s)", flush=True)
    clock = "CPU time of the stepping thread" if args.threads == 1 else "wall time"
    print(f"\n{args.shape}, {args.threads} thread(s), {clock}, all rounds (ms):")
    print("| tree | " + " | ".join(f"{p} best | {p} median" for p in args.precision.split(",")) + " |")
    print("|---|" + "---|---|" * len(args.precision.split(",")))
    for t in trees:
        cells = " | ".join(f"{min(v) * 1e3:.1f} | {statistics.median(v) * 1e3:.1f}" for v in results[t].values())
        print(f"| {t} | {cells} |")


if __name__ == "__main__":
    main()
