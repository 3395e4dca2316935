"""Per-step products of the fast biLSTM, each path timed alone (what :class:`~elmo_fast.fast.lstm.PairLinear`
chooses between).

    .venv/bin/python benchmarks/products.py [--reps 20] [--precision fp32 bf16]

For the LSTM weights of the ``small`` (128 x 4096 recurrent, 1024 x 128 projection, and the backward's transposed
4096 x 128 and 128 x 1024) and ``original`` (512 x 16384, 4096 x 512) presets and a range of row counts, prints
milliseconds for both directions of ``x @ W``: one ``torch.bmm`` over the pair, and oneDNN-packed weights per
direction (+ stacking the two outputs), and which one ``PairLinear`` picks; with ``--precision bf16`` the same in
bfloat16 (inputs converted, float32 results, as ``PairLinear`` does in that setting). Freed memory is retained, as
in the commands.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elmo_fast import numerics  # noqa: E402
from elmo_fast.fast.lstm import PairLinear  # noqa: E402
from elmo_fast.runtime import retain_freed_memory  # noqa: E402

SHAPES = {"small": [(128, 4096), (1024, 128), (4096, 128), (128, 1024)], "original": [(512, 16384), (4096, 512)]}
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
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"],
                        help="product precisions to time (bf16: bfloat16 inputs, float32 results)")
    args = parser.parse_args(argv)
    retain_freed_memory()
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms for both directions")
    print("| precision | weight (per direction) | rows | bmm over the pair | packed per direction + stack | "
          "PairLinear picks |")
    print("|---|---|---|---|---|---|")
    for precision in args.precision:
        for k, m in [shape for name in args.shapes for shape in SHAPES[name]]:
            pair = PairLinear(torch.randn(2, k, m, generator=gen), batch_hint=32)
            for n in ROWS:
                x = torch.randn(2, n, k, generator=gen)
                reps = max(2, args.reps if n * k * m < (1 << 26) else args.reps // 10)
                if precision == "bf16":
                    W16 = pair.weight.to(torch.bfloat16)
                    bmm = best_ms(lambda: torch.bmm(x.to(torch.bfloat16), W16).float(), reps)
                    with numerics.use(precision="bf16"):
                        packed = best_ms(lambda: torch.stack([p.bf16(x16) for x16, p in
                                                              zip(x.to(torch.bfloat16), pair.packed)]).float(), reps)
                        picks = "packed" if pair._bf16_packed() else "bmm"
                else:
                    bmm = best_ms(lambda: torch.bmm(x, pair.weight), reps)
                    packed = best_ms(lambda: torch.stack([p(x[d]) for d, p in enumerate(pair.packed)]), reps)
                    picks = "bmm" if pair._bmm(n) else "packed"
                print(f"| {precision} | {k} x {m} | {n} | {bmm:.3f} | {packed:.3f} | {picks} |")


if __name__ == "__main__":
    main()
