"""oneDNN's GEMM against torch's BLAS for the biLSTM backward's one-off products, and oneDNN's memory per shape.

What :func:`elmo_fast.fast.packing.pair_matmul` decides on: for both directions of ``dx = dz W_xᵀ`` and
``dW = [x; h]ᵀ dz`` (the products of the hand-written backward), milliseconds through ``torch.bmm`` (the BLAS)
and through oneDNN (``b`` packed for the call, as ``pair_matmul`` does), at the ``small`` (640 rows, P 128, 4C 4096)
and ``original`` (2,560 rows, P 512, 4C 16384) training shapes. ``--memory N`` then runs one oneDNN product of a
2048 x 2048 weight with N different row counts and prints the process's resident memory as it grows: the reason
``pair_matmul`` takes oneDNN only where shapes repeat.

Usage::

    python benchmarks/onednn_gemm.py [--threads 2] [--reps 4] [--shapes small original] [--memory 200]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elmo_fast.runtime import retain_freed_memory  # noqa: E402
from run import best_time  # noqa: E402  (benchmarks/run.py)

SHAPES = {"small": (640, 128, 4096), "original": (2560, 512, 16384)}   # rows, P, 4C


def best_ms(fn, reps: int) -> float:
    return best_time(fn, reps) * 1e3


def onednn(a: torch.Tensor, b: torch.Tensor) -> list[torch.Tensor]:
    """``a[d] @ b[d]`` per direction through oneDNN (the route of packing.pair_matmul)."""
    n = a.shape[1]
    return [torch.ops.mkldnn._linear_pointwise(a[d].contiguous(), torch.ops.mkldnn._reorder_linear_weight(b[d].t(), n),
                                               None, "none", [], "") for d in range(a.shape[0])]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--reps", type=int, default=4, help="timed calls per cell (best kept)")
    parser.add_argument("--shapes", nargs="+", default=["small", "original"], choices=list(SHAPES),
                        help="training shapes to time")
    parser.add_argument("--memory", type=int, default=0, metavar="N",
                        help="also run N oneDNN products with distinct row counts and print the resident memory")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    retain_freed_memory()
    if not torch.backends.mkldnn.is_available():
        sys.exit("this torch build has no oneDNN")
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms for both directions, best of {args.reps}")
    print("| shape | product | M x K x N | BLAS (bmm) | oneDNN | oneDNN / BLAS |")
    print("|---|---|---|---|---|---|")
    for name in args.shapes:
        T, P, G = SHAPES[name]
        dz = torch.randn(2, T, G, generator=gen)
        W = torch.randn(2, P, G, generator=gen) * 0.05
        xh = torch.randn(2, T, 2 * P, generator=gen)
        cases = [("dx = dz W_xᵀ", dz, W.transpose(1, 2), (T, G, P)),
                 ("dW = [x; h]ᵀ dz", xh.transpose(1, 2), dz, (2 * P, T, G))]
        for label, a, b, (M, K, N) in cases:
            blas = best_ms(lambda: torch.bmm(a, b), args.reps)
            dnn = best_ms(lambda: onednn(a, b), args.reps)
            print(f"| {name} | {label} | {M} x {K} x {N} | {blas:.1f} | {dnn:.1f} | {dnn / blas:.2f} |")
    if args.memory:
        W = torch.randn(1, 2048, 2048, generator=gen)
        start = rss_mb()
        print(f"\noneDNN product with a 2048 x 2048 weight, {args.memory} distinct row counts (1500, 1501, ...):")
        for i in range(args.memory):
            onednn(torch.randn(1, 1500 + i, 2048, generator=gen), W)
            if (i + 1) % max(args.memory // 4, 1) == 0:
                print(f"  after {i + 1} row counts: resident {rss_mb():.0f} MB (+{rss_mb() - start:.0f})")


if __name__ == "__main__":
    main()
