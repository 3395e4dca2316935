"""The fused CPU LSTM cell (elmo_fast.fast.native) against the torch op sequence it replaces, side by side.

Two measurements in one run:

* one biLSTM step's elementwise work at ``(D, n, C)`` (default the small model's training step, 2 x 32 x 1024),
  forward (training variant: gates, raw and clipped cells and ``tanh(c)`` kept) and backward, best of ``--reps``;
* whole ``Trainer.step`` of ``benchmarks/run.py``'s training batch, alternating the kernel on and off in one
  process (``ELMO_FAST_NATIVE``), reporting the stepping thread's CPU time (``time.thread_time``), which other
  jobs on the machine do not inflate, and the wall time.

Usage::

    .venv/bin/python benchmarks/lstm_cell.py --threads 1 --steps 10 --precision fp32 bf16
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as R  # noqa: E402  (benchmarks/run.py: the training batch and random models)
from elmo_fast import numerics  # noqa: E402
from elmo_fast.fast import native  # noqa: E402


#: the training batches of benchmarks/run.py (rows x unroll steps)
TRAIN_SHAPES = {"small": (32, 20), "original": (128, 20)}


def step_kernels(D: int, n: int, C: int, reps: int) -> dict[str, float]:
    """Seconds of one step's forward/backward elementwise work, torch ops vs the fused kernel."""
    gen = torch.Generator().manual_seed(0)
    g0 = torch.randn(D, n, 4 * C, generator=gen) * 3
    cp = torch.randn(D, n, C, generator=gen)
    raw, cc, tc, hc, tmp = (torch.empty(D, n, C) for _ in range(5))
    g = g0.clone()
    dc0 = torch.randn(D, n, C, generator=gen)
    dz = torch.empty(D, n, 4 * C)
    ds = torch.randn(D, n, C, generator=gen)
    mask = torch.rand(D, n, C, generator=gen) > 0.1

    def torch_fwd():
        g.copy_(g0)
        g[..., :3 * C].sigmoid_()
        g[..., 3 * C:].tanh_()
        i, f, o, j = g.split(C, dim=-1)
        torch.mul(i, j, out=hc)
        torch.mul(f, cp, out=raw)
        raw.add_(hc)
        torch.clamp(raw, -3.0, 3.0, out=cc)
        torch.tanh(cc, out=tc)
        torch.mul(tc, o, out=hc)

    def fused_fwd():
        g.copy_(g0)
        native.cell_forward(g, cp, raw, cc, tc, hc, 3.0)

    def torch_bwd():
        i, f, o, j = g.split(C, dim=-1)
        dsig, (di, df, do, dj) = dz[..., :3 * C], dz.split(C, dim=-1)
        d = dc0.clone()
        torch.mul(d, tc, out=do)
        d.mul_(o)
        t2 = torch.mul(tc, tc, out=tmp)
        d.addcmul_(d, t2, value=-1.0)
        d.add_(ds)
        d.mul_(mask)
        torch.mul(d, j, out=di)
        torch.mul(d, i, out=dj)
        torch.mul(d, cp, out=df)
        torch.mul(d, f, out=ds)
        dsig.mul_(g[..., :3 * C])
        dsig.addcmul_(dsig, g[..., :3 * C], value=-1.0)
        torch.mul(j, j, out=t2)
        dj.addcmul_(dj, t2, value=-1.0)

    def fused_bwd():
        native.cell_backward(dc0.clone(), g, dz, tc, cp, ds, None, mask)

    fused_fwd()  # activated gates for the backward rows
    return {"forward torch": R.best_time(torch_fwd, reps), "forward fused": R.best_time(fused_fwd, reps),
            "backward torch": R.best_time(torch_bwd, reps), "backward fused": R.best_time(fused_bwd, reps)}


def train_steps(shape: str, precision: str, steps: int) -> dict[str, list[tuple[float, float]]]:
    """(CPU seconds, wall seconds) of each timed Trainer.step, kernel on ("1") and off ("0"), alternating."""
    from elmo_fast.train import LanguageModel, TrainConfig, Trainer
    rows, unroll = TRAIN_SHAPES[shape]
    rng = np.random.default_rng(7)
    batch = R._Batch(rows, unroll, R.make_words(R.VOCAB, rng), rng)
    torch.manual_seed(0)
    model = LanguageModel(R.preset(shape), R.VOCAB, backend=None)
    model.bilm.load_state_dict(R.random_model(shape, "fast").state_dict())
    with torch.no_grad():
        model.softmax_weight.normal_(0, 0.05)
        model.softmax_bias.zero_()
    trainer = Trainer(model, TrainConfig(batch_size=rows, unroll_steps=unroll, n_negative_samples=R.NEGATIVES))
    data = R._make_data_batch(batch)

    def setting(on: str) -> None:
        os.environ[native.ENABLE_ENV] = on
        native.reset()
        native.library()

    def one() -> tuple[float, float]:
        c, w = time.thread_time(), time.perf_counter()
        with numerics.use(precision=precision):
            trainer.step(data)
        return time.thread_time() - c, time.perf_counter() - w

    for on in ("1", "0"):  # warm-up: heap, page faults, packed weights
        setting(on)
        one(), one()
    out: dict[str, list[tuple[float, float]]] = {"1": [], "0": []}
    for _ in range(steps):
        for on in ("1", "0"):
            setting(on)
            out[on].append(one())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the kernel uses as many)")
    p.add_argument("--shape", default="small", choices=["small", "original"], help="model preset of the train step")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=list(numerics.PRECISIONS),
                   help="precisions of the train-step rows")
    p.add_argument("--steps", type=int, default=10, help="timed train steps per setting (alternating)")
    p.add_argument("--reps", type=int, default=30, help="repetitions of the per-step kernel timing (best kept)")
    p.add_argument("--cell", type=int, nargs=3, default=[2, 32, 1024], metavar=("D", "N", "C"),
                   help="per-step shape of the kernel timing")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if native.library() is None:
        raise SystemExit("the fused cell is off here (no C compiler, or ELMO_FAST_NATIVE=0): nothing to compare")
    print(f"threads {args.threads}; per-step elementwise work at (D, n, C) = {tuple(args.cell)}, best of {args.reps}")
    k = step_kernels(*args.cell, args.reps)
    print("| pass | torch ops | fused kernel |\n|---|---|---|")
    for part in ("forward", "backward"):
        print(f"| {part} | {k[part + ' torch'] * 1e6:.0f} us | {k[part + ' fused'] * 1e6:.0f} us |")
    print(f"\nTrainer.step, {args.shape}, {args.steps} steps per setting, alternating; CPU time of the stepping thread "
          "(wall in brackets)")
    print("| precision | torch ops: best / median | fused: best / median | change of the median |\n|---|---|---|---|")
    for prec in args.precision:
        res = train_steps(args.shape, prec, args.steps)
        row = []
        for on in ("0", "1"):
            cpu = sorted(c for c, _ in res[on])
            wall = sorted(w for _, w in res[on])
            row.append((cpu[0], cpu[len(cpu) // 2], wall[len(wall) // 2]))
        (b0, m0, w0), (b1, m1, w1) = row
        print(f"| {prec} | {b0 * 1e3:.1f} / {m0 * 1e3:.1f} ms ({w0 * 1e3:.1f}) | {b1 * 1e3:.1f} / {m1 * 1e3:.1f} ms "
              f"({w1 * 1e3:.1f}) | {100 * (m1 / m0 - 1):+.1f}% |")


if __name__ == "__main__":
    main()
