"""Per-step products of the fast biLSTM, each path timed alone (what :class:`elmo_fast.fast.lstm.PairLinear` chooses between).

    .venv/bin/python benchmarks/products.py [--reps 20]

For the LSTM weights of the ``small`` (128 x 4096 recurrent, 1024 x 128 projection) and ``original``
(512 x 16384, 4096 x 512) presets and a range of row counts, prints milliseconds for both directions of
``x @ W``: one ``torch.bmm`` over the pair, and oneDNN-packed weights per direction (+ stacking the two
outputs), and which one ``PairLinear`` picks. Freed memory is retained, as in the commands.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elmo_fast.fast.lstm import PairLinear  # noqa: E402
from elmo_fast.runtime import retain_freed_memory  # noqa: E402

SHAPES = {"small": [(128, 4096), (1024, 128)], "original": [(512, 16384), (4096, 512)]}
ROWS = [1, 2, 5, 8, 10, 18, 32, 60, 256, 997]


def best_ms(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20, help="timed calls per cell (best kept; fewer for big ones)")
    parser.add_argument("--shapes", nargs="+", default=["small", "original"], choices=list(SHAPES),
                        help="presets whose LSTM weights to time")
    args = parser.parse_args(argv)
    retain_freed_memory()
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms for both directions")
    print("| weight (per direction) | rows | bmm over the pair | packed per direction + stack | PairLinear picks |")
    print("|---|---|---|---|---|")
    for k, m in [shape for name in args.shapes for shape in SHAPES[name]]:
        pair = PairLinear(torch.randn(2, k, m, generator=gen), batch_hint=32)
        for n in ROWS:
            x = torch.randn(2, n, k, generator=gen)
            reps = max(2, args.reps if n * k * m < (1 << 26) else args.reps // 10)
            bmm = best_ms(lambda: torch.bmm(x, pair.weight), reps)
            packed = best_ms(lambda: torch.stack([p(x[d]) for d, p in enumerate(pair.packed)]), reps)
            print(f"| {k} x {m} | {n} | {bmm:.3f} | {packed:.3f} | {'bmm' if pair._bmm(n) else 'packed'} |")


if __name__ == "__main__":
    main()
