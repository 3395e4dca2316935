"""``make bench``: one table comparing the fast CPU path (float32 and bf16), the reference and an AllenNLP-style
baseline.

Columns: ``fast`` (float32), ``bf16`` (the same fast path with ``precision="bf16"``: bfloat16 product inputs,
float32 accumulation, float32 weights/state; training steps run inside ``numerics.use(precision="bf16")`` as
``elmo-fast train --precision bf16`` does, so the hand-written backward and the softmax products are bf16 too),
``reference``, ``baseline``. Rows (random weights, CPU, this machine's threads or ``--threads``):

* inference (stateless biLM forward, no grad) for the ``small`` and ``original`` shapes at batch 1 and
  batch 32 of a realistic length mix (mean ~25 tokens; see :func:`make_sentences`);
* a training step (forward, backward, Adagrad; sampled softmax with 8192 negatives over a 100k
  vocabulary, both directions) at ``small`` 32 x 20 and ``original`` 128 x 20;
* sampled (8192) vs full (100k) softmax loss, forward + backward.

Also printed: the machine's fp32 matmul rate measured in the same run (2048^3 ``torch.mm``), the model
FLOPs per token, and efficiency = achieved FLOP/s / matmul rate. Timings are the best of ``reps`` runs
after one warm-up run (the machine may be shared; the best run is the least disturbed one).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import machine  # noqa: E402
from benchmarks.baseline import BaselineElmo  # noqa: E402
from elmo_fast import numerics  # noqa: E402
from elmo_fast.chars import batch_to_ids  # noqa: E402
from elmo_fast.nn.bilm import BiLM  # noqa: E402
from elmo_fast.options import ElmoOptions, preset  # noqa: E402

logger = logging.getLogger("bench")

VOCAB = 100_000
NEGATIVES = 8192
#: untimed training steps per implementation before timing (steady state: heap grown, pages resident)
TRAIN_WARMUP = 2
#: the bf16 rows' check against the reference (inference, last layer): max |diff| / max |reference| (bf16 products
#: differ by ~1e-2 relative per value; benchmarks/bf16.py measures it properly)
BF16_CHECK_REL = 0.1


# ---------------------------------------------------------------------------------------------- inputs
def make_words(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct pseudo-words with an English-like length distribution (1-15 letters, mean ~5)."""
    lengths = np.clip(rng.poisson(4.5, size=n) + 1, 1, 15)
    words, seen = [], set()
    for i, length in enumerate(lengths):
        w = "".join(chr(97 + c) for c in rng.integers(0, 26, size=length))
        if w in seen:
            w = f"{w}{i}"
        seen.add(w)
        words.append(w)
    return words


def make_sentences(n: int, seed: int = 0, vocab: int = 50_000) -> list[list[str]]:
    """``n`` sentences: log-normal lengths (mean ~25, 1..80) of Zipf-distributed (s = 1.1) pseudo-words."""
    rng = np.random.default_rng(seed)
    words = make_words(vocab, rng)
    ranks = np.arange(1, vocab + 1)
    p = 1.0 / ranks ** 1.1
    p /= p.sum()
    lengths = np.clip(np.round(rng.lognormal(math.log(22.0), 0.5, size=n)), 1, 80).astype(int)
    return [[words[k] for k in rng.choice(vocab, size=length, p=p)] for length in lengths]


def random_model(name: str, backend: str, seed: int = 0) -> BiLM:
    """A stateless :class:`BiLM` of preset ``name`` with random weights (scaled so the clips are active)."""
    options = preset(name)
    model = BiLM(options, stateful=False, backend=backend)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.bilm_tf_parameters().values():
            fan_in = param.shape[-2] if param.dim() >= 2 else 1
            std = 0.5 if param.dim() == 1 else 1.5 / math.sqrt(fan_in)
            param.copy_(torch.randn(param.shape, generator=gen) * std)
    return model.eval()


# ---------------------------------------------------------------------------------------------- FLOPs
def encoder_flops(o: ElmoOptions) -> float:
    """Multiply-adds x 2 of the token encoder for one position (all 50 char windows, as the model defines)."""
    cc = o.char_cnn
    d = cc.embedding_dim
    conv = sum(2 * w * d * n * (cc.max_characters_per_token - w + 1) for w, n in cc.filters)
    Fdim = cc.n_filters
    return conv + cc.n_highway * 2 * (2 * Fdim * Fdim) + 2 * Fdim * o.lstm.projection_dim


