"""Where a fast-path training step's time goes: one table of phases per model shape.

The step is exactly ``elmo_fast.training.Trainer.step`` on the batch ``benchmarks/run.py`` times (same words,
same Zipf draw, sampled softmax with 8192 negatives over a 100k vocabulary, dropout 0.1). Phases are timed with
wall-clock timers placed around the step's parts from outside (no change to the code being measured):

* ``data``: moving the batch to the device and drawing the negatives (``log_uniform_sample``);
* ``token encoder fwd``: ``BiLM.encode_tokens`` (distinct spellings only);
* ``biLSTM fwd layer k``: the fast biLSTM's per-layer autograd Function (``_Layer.forward``), input projection
  and recurrence of both directions; ``biLSTM fwd glue``: the rest of ``forward_streams`` (gathers, stacking,
  dropout, final states);
* ``softmax fwd``: the rest of the model's forward (softmax rows, expected counts, sampled logits, loss);
* ``softmax bwd``: from the start of ``backward()`` until the gradients of both streams' top outputs exist;
* ``biLSTM bwd layer k``: ``_Layer.backward`` (backward through time + weight gradients); ``biLSTM bwd glue``:
  the rest until the token embeddings' gradient exists;
* ``token encoder bwd``: from there to the end of ``backward()`` (embedding gather, highway, char-CNN);
* ``clip``: global-norm clipping; ``optimizer``: ``zero_grad`` + Adagrad ``step``; ``other``: the remainder.

Each phase is the median over the timed steps (the machine may be shared; the step's own total is reported as
both the median and the best). Autograd runs CPU backward on the calling thread, so the backward phases are
sequential and their boundaries are well defined.

Usage::

    python benchmarks/profile_train.py --shapes small original --steps 5 --threads 2
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.run import NEGATIVES, VOCAB, _Batch, _make_data_batch, make_words, random_model  # noqa: E402
from elmo_fast.fast import lstm as fast_lstm  # noqa: E402
from elmo_fast.options import preset  # noqa: E402
from elmo_fast.training import trainer as trainer_mod  # noqa: E402

logger = logging.getLogger("profile_train")

SHAPES = {"small": (32, 20), "original": (128, 20)}

#: the clock of every phase (``--clock``): wall time, or the calling thread's CPU time (one thread only: then other
#: jobs on the machine do not inflate the phases)
_now: Callable[[], float] = time.perf_counter


class PhaseClock:
    """Accumulates wall-clock seconds per phase name for the current step."""

    def __init__(self) -> None:
        self.step: dict[str, float] = defaultdict(float)
        self.marks: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.step[name] += seconds

    def timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = _now()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, _now() - t)
        return wrapper


def instrument(trainer: Any, clock: PhaseClock) -> Callable[[], None]:
    """Install the timers around ``trainer``'s model and optimizer; returns a function undoing the global ones."""
    model = trainer.model
    bilm = model.bilm
    layer_counter = {"fwd": 0, "bwd": 0}

    # ---- forward parts
    orig_encode = bilm.encode_tokens

    def encode_tokens(char_ids: torch.Tensor) -> torch.Tensor:
        t = _now()
        out = orig_encode(char_ids)
        clock.add("token encoder fwd", _now() - t)
        if out.requires_grad:
            out.register_hook(lambda g: clock.marks.__setitem__("emb_grad", _now()))
        return out
    bilm.encode_tokens = encode_tokens

    orig_streams = bilm.forward_streams

    def forward_streams(*args: Any, **kwargs: Any) -> Any:
        t = _now()
        layer_counter["fwd"] = 0
        before = sum(v for k, v in clock.step.items() if k.startswith("biLSTM fwd layer"))
        fw, bw, state = orig_streams(*args, **kwargs)
        inside = sum(v for k, v in clock.step.items() if k.startswith("biLSTM fwd layer")) - before
        clock.add("biLSTM fwd glue", _now() - t - inside)
        top_marks = []

        def mark(g: torch.Tensor) -> None:
            top_marks.append(_now())
            clock.marks["top_grad"] = max(top_marks)
        for y in (fw[-1], bw[-1]):
            if y.requires_grad:
                y.register_hook(mark)
        return fw, bw, state
    bilm.forward_streams = forward_streams

    orig_forward = model.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        t = _now()
        before = sum(v for k, v in clock.step.items() if "fwd" in k)
        out = orig_forward(*args, **kwargs)
        inside = sum(v for k, v in clock.step.items() if "fwd" in k) - before
        clock.add("softmax fwd", _now() - t - inside)
        return out
    model.forward = forward

    # ---- the fast biLSTM's per-layer Function (global: undone by the returned function)
    layer_fn = fast_lstm._Layer
    orig_lf, orig_lb = layer_fn.forward, layer_fn.backward

    def layer_forward(ctx, *args):  # type: ignore[no-untyped-def]
        k = layer_counter["fwd"]
        layer_counter["fwd"] += 1
        t = _now()
        out = orig_lf(ctx, *args)
        clock.add(f"biLSTM fwd layer {k}", _now() - t)
        return out

    def layer_backward(ctx, *grads):  # type: ignore[no-untyped-def]
        k = layer_counter["fwd"] - 1 - layer_counter["bwd"]  # backward meets the layers top first
        layer_counter["bwd"] += 1
        t = _now()
        out = orig_lb(ctx, *grads)
        clock.add(f"biLSTM bwd layer {k}", _now() - t)
        clock.marks.setdefault("first_layer_bwd", t)
        return out
    layer_fn.forward = staticmethod(layer_forward)
    layer_fn.backward = staticmethod(layer_backward)

    # ---- backward boundaries: Tensor.backward of the step's loss
    orig_backward = torch.Tensor.backward

    def backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        t0 = _now()
        layer_counter["bwd"] = 0
        before = sum(v for k, v in clock.step.items() if k.startswith("biLSTM bwd layer"))
        out = orig_backward(self, *args, **kwargs)
        t_end = _now()
        layers = sum(v for k, v in clock.step.items() if k.startswith("biLSTM bwd layer")) - before
        top = clock.marks.pop("top_grad", t0)
        emb = clock.marks.pop("emb_grad", t_end)
        clock.marks.pop("first_layer_bwd", None)
        clock.add("softmax bwd", top - t0)
        clock.add("biLSTM bwd glue", (emb - top) - layers)
        clock.add("token encoder bwd", t_end - emb)
        return out
    torch.Tensor.backward = backward

    # ---- data, clip, optimizer
    orig_sample = trainer_mod.log_uniform_sample
    trainer_mod.log_uniform_sample = clock.timed("data", orig_sample)
    orig_clip = trainer_mod._clip_global_norm
    trainer_mod._clip_global_norm = clock.timed("clip", orig_clip)
    opt = trainer.optimizer
    opt.step = clock.timed("optimizer", opt.step)
    opt.zero_grad = clock.timed("optimizer", opt.zero_grad)

    def undo() -> None:
        layer_fn.forward, layer_fn.backward = staticmethod(orig_lf), staticmethod(orig_lb)
        torch.Tensor.backward = orig_backward
        trainer_mod.log_uniform_sample = orig_sample
        trainer_mod._clip_global_norm = orig_clip
    return undo


