"""Time every Triton kernel against its pure-PyTorch reference (and the biLSTM layer against cuDNN's
``torch.nn.LSTM(proj_size=...)``) on one CUDA GPU; print one table.

Shapes: a public preset (default ``original``: C 4096, P 512, F 2048, 2 highway layers) at
``--batch`` rows x ``--steps`` time steps (default 128 x 20, bilm-tf's training batch), sampled softmax
with ``--negatives`` shared samples over ``--vocab`` words, full softmax over ``--vocab`` for
``--eval-rows`` rows. The floor column is the cost-model lower bound (benchmarks/KERNELS_COST_MODEL.md)
for the chosen precision on an H100.

Without CUDA the script says so and exits 0 (the kernels are verified on CPU by the test suite, under
the Triton interpreter, which says nothing about speed).

    python benchmarks/gpu_kernels.py [--preset original] [--precision tf32x3|ieee|tf32|bf16] [--backward] [--json F]

The LSTM step loops are replayed from CUDA graphs after the warm-up calls unless ``ELMO_FAST_CUDA_GRAPHS=0``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

import torch

# H100 figures of the cost model (see KERNELS_COST_MODEL.md)
HBM_BYTES_PER_S = 3.0e12
PEAK_FLOPS = {"fp32": 67e12, "ieee": 67e12, "tf32": 400e12, "bf16": 800e12, "tf32x3": 400e12 / 3}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="original", help="model preset: tiny|small|medium|original (default original)")
    p.add_argument("--batch", type=int, default=128, help="rows per batch (default 128)")
    p.add_argument("--steps", type=int, default=20, help="time steps per row (default 20)")
    p.add_argument("--negatives", type=int, default=8192, help="sampled-softmax negatives (default 8192)")
    p.add_argument("--vocab", type=int, default=793471, help="softmax vocabulary size (default 793471, 1B Word)")
    p.add_argument("--eval-rows", type=int, default=256, help="rows of the full-softmax evaluation (default 256)")
    p.add_argument("--precision", default="tf32x3", choices=["tf32x3", "ieee", "fp32", "tf32", "bf16"],
                   help="Triton matmul input precision (default tf32x3, the kernels' default; ieee = fp32)")
    p.add_argument("--backward", action="store_true", help="time forward + backward instead of forward only")
    p.add_argument("--repeats", type=int, default=20, help="timed repetitions per entry (median reported)")
    p.add_argument("--skip-reference-lstm", action="store_true",
                   help="skip the (slow, step-by-step) reference LSTM timing")
    p.add_argument("--smoke", action="store_true",
                   help="no GPU: run the script end to end on CPU under the Triton interpreter with tiny shapes "
                        "(checks the script; the times mean nothing)")
    p.add_argument("--json", help="also write the table (one object per row) to this JSON file")
    return p.parse_args(argv)


def cuda_time_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` in ms, measured with CUDA events after 3 warm-up calls."""
    if not torch.cuda.is_available():  # --smoke
        t0 = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - t0)
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def with_backward(fn: Callable[[], torch.Tensor], params: list[torch.Tensor], backward: bool) -> Callable[[], object]:
    if not backward:
        def run():
            with torch.no_grad():
                return fn()
        return run

    def run_bwd():
        out = fn()
        out = out[0] if isinstance(out, tuple) else out
        return torch.autograd.grad(out.float().sum(), [p for p in params if p.requires_grad], allow_unused=True)
    return run_bwd