def lstm_flops(o: ElmoOptions) -> float:
    """Both directions, all layers, one position: ``[x; h] @ W_0`` and ``hc @ W_P``."""
    P, C = o.lstm.projection_dim, o.lstm.dim
    return 2 * o.lstm.n_layers * (2 * (2 * P) * 4 * C + 2 * C * P)


def inference_flops(o: ElmoOptions) -> float:
    return encoder_flops(o) + lstm_flops(o)


def train_flops(o: ElmoOptions) -> float:
    """Per token of B x T: both streams' encoders + both LSTM stacks + both sampled softmaxes, x3 (fwd + bwd)."""
    P = o.lstm.projection_dim
    return 3 * (2 * encoder_flops(o) + lstm_flops(o) + 2 * 2 * P * (NEGATIVES + 1))


def matmul_rate(reps: int = 5) -> float:
    """Best fp32 FLOP/s of a 2048^3 ``torch.mm`` on this machine."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 2048 ** 3 / best


def best_time(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# ---------------------------------------------------------------------------------------------- inference
def bench_inference(name: str, batch: int, n_batches: int, reps: int, impls: list[str],
                    grouped: bool = False, slow_warmup: int = 1) -> dict[str, float]:
    """Tokens/s of each implementation on the same ``n_batches`` batches of ``batch`` sentences.

    ``grouped``: the batches are formed as the stateless embedder forms them (sentences sorted by length
    across all ``n_batches * batch`` sentences, :func:`elmo_fast.embedder.length_groups`).
    """
    sentences = make_sentences(batch * n_batches, seed=1 + batch)
    if grouped:
        from elmo_fast.embedder import length_groups
        groups = length_groups([len(s) for s in sentences], batch)
        sentences = [sentences[i] for g in groups for i in g]
    batches = [batch_to_ids(sentences[i * batch:(i + 1) * batch]) for i in range(n_batches)]
    n_tokens = sum(len(s) for s in sentences)
    fast = random_model(name, "fast")
    ref = random_model(name, "reference")
    runners = {"fast": fast, "reference": ref}
    if "bf16" in impls:
        runners["bf16"] = random_model(name, "fast")
        runners["bf16"].precision = "bf16"   # the model enters it around each op (BiLM.numerics_context)
    if "baseline" in impls:
        runners["baseline"] = BaselineElmo(ref).eval()
    runs = {}
    for impl in impls:
        model = runners[impl]

        @torch.no_grad()
        def run(model=model) -> None:
            for ids in batches:
                model(ids)
        for _ in range(1 if impl in ("fast", "bf16") else slow_warmup):
            run()
        runs[impl] = run
    # interleaved timed runs (best of reps): a change of machine load hits every implementation alike
    best = dict.fromkeys(runs, math.inf)
    for _ in range(reps):
        for impl, run in runs.items():
            t = time.perf_counter()
            run()
            best[impl] = min(best[impl], time.perf_counter() - t)
    out = {impl: n_tokens / best[impl] for impl in runs}
    # the implementations compute the same function: check it on the first batch
    if "reference" not in impls:
        return out
    with torch.no_grad():
        want = ref(batches[0])["activations"][-1]
        for impl in impls:
            if impl != "reference":
                res = runners[impl](batches[0])
                got = res["activations"][-1] if isinstance(res, dict) else res[-1]
                err = float((got - want).abs().max())
                tol = BF16_CHECK_REL * float(want.abs().max()) if impl == "bf16" else 1e-3
                if err > tol:
                    raise AssertionError(f"{impl} differs from the reference by {err} (allowed {tol})")
    return out


# ---------------------------------------------------------------------------------------------- training
class _Batch:
    """A training batch in :class:`elmo_fast.data.Batch`'s layout (distinct token spellings + indices)."""

    def __init__(self, rows: int, steps: int, words: list[str], rng: np.random.Generator) -> None:
        ranks = np.arange(1, VOCAB + 1)
        p = 1.0 / ranks ** 1.1
        p /= p.sum()
        ids = rng.choice(VOCAB, size=(2, rows, steps + 1), p=p)
        uniq, inverse = np.unique(ids[:, :, :-1], return_inverse=True)
        self.token_chars = batch_to_ids([[words[k]] for k in uniq])[:, 0]
        inverse = torch.from_numpy(inverse.reshape(2, rows, steps))
        self.fw_inputs, self.bw_inputs = inverse[0], inverse[1]
        self.fw_targets = torch.from_numpy(ids[0, :, 1:]).long()
        self.bw_targets = torch.from_numpy(ids[1, :, 1:]).long()


