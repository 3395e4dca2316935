"""Three-pass TF32 (tf32x3), one-pass TF32 and IEEE float32 products vs the float64 reference, without a GPU.

    python benchmarks/tf32_emulation.py [--json out.json] [--skip-lstm]

The Triton kernels compute every product with ``tl.dot`` in one precision mode (kernels/common.py). This
script runs the pure-PyTorch reference model with every product replaced by its emulation in that mode
(:mod:`tools.emulation`: ``cvt.rna.tf32.f32`` big parts, float32 remainders read as the tensor
core reads them, three passes summed small-first) and measures:

1. **The shared fixtures** (``../shared/data/elmo-test-fixtures``, the protocol of
   tests/test_reference_fixtures.py: 10 batches of 3 sentences, carried LSTM states): per mode, the max
   |top layer - TensorFlow| (the project's parity criterion: < 1e-5) and the max |any layer - float64
   reference| over every token.
2. **One biLSTM layer, forward and backward** at the kernel tests' shapes (tests/test_kernels_lstm.py: B 5, T 7,
   P 19, C 23, clip 3, awkward lengths) and at a second one (B 6, T 9, P 32, C 48; wider or longer recurrences
   with the tests' random weights are chaotic: float32 itself is then off by O(1) and the ratio means nothing):
   per output/gradient ``|mode - ref64| / |ieee - ref64|``, the ratio the kernel suite bounds by 4 (outputs) and 12
   (gradients).

What the emulation cannot show: the tensor core's accumulation inside one MMA (not IEEE round-to-nearest)
and the kernels' summation order. Modes with ``read=rna``/``exact`` are the same products with the small
parts rounded or kept whole instead of truncated, to show how much the hardware's reading matters.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))  # tools/ (the emulation) is a folder of the checkout, not installed

from elmo_fast import BiLM, batch_to_ids  # noqa: E402
from tools.emulation import emulated_products  # noqa: E402
from elmo_fast.nn.bilm import remove_sentence_boundaries  # noqa: E402

log = logging.getLogger("tf32_emulation")

#: (label, product mode, how a pass reads an unconverted operand); None = plain float32 / float64 code
VARIANTS = [("ieee", "ieee", "trunc"), ("tf32x3", "tf32x3", "trunc"), ("tf32x3 (small parts rna)", "tf32x3", "rna"),
            ("tf32x3 (small parts exact)", "tf32x3", "exact"), ("tf32", "tf32", "trunc"), ("tf32 (rna)", "tf32", "rna")]
CASES = [("allennlp", "sentences.json"), ("bilm-tf", "lm_embeddings_sentences.json")]
PARITY = 1e-5


def _fixture_runs(root: Path, name: str, sentence_file: str) -> tuple[list, list[list[np.ndarray]]]:
    from test_reference_fixtures import load_case
    d, sentences, expected = load_case(root, name, sentence_file)
    batches = [[sentences[k][i].split() for k in range(3)] for i in range(10)]
    want = [[np.concatenate([expected[k][str(i)][0], expected[k][str(i)][1]], axis=-1) for k in range(3)]
            for i in range(10)]
    return (d, batches), want


def _embed_all(d: Path, batches: list, dtype: torch.dtype, ctx: Callable[[], Any]) -> list[list[np.ndarray]]:
    """Per batch, per sentence: the (3, n, 2P) layers without BOS/EOS (carried states across batches)."""
    model = BiLM.from_files(d / "options.json", d / "lm_weights.hdf5", backend="reference").to(dtype)
    out = []
    with torch.no_grad(), ctx():
        for batch in batches:
            res = model(batch_to_ids(batch))
            layers = [remove_sentence_boundaries(a, res["mask"])[0] for a in res["activations"]]
            out.append([np.stack([lay[j, :len(s)].double().numpy() for lay in layers]) for j, s in enumerate(batch)])
    return out


def fixtures(root: Path) -> list[dict[str, Any]]:
    rows = []
    for name, sentence_file in CASES:
        (d, batches), want = _fixture_runs(root, name, sentence_file)
        ref64 = _embed_all(d, batches, torch.float64, lambda: _Null())
        for label, mode, read in VARIANTS:
            modes: list[emulated_products] = []

            def ctx(mode=mode, read=read):
                m = emulated_products(mode, read)
                modes.append(m)
                return m
            t0 = time.perf_counter()
            got = _embed_all(d, batches, torch.float32, ctx)
            tf_err = max(float(np.abs(g[2] - w).max()) for gb, wb in zip(got, want) for g, w in zip(gb, wb))
            ref_err = max(float(np.abs(g - r).max()) for gb, rb in zip(got, ref64) for g, r in zip(gb, rb))
            counts = modes[0].counts if modes else {}
            rows.append(dict(fixture=name, mode=label, max_top_vs_tf=tf_err, max_vs_ref64=ref_err,
                             parity=tf_err < PARITY, products=sum(counts.values()),
                             seconds=time.perf_counter() - t0))
            log.info("%s %s: top vs TF %.3g, vs ref64 %.3g", name, label, tf_err, ref_err)
        # the float64 reference itself against TensorFlow (how far TF's own float32 numbers are)
        rows.append(dict(fixture=name, mode="float64 reference", max_top_vs_tf=max(
            float(np.abs(g[2] - w).max()) for gb, wb in zip(ref64, want) for g, w in zip(gb, wb)), max_vs_ref64=0.0,
            parity=None, products=0, seconds=0.0))
    return rows


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _lstm_case(B: int, T: int, P: int, C: int, lengths: list[int], seed: int, w_scale: float = 0.6
               ) -> list[dict[str, Any]]:
    from test_kernels_lstm import NAMES, make, run
    tensors, lens = make(B, T, P, C, lengths, shared=False, seed=seed, w_scale=w_scale)
    args = (tensors, lens, False, 3.0, True, True)
    r64 = run(*args, torch.float64, False)
    ieee = run(*args, torch.float32, False)
    rows = []
    for label, mode, read in VARIANTS[1:]:
        with emulated_products(mode, read) as m:
            got = run(*args, torch.float32, False)
        assert m.counts.get("linear", 0) > 0 and "backward_not_emulated" not in m.counts, m.counts
        for i, (name, a, b, c) in enumerate(zip(NAMES, got, ieee, r64)):
            err = float((a.double() - c).abs().max())
            ref = float((b.double() - c).abs().max())
            rows.append(dict(shape=f"B{B} T{T} P{P} C{C}", mode=label, tensor=name, err=err, ieee_err=ref,
                             ratio=err / ref if ref > 0 else float("inf"), bound=4.0 if i < 3 else 12.0))
    return rows


def lstm() -> list[dict[str, Any]]:
    return (_lstm_case(5, 7, 19, 23, [7, 1, 4, 0, 6], seed=0)
            + _lstm_case(6, 9, 32, 48, [9, 2, 8, 1, 0, 5], seed=4))


def markdown(fix: list[dict[str, Any]], lst: list[dict[str, Any]]) -> str:
    out = ["| fixture | products | max \\|top - TF\\| | parity (< 1e-5) | max \\|all layers - float64 ref\\| |",
           "|---|---|---|---|---|"]
    for r in fix:
        par = "-" if r["parity"] is None else ("yes" if r["parity"] else "**no**")
        out.append(f"| {r['fixture']} | {r['mode']} | {r['max_top_vs_tf']:.3g} | {par} | {r['max_vs_ref64']:.3g} |")
    if lst:
        out += ["", "| LSTM layer | products | worst output ratio (bound 4) | worst gradient ratio (bound 12) | "
                "worst tensor |", "|---|---|---|---|---|"]
        modes = [v[0] for v in VARIANTS]
        keys = sorted({(r["shape"], r["mode"]) for r in lst}, key=lambda k: (k[0], modes.index(k[1])))
        for shape, mode in keys:
            rs = [r for r in lst if r["shape"] == shape and r["mode"] == mode]
            outs = max(r["ratio"] for r in rs if r["bound"] == 4.0)
            grads = max(r["ratio"] for r in rs if r["bound"] == 12.0)
            worst = max(rs, key=lambda r: r["ratio"] / r["bound"])
            out.append(f"| {shape} | {mode} | {outs:.2f} | {grads:.2f} | {worst['tensor']} "
                       f"({worst['err']:.2g} vs ieee {worst['ieee_err']:.2g}) |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    from helpers import FIXTURES
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write every measurement to this file")
    p.add_argument("--skip-lstm", action="store_true", help="only the fixtures")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    if not FIXTURES.is_dir():
        log.error("fixtures not found: %s (set ELMO_FAST_SHARED)", FIXTURES)
        return 2
    fix = fixtures(FIXTURES)
    lst = [] if args.skip_lstm else lstm()
    print(markdown(fix, lst))
    if args.json:
        Path(args.json).write_text(json.dumps({"fixtures": fix, "lstm": lst}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