def floor_ms(flops: float, bytes_: float, precision: str) -> tuple[float, str]:
    t_c = flops / PEAK_FLOPS[precision]
    t_m = bytes_ / HBM_BYTES_PER_S
    return 1e3 * max(t_c, t_m), ("compute" if t_c >= t_m else "memory")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are imported
        args.preset, args.batch, args.steps, args.negatives, args.vocab, args.eval_rows = "tiny", 3, 4, 20, 300, 5
        args.repeats = 1
    elif not torch.cuda.is_available():
        print("gpu_kernels: no CUDA device here; nothing timed. The kernels are checked on CPU by the test "
              "suite under TRITON_INTERPRET=1 (correctness only). Run this on a GPU machine.")
        return 0
    from elmo_fast.kernels.char_cnn import char_cnn
    from elmo_fast.kernels.common import set_precision
    from elmo_fast.kernels.highway import highway, projection
    from elmo_fast.kernels.lstm_cell import lstm_bidirectional_layer
    from elmo_fast.kernels.sampled_softmax import full_softmax_loss, sampled_softmax_loss
    from elmo_fast.nn import softmax as ref_softmax
    from elmo_fast.nn.lstm import lstm_layer_reference
    from elmo_fast.nn.token_encoder import char_cnn_features, highway_reference
    from elmo_fast.options import preset

    set_precision(args.precision)
    torch.backends.cuda.matmul.allow_tf32 = False  # references in float32, as the spec's oracle
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    opts = preset(args.preset)
    cnn, lstm = opts.char_cnn, opts.lstm
    B, T, P, C = args.batch, args.steps, lstm.projection_dim, lstm.dim
    N, F, d = B * T, cnn.n_filters, cnn.embedding_dim
    g = torch.Generator(device="cpu").manual_seed(0)
    rnd = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(dev).requires_grad_(args.backward)  # noqa: E731
    rows: list[tuple[str, float | None, float | None, float | None, tuple[float, str]]] = []

    def bench(name, ours, reference, params, flops, bytes_, cudnn=None):
        t_ours = cuda_time_ms(with_backward(ours, params, args.backward), args.repeats)
        t_ref = cuda_time_ms(with_backward(reference, params, args.backward), args.repeats) if reference else None
        t_cudnn = cuda_time_ms(with_backward(cudnn, params, args.backward), args.repeats) if cudnn else None
        rows.append((name, t_ref, t_ours, t_cudnn, floor_ms(flops * (3 if args.backward else 1), bytes_,
                                                             args.precision)))
        print(f"  timed {name}", file=sys.stderr)

    # char-CNN
    ids = torch.randint(1, 262, (N, cnn.max_characters_per_token), generator=g).to(dev)
    emb = rnd(261, d)
    Ws = [rnd(1, w, d, n, scale=0.05) for w, n in cnn.filters]
    bs = [rnd(n, scale=0.0) for _, n in cnn.filters]
    L = cnn.max_characters_per_token
    cnn_flops = 2.0 * N * d * sum((L - w + 1) * w * n for w, n in cnn.filters)
    cnn_bytes = N * L * 4 + sum(w * d * n for w, n in cnn.filters) * 4 + N * F * 4
    bench("char-CNN (gather+conv+max+act)", lambda: char_cnn(ids, emb, Ws, bs, cnn.activation),
          lambda: char_cnn_features(ids, emb, Ws, bs, cnn.activation), [emb] + Ws + bs, cnn_flops, cnn_bytes)
    # highway + projection
    x = rnd(N, F)
    hw = [rnd(F, F, scale=F ** -0.5), rnd(F), rnd(F, F, scale=F ** -0.5), rnd(F)]
    bench("highway layer (fused epilogue)", lambda: highway(x, *hw), lambda: highway_reference(x, *hw), [x] + hw,
          2.0 * N * F * 2 * F, (2 * F * F + 2 * N * F) * 4)
    Wp, bp = rnd(F, P, scale=F ** -0.5), rnd(P)
    bench("projection", lambda: projection(x, Wp, bp), lambda: x @ Wp + bp, [x, Wp, bp], 2.0 * N * F * P,
          (N * F + F * P + N * P) * 4)
    # biLSTM layer (both directions)
    xs = rnd(B, T, P)
    W0, Bb, WP = rnd(2, 2 * P, 4 * C, scale=(2 * P) ** -0.5), rnd(2, 4 * C, scale=0.0), rnd(2, C, P, scale=C ** -0.5)
    h0, c0 = torch.zeros(2, B, P, device=dev), torch.zeros(2, B, C, device=dev)
    lengths = torch.full((B,), T, device=dev, dtype=torch.int32)
    x2 = xs.unsqueeze(0).expand(2, B, T, P)
    ours = lambda: lstm_bidirectional_layer(x2, W0, Bb, WP, h0, c0, lengths, lstm.cell_clip, lstm.proj_clip, False)  # noqa: E731

    def reference():
        outs = [lstm_layer_reference(xs, lengths, h0[k], c0[k], W0[k], Bb[k], WP[k], lstm.cell_clip, lstm.proj_clip,
                                     reverse=k == 1)[0] for k in (0, 1)]
        return torch.stack(outs)
    cudnn_lstm = torch.nn.LSTM(P, C, proj_size=P, batch_first=True, bidirectional=True).to(dev)  # cuDNN on CUDA
    cudnn_lstm.requires_grad_(args.backward)
    lstm_flops = 2.0 * 2 * N * P * 4 * C + 2 * T * 2 * (2.0 * B * P * 4 * C + 2.0 * B * C * P)
    lstm_bytes = 2 * (2 * P * 4 * C + C * P) * 4 + 2 * N * P * 4 * 2
    bench("biLSTM layer, 2 dirs (clips, no cuDNN equiv.)", ours, None if args.skip_reference_lstm else reference,
          [xs, W0, Bb, WP], lstm_flops, lstm_bytes, cudnn=lambda: cudnn_lstm(xs)[0])
    # sampled softmax (one direction)
    V, S = args.vocab, min(args.negatives, args.vocab)
    Wv, bv = rnd(V, P, scale=P ** -0.5), rnd(V, scale=0.0)
    h = rnd(N, P)
    tg = torch.randint(0, V, (N,), generator=g).to(dev)
    sid = torch.randperm(V, generator=g)[:S].to(dev)
    qt, qs = torch.full((N,), 0.01, device=dev), torch.full((S,), 0.01, device=dev)
    bench("sampled softmax (S negatives)", lambda: sampled_softmax_loss(h, tg, Wv, bv, sid, qt, qs),
          lambda: ref_softmax.sampled_softmax_loss(h, tg, Wv, bv, sid, qt, qs), [h, Wv, bv],
          2.0 * N * S * P, (S * P + 2 * N * P) * 4)
    # full softmax evaluation (forward only)
    he = torch.randn(args.eval_rows, P, generator=g).to(dev)
    te = torch.randint(0, V, (args.eval_rows,), generator=g).to(dev)
    Wd, bd = Wv.detach(), bv.detach()
    saved = args.backward
    args.backward = False
    bench("full softmax eval (chunked V)", lambda: full_softmax_loss(he, te, Wd, bd),
          lambda: ref_softmax.full_softmax_loss(he, te, Wd, bd), [], 2.0 * args.eval_rows * V * P, V * P * 4)
    args.backward = saved

    mode = "forward+backward" if args.backward else "forward"
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU smoke run (times meaningless)"
    print(f"\n{device_name} | preset {args.preset} | batch {B} x {T} | triton precision "
          f"{args.precision} | {mode} | median of {args.repeats}")
    print(f"{'kernel':46} {'reference ms':>12} {'triton ms':>10} {'speedup':>8} {'cuDNN ms':>9} {'floor ms':>9} bound")
    for name, t_ref, t_ours, t_cudnn, (fl, bound) in rows:
        fmt = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731
        speed = f"{t_ref / t_ours:.2f}x" if t_ref and t_ours else "-"
        print(f"{name:46} {fmt(t_ref):>12} {fmt(t_ours):>10} {speed:>8} {fmt(t_cudnn):>9} {fl:>9.3f} {bound}")
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump({"device": device_name, "preset": args.preset, "batch": B, "steps": T,
                       "precision": args.precision, "mode": mode, "repeats": args.repeats,
                       "rows": [{"kernel": name, "reference_ms": t_ref, "triton_ms": t_ours, "cudnn_ms": t_cudnn,
                                 "floor_ms": fl, "bound": bound}
                                for name, t_ref, t_ours, t_cudnn, (fl, bound) in rows]},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