def _make_data_batch(b: _Batch):
    try:
        from elmo_fast.data import Batch
    except ImportError:  # pragma: no cover
        return b
    return Batch(b.token_chars, b.fw_inputs, b.bw_inputs, b.fw_targets, b.bw_targets)


def _sampled_loss(hidden, targets, weight, bias, gen):
    from elmo_fast.nn.softmax import log_uniform_expected_count, log_uniform_sample, sampled_softmax_loss
    ids, tries = log_uniform_sample(VOCAB, NEGATIVES, gen)
    q_t = log_uniform_expected_count(targets, tries, VOCAB, NEGATIVES)
    q_s = log_uniform_expected_count(ids, tries, VOCAB, NEGATIVES)
    return sampled_softmax_loss(hidden, targets, weight, bias, ids, q_t, q_s).mean()


def bench_training(name: str, rows: int, steps: int, reps: int, impls: list[str]) -> tuple[dict[str, float], str]:
    """Tokens/s (B x T per step) of one optimisation step. Returns (results, what the fast/reference rows ran)."""
    rng = np.random.default_rng(7)
    words = make_words(VOCAB, rng)
    batch = _Batch(rows, steps, words, rng)
    out: dict[str, float] = {}
    note = ""
    try:
        from elmo_fast.train import LanguageModel, TrainConfig, Trainer
        have_trainer = True
        note = "fast/reference rows: elmo_fast.train.Trainer.step"
    except ImportError:
        have_trainer = False
        note = "fast/reference rows: local loop (elmo_fast.train absent)"
    runs: dict[str, Callable[[], None]] = {}
    for impl in impls:
        torch.manual_seed(0)
        if impl in ("fast", "reference", "bf16") and have_trainer:
            # fast row: backend chosen per op on CPU (the fast ops where they exist, e.g. the softmax stays
            # on the reference op); reference row: everything on the reference backend
            model = LanguageModel(preset(name), VOCAB, backend=None if impl in ("fast", "bf16") else impl)
            if impl != "reference" and model.bilm.backend_name(torch.device("cpu"), "bilstm") != "fast":
                raise RuntimeError("the fast backend is not the CPU default (is ELMO_FAST_BACKEND set?)")
            src = random_model(name, "fast" if impl == "bf16" else impl)
            model.bilm.load_state_dict(src.state_dict())
            with torch.no_grad():
                model.softmax_weight.normal_(0, 0.05)
                model.softmax_bias.zero_()
            trainer = Trainer(model, TrainConfig(batch_size=rows, unroll_steps=steps, n_negative_samples=NEGATIVES))
            data = _make_data_batch(batch)
            runs[impl] = (lambda tr, d: lambda: tr.step(d))(trainer, data)
            if impl == "bf16":  # forward, backward and optimizer step in the setting, as `train --precision bf16`
                runs[impl] = (lambda f: lambda: _in_bf16(f))(runs[impl])
        else:
            runs[impl] = _local_step(name, impl, batch, rows, steps)
    # warm up every implementation the same way (the first steps grow the heap and fault pages in; timing them
    # would measure the allocator), then interleave the timed steps so that a change of machine load hits
    # every implementation
    for step in runs.values():
        for _ in range(TRAIN_WARMUP):
            step()
    best = {impl: math.inf for impl in runs}
    for _ in range(reps):
        for impl, step in runs.items():
            t = time.perf_counter()
            step()
            best[impl] = min(best[impl], time.perf_counter() - t)
    out = {impl: rows * steps / best[impl] for impl in runs}
    return out, note


def _in_bf16(fn: Callable[[], object]) -> None:
    with numerics.use(precision="bf16"):
        fn()