def profile_shape(name: str, steps: int, warmup: int, precision: str = "fp32"
                  ) -> tuple[list[tuple[str, float]], float, float, int]:
    """Median seconds per phase, median and best step seconds, tokens per step (``precision``: as ``train
    --precision``: "bf16" runs the whole step, optimizer included, under ``numerics.use(precision="bf16")``)."""
    from elmo_fast import numerics
    from elmo_fast.training import LanguageModel, TrainConfig, Trainer
    rows, unroll = SHAPES[name]
    rng = np.random.default_rng(7)
    words = make_words(VOCAB, rng)
    data = _make_data_batch(_Batch(rows, unroll, words, rng))
    torch.manual_seed(0)
    model = LanguageModel(preset(name), VOCAB, backend=None)
    if model.bilm.backend_name(torch.device("cpu"), "bilstm") != "fast":
        raise RuntimeError("the fast backend is not the CPU default (is ELMO_FAST_BACKEND set?)")
    model.bilm.load_state_dict(random_model(name, "fast").state_dict())
    with torch.no_grad():
        model.softmax_weight.normal_(0, 0.05)
        model.softmax_bias.zero_()
    trainer = Trainer(model, TrainConfig(batch_size=rows, unroll_steps=unroll, n_negative_samples=NEGATIVES))
    with numerics.use(precision=precision):
        for _ in range(warmup):
            trainer.step(data)
        clock = PhaseClock()
        undo = instrument(trainer, clock)
        per_phase: dict[str, list[float]] = defaultdict(list)
        totals = []
        try:
            for _ in range(steps):
                clock.step = defaultdict(float)
                t = _now()
                trainer.step(data)
                total = _now() - t
                clock.step["other"] = total - sum(clock.step.values())
                for k, v in clock.step.items():
                    per_phase[k].append(v)
                totals.append(total)
        finally:
            undo()
    order = ["data", "token encoder fwd", "biLSTM fwd layer 0", "biLSTM fwd layer 1", "biLSTM fwd glue",
             "softmax fwd", "softmax bwd", "biLSTM bwd layer 0", "biLSTM bwd layer 1", "biLSTM bwd glue",
             "token encoder bwd", "clip", "optimizer", "other"]
    names = [k for k in order if k in per_phase] + sorted(k for k in per_phase if k not in order)
    return [(k, statistics.median(per_phase[k])) for k in names], statistics.median(totals), min(totals), rows * unroll


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["small", "original"], choices=sorted(SHAPES))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per shape (median per phase)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: elapsed time; cpu: the stepping thread's CPU time (needs --threads 1; other jobs "
                             "on a shared machine then do not inflate the phases)")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"],
                        help="profile each shape in these settings (bf16: as `train --precision bf16`)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        if torch.get_num_threads() != 1:
            parser.error("--clock cpu measures the calling thread only: use it with --threads 1")
        global _now
        _now = time.thread_time
    from elmo_fast.runtime import retain_freed_memory
    retain_freed_memory()
    for name, precision in ((n, p) for n in args.shapes for p in args.precision):
        logger.info("profiling %s %s ...", name, precision)
        phases, median, best, tokens = profile_shape(name, args.steps, args.warmup, precision)
        print(f"\n{name} {SHAPES[name][0]}x{SHAPES[name][1]} {precision}, {torch.get_num_threads()} threads, "
              f"{args.clock} clock, "
              f"{args.steps} steps: median {median * 1e3:.0f} ms ({tokens / median:.0f} tok/s), "
              f"best {best * 1e3:.0f} ms ({tokens / best:.0f} tok/s)")
        print("| phase | ms (median) | share |")
        print("|---|---|---|")
        total = sum(v for _, v in phases)
        for k, v in phases:
            print(f"| {k} | {v * 1e3:.1f} | {100 * v / total:.1f}% |")


if __name__ == "__main__":
    main()