def _local_step(name: str, impl: str, batch: _Batch, rows: int, steps: int) -> Callable[[], None]:
    """A training step without elmo_fast.train: biLM streams + sampled softmax + Adagrad (bilm-tf settings)."""
    ref = random_model(name, "reference" if impl == "baseline" else impl)
    P = ref.options.lstm.projection_dim
    weight = torch.nn.Parameter(torch.randn(VOCAB, P) * 0.05)
    bias = torch.nn.Parameter(torch.zeros(VOCAB))
    gen = torch.Generator().manual_seed(0)
    if impl == "baseline":
        model = BaselineElmo(ref).train()
        fw_chars = batch.token_chars[batch.fw_inputs]
        bw_chars = batch.token_chars[batch.bw_inputs]

        def hidden():
            return model.stream_outputs(fw_chars, bw_chars, dropout=0.1)
    else:
        model = ref.train()

        def hidden():
            emb = model.encode_tokens(batch.token_chars)
            fw, bw, _ = model.forward_streams(emb[batch.fw_inputs], emb[batch.bw_inputs], None, 0.1)
            return fw[-1], bw[-1]
    params = list(model.parameters()) + [weight, bias]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adagrad(params, lr=0.2, initial_accumulator_value=1.0)

    def step() -> None:
        fw, bw = hidden()
        loss = 0.5 * (_sampled_loss(torch.nn.functional.dropout(fw, 0.1).reshape(-1, P), batch.fw_targets.reshape(-1),
                                    weight, bias, gen)
                      + _sampled_loss(torch.nn.functional.dropout(bw, 0.1).reshape(-1, P),
                                      batch.bw_targets.reshape(-1), weight, bias, gen))
        opt.zero_grad(set_to_none=True)
        (loss * steps).backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
    return step


def bench_softmax(P: int, n: int, reps: int) -> dict[str, float]:
    """Tokens/s of the loss forward + backward on ``n`` hidden vectors: sampled (8192) vs full (100k)."""
    from elmo_fast.nn.softmax import full_softmax_loss
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, P, requires_grad=True)
    targets = torch.randint(0, VOCAB, (n,))
    weight = torch.nn.Parameter(torch.randn(VOCAB, P) * 0.05)
    bias = torch.nn.Parameter(torch.zeros(VOCAB))

    def sampled():
        _sampled_loss(hidden, targets, weight, bias, gen).backward()

    def full():
        full_softmax_loss(hidden, targets, weight, bias).mean().backward()
    return {"sampled": n / best_time(sampled, reps), "full": n / best_time(full, reps)}


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["small", "original"],
                        help="model presets to benchmark (default: small original)")
    parser.add_argument("--reps", type=int, default=3, help="timed runs per small-shape measurement (best kept)")
    parser.add_argument("--reps-original", type=int, default=3,
                        help="timed runs per original-shape inference measurement (best kept; the fast path takes "
                             "~2 s, the slow ones ~7 s; one run was not enough on a shared machine)")
    parser.add_argument("--train-reps-original", type=int, default=2,
                        help="timed steps per implementation for the original-shape training row (each 10-40 s)")
    parser.add_argument("--skip-training", action="store_true", help="only the inference and softmax rows")
    parser.add_argument("--skip-inference", action="store_true", help="only the training and softmax rows")
    parser.add_argument("--impls", nargs="+", default=["fast", "bf16", "reference", "baseline"],
                        choices=["fast", "bf16", "reference", "baseline"],
                        help="implementations to time (bf16: the fast path with precision='bf16')")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch intra-op threads for the whole run (default: torch's own, every core)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    parser.add_argument("--allocator", choices=["retain", "default"], default="retain",
                        help="retain: glibc keeps freed memory for reuse, as the elmo-fast commands run "
                             "(elmo_fast.runtime.retain_freed_memory; applies to every implementation in this "
                             "process); default: glibc's own settings (large blocks unmapped on free)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.allocator == "retain":
        from elmo_fast.runtime import retain_freed_memory
        logger.info("allocator: freed memory retained for reuse: %s", retain_freed_memory())
    torch.manual_seed(0)
    t_start = time.perf_counter()

    def slow_warmup(name: str) -> int:
        # reference/baseline on the original shapes: no warm-up run (each takes tens of seconds; they keep no
        # caches to warm), which keeps the whole table near 15 minutes on a 2-core machine
        return 0 if name == "original" else 1
    rate = matmul_rate()
    rate_start = rate
    logger.info("fp32 matmul rate: %.1f GFLOP/s (%d threads)", rate / 1e9, torch.get_num_threads())
    rows: list[tuple] = []  # (shape, setting, flops/token, {impl: tok/s})
    for name in args.shapes if not args.skip_inference else []:
        o = preset(name)
        reps = args.reps if name != "original" else args.reps_original
        for batch, n_batches in ((1, 12 if name != "original" else 4), (32, 2 if name != "original" else 1)):
            logger.info("inference %s batch %d ...", name, batch)
            res = bench_inference(name, batch, n_batches, reps, args.impls, slow_warmup=slow_warmup(name))
            rows.append((name, f"inference, batch {batch}", inference_flops(o), res))
            logger.info("  %s", {k: round(v, 1) for k, v in res.items()})
        logger.info("inference %s batch 32, length-grouped ...", name)
        res = bench_inference(name, 32, 4 if name != "original" else 2, reps,
                              [i for i in ("fast", "bf16") if i in args.impls], grouped=True)
        rows.append((name, "inference, batch 32, length-grouped (embedder)", inference_flops(o), res))
        logger.info("  %s", {k: round(v, 1) for k, v in res.items()})
    notes = []
    if not args.skip_training:
        for name in args.shapes:
            rows_, steps = (32, 20) if name != "original" else (128, 20)
            reps = args.reps if name != "original" else args.train_reps_original
            logger.info("training step %s %dx%d ...", name, rows_, steps)
            res, note = bench_training(name, rows_, steps, reps, args.impls)
            notes.append(note)
            rows.append((name, f"train step {rows_}x{steps}", train_flops(preset(name)), res))
            logger.info("  %s", {k: round(v, 1) for k, v in res.items()})
    softmax_rows = []
    for name in args.shapes:
        P = preset(name).lstm.projection_dim
        n = 32 * 20 if name != "original" else 128 * 20
        logger.info("softmax %s P=%d N=%d ...", name, P, n)
        softmax_rows.append((name, P, n, bench_softmax(P, n, args.reps)))
    # re-measure the matmul rate at the end; report the higher (the least disturbed)
    rate_end = matmul_rate()
    rate = max(rate_start, rate_end)
    elapsed = time.perf_counter() - t_start
    lines = [f"machine: {machine.describe()}; torch "
             f"{torch.__version__}, {torch.get_num_threads()} threads; fp32 matmul rate {rate / 1e9:.1f} GFLOP/s "
             f"(2048^3 torch.mm, best of 5, measured at start {rate_start / 1e9:.1f} and end {rate_end / 1e9:.1f}; "
             f"allocator: {args.allocator}; "
             f"the higher is used); load average at end {os.getloadavg()[0]:.2f}; total {elapsed / 60:.1f} min",
             "",
             "| shape | setting | fast tok/s | bf16 tok/s | reference tok/s | baseline tok/s | bf16 / fast "
             "| fast / baseline | bf16 / baseline | GFLOP/token | fast eff. | bf16 eff. | baseline eff. |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, setting, flops, res in rows:
        f, h, r, b = (res.get(k) for k in ("fast", "bf16", "reference", "baseline"))
        cell = lambda v: f"{v:.1f}" if v is not None else "-"  # noqa: E731
        ratio = lambda x, y: f"{x / y:.2f}x" if x and y else "-"  # noqa: E731
        eff = lambda v: f"{v * flops / rate:.2f}" if v else "-"  # noqa: E731
        lines.append(f"| {name} | {setting} | {cell(f)} | {cell(h)} | {cell(r)} | {cell(b)} | {ratio(h, f)} "
                     f"| {ratio(f, b)} | {ratio(h, b)} | {flops / 1e9:.3f} | {eff(f)} | {eff(h)} | {eff(b)} |")
    for name, P, n, res in softmax_rows:
        lines.append(f"| {name} | softmax loss fwd+bwd, {n} x P={P}, V=100k | sampled 8192: {res['sampled']:.0f} "
                     f"| - | full: {res['full']:.0f} | - | - | sampled/full {res['sampled'] / res['full']:.1f}x | - "
                     f"| - | - | - | - |")
    lines.append("")
    lines.append("GFLOP/token: nominal model work per token (char-CNN over all 50 char windows, highway, projection, "
                 "both LSTM stacks; training: both streams, sampled softmax, x3 for backward). Efficiency = tok/s x "
                 "GFLOP/token / matmul rate; the fast path skips part of the nominal char-CNN work (repeated tokens, "
                 "all-PAD windows), so its efficiency counts that saved work as done. bf16 efficiency is measured "
                 "against the same float32 matmul rate (it can exceed 1).")
    lines.extend(sorted(set(notes)))
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
