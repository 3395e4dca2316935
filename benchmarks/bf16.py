"""How much bf16 products change what users get: fp32 vs bf16 on the same model and the same sentences.

Part 1, per layer (``--models``): the fast path in float32 and with ``precision="bf16"`` (bfloat16 product inputs,
float32 accumulation, float32 weights/state/outputs) on the same model, stateless, on real sentences (WikiText-2
test lines split at sentence ends; ``--sentences``); for each of the three ELMo layers: max and mean |diff| over
all values of the valid tokens, mean |value| (for scale), and the cosine similarity of each token's vector
(min / mean). The float32 fast path against the float32 reference is printed for the same data as the
float32 noise floor (``--reference``; slow on the original shape, so off there unless asked). Models:

* ``original``: the original ELMo shape (4096/512, 2 highways, 2048 filters) with random weights scaled so the
  clips are active (:func:`benchmarks.run.random_model`);
* ``allennlp``, ``bilm-tf``: the tiny trained fixture models in ``shared/data/elmo-test-fixtures``;
* any model folder (options.json + weights.hdf5) given as a path, e.g. the model ``elmo-fast demo`` trained.

Part 2, downstream (``--downstream MODEL_DIR``, a trained model, e.g. ``runs/demo/model``): the same model
embedded in fp32 and in bf16: the demo's nearest-neighbour sense accuracy (``--demo-seed`` must be the demo's
``--seed``) and the POS probe (UD EWT, ``--pos-train`` sentences, ``--pos-epochs``; the probe's own training is
float32 and seeded, so only the embeddings differ).

Part 3, int8 exploration (not shipped): ``--products`` times single products of the original model's shapes
(fp32 oneDNN-packed, bf16 oneDNN-packed, int8 dynamic quantization ``quantized::linear_dynamic`` with per-channel
int8 weights and per-tensor dynamic uint8 activations, int8 weight-only ``torch._weight_int8pack_mm``) with their
relative error against the exact float64 product; ``--int8`` adds per-layer rows (and one-pass timings) for the
whole model with every :class:`~elmo_fast.fast.packing.PackedLinear` product replaced by int8 dynamic
quantization (inference only; installed for the run by :func:`int8_products`).

Run: ``python benchmarks/bf16.py --threads 1 --downstream runs/demo/model``
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elmo_fast import ElmoEmbedder, numerics  # noqa: E402
from elmo_fast.fast import packing  # noqa: E402

logger = logging.getLogger("bf16")

SHARED = Path(os.environ.get("ELMO_FAST_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FIXTURES = SHARED / "data" / "elmo-test-fixtures"
WIKITEXT = SHARED / "data" / "wikitext-2" / "test.txt"


def wikitext_sentences(n: int, max_len: int = 60, path: Path = WIKITEXT) -> list[list[str]]:
    """The first ``n`` sentences of WikiText-2 (lines split after ``.``/``?``/``!`` tokens; headings and blank
    lines skipped; sentences longer than ``max_len`` tokens cut)."""
    out: list[list[str]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            tokens = line.split()
            if not tokens or tokens[0] == "=":
                continue
            sentence: list[str] = []
            for tok in tokens:
                sentence.append(tok)
                if tok in (".", "?", "!"):
                    out.append(sentence[:max_len])
                    sentence = []
            if sentence:
                out.append(sentence[:max_len])
            if len(out) >= n:
                return out[:n]
    return out


def load_model(name: str) -> tuple[str, Any]:
    """``name`` -> (label, a stateless biLM on the fast backend with precision None)."""
    from elmo_fast.nn.bilm import BiLM
    if name == "original":
        from benchmarks.run import random_model
        return "original (random weights)", random_model("original", "fast")
    folder = FIXTURES / name if name in ("allennlp", "bilm-tf") else Path(name)
    weights = folder / ("lm_weights.hdf5" if name in ("allennlp", "bilm-tf") else "weights.hdf5")
    model = BiLM.from_files(folder / "options.json", weights, stateful=False, backend="fast")
    label = f"{name} fixture (trained, tiny)" if name in ("allennlp", "bilm-tf") else str(name)
    return label, model.eval()


def embed(model: Any, sentences: Sequence[Sequence[str]], precision: str | None, backend: str | None = None,
          batch_size: int = 32) -> list[np.ndarray]:
    """One ``(3, n_i, 2P)`` array per sentence: the model in ``precision`` (None: float32) on ``backend``."""
    saved = (model.precision, model.backend)
    model.precision, model.backend = precision, backend or saved[1]
    try:
        embedder = ElmoEmbedder.from_bilm(model, batch_size=batch_size)
        return list(embedder.embed_sentences(sentences))
    finally:
        model.precision, model.backend = saved


def layer_errors(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> list[dict[str, float]]:
    """Per layer: max / mean |a - b| over all values, mean |b|, cosine(a_t, b_t) min / mean over tokens."""
    out = []
    for layer in range(a[0].shape[0]):
        x = np.concatenate([e[layer] for e in a]).astype(np.float64)   # (tokens, 2P)
        y = np.concatenate([e[layer] for e in b]).astype(np.float64)
        diff = np.abs(x - y)
        cos = (x * y).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-30)
        out.append({"max": float(diff.max()), "mean": float(diff.mean()), "scale": float(np.abs(y).mean()),
                    "cos_min": float(cos.min()), "cos_mean": float(cos.mean())})
    return out


class int8_products:
    """Context: every ``PackedLinear`` product that precision ``"bf16"`` routes through ``PackedLinear.bf16`` is
    an int8 dynamic-quantized product instead (weights per output channel, symmetric; activations per tensor,
    quantized at each call; float32 output). Exploration only."""

    def __enter__(self) -> "int8_products":
        self.saved = packing.PackedLinear.bf16
        self.prepared: dict[int, tuple[Any, Any]] = {}
        prepared = self.prepared

        def int8(lin: Any, x: torch.Tensor) -> torch.Tensor:
            hit = prepared.get(id(lin))
            if hit is None or hit[0] is not lin:
                W = lin.weight.t().contiguous()                                    # (out, in)
                scales = (W.abs().amax(1) / 127.0).clamp_min(1e-12).double()
                wq = torch.quantize_per_channel(W, scales, torch.zeros(W.shape[0], dtype=torch.long), 0, torch.qint8)
                bias = lin.bias if lin.bias is not None else torch.zeros(W.shape[0])
                hit = (lin, torch.ops.quantized.linear_prepack(wq, bias))
                prepared[id(lin)] = hit
            if x.shape[0] == 0:
                return x.new_zeros(0, lin.out_features)
            return torch.ops.quantized.linear_dynamic(x.float().contiguous(), hit[1], False)
        packing.PackedLinear.bf16 = int8  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        packing.PackedLinear.bf16 = self.saved  # type: ignore[assignment]


def product_rows(reps: int = 7) -> list[str]:
    """Single products at the original model's shapes: time (best of ``reps``, variants alternated) and error."""
    L = torch.ops.mkldnn._linear_pointwise
    shapes = [("recurrent h W_h, per step and direction", 32, 512, 16384),
              ("projection hc W_P, per step and direction", 32, 4096, 512),
              ("input projection x W_x, all steps (batch 32)", 800, 512, 16384),
              ("highway, distinct tokens (batch 32)", 400, 2048, 4096),
              ("recurrent at batch 1", 1, 512, 16384)]
    rows = ["| product | n x k x m | fp32 packed ms | bf16 packed ms | int8 dynamic ms | int8 weight-only ms "
            "| bf16 rel. err (mean / max) | int8 dyn. rel. err | int8 w-only rel. err |",
            "|---|---|---|---|---|---|---|---|---|"]
    gen = torch.Generator().manual_seed(0)
    for what, n, k, m in shapes:
        x = torch.randn(n, k, generator=gen)
        W = torch.randn(k, m, generator=gen) / k ** 0.5
        b = torch.randn(m, generator=gen) * 0.1
        exact = x.double() @ W.double() + b.double()
        p32 = torch.ops.mkldnn._reorder_linear_weight(W.t().contiguous(), n)
        p16 = torch.ops.mkldnn._reorder_linear_weight(W.bfloat16().t().contiguous(), n) if packing.BF16_NATIVE else None
        Wt = W.t().contiguous()
        scales = (Wt.abs().amax(1) / 127.0).clamp_min(1e-12)
        wq = torch.quantize_per_channel(Wt, scales.double(), torch.zeros(m, dtype=torch.long), 0, torch.qint8)
        pq = torch.ops.quantized.linear_prepack(wq, b)
        wi8 = torch.round(Wt / scales[:, None]).clamp(-127, 127).to(torch.int8)
        variants = {
            "fp32": lambda: L(x, p32, b, "none", [], ""),
            "bf16": (lambda: L(x.bfloat16(), p16, b, "none", [], "").float()) if p16 is not None
            else (lambda: torch.add(b, x.bfloat16() @ W.bfloat16())),
            "int8": lambda: torch.ops.quantized.linear_dynamic(x, pq, False),
            "woq": lambda: torch._weight_int8pack_mm(x, wi8, scales) + b,
        }
        best = dict.fromkeys(variants, float("inf"))
        for fn in variants.values():
            fn()
        for _ in range(reps):
            for key, fn in variants.items():
                t = time.perf_counter()
                fn()
                best[key] = min(best[key], time.perf_counter() - t)
        err = {}
        for key, fn in variants.items():
            d = (fn().double() - exact).abs()
            err[key] = f"{float(d.mean() / exact.abs().mean()):.1e} / {float(d.max() / exact.abs().max()):.1e}"
        rows.append(f"| {what} | {n} x {k} x {m} | {best['fp32'] * 1e3:.2f} | {best['bf16'] * 1e3:.2f} "
                    f"| {best['int8'] * 1e3:.2f} | {best['woq'] * 1e3:.2f} | {err['bf16']} | {err['int8']} "
                    f"| {err['woq']} |")
    return rows


def error_rows(names: Sequence[str], n_sentences: int, reference: str, int8: bool = False) -> list[str]:
    rows = ["| model | comparison | layer | max abs diff | mean abs diff | mean abs value | cosine min | "
            "cosine mean |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        label, model = load_model(name)
        n = n_sentences if name != "original" else max(1, n_sentences // 4)
        sentences = wikitext_sentences(n)
        tokens = sum(len(s) for s in sentences)
        logger.info("%s: %d sentences, %d tokens", label, len(sentences), tokens)
        t = time.perf_counter()
        fp32 = embed(model, sentences, None)
        t32 = time.perf_counter() - t
        t = time.perf_counter()
        bf16 = embed(model, sentences, "bf16")
        t16 = time.perf_counter() - t
        logger.info("  embedded: fp32 %.1f s, bf16 %.1f s (one pass each; timing only indicative)", t32, t16)
        comparisons = [(f"bf16 vs fp32 (fast; one pass {t16:.1f} s vs {t32:.1f} s)", layer_errors(bf16, fp32))]
        if int8:
            with int8_products():
                t = time.perf_counter()
                q8 = embed(model, sentences, "bf16")
                t8 = time.perf_counter() - t
            comparisons.append((f"int8 dynamic vs fp32 (fast; one pass {t8:.1f} s)", layer_errors(q8, fp32)))
        if reference == "all" or (reference == "tiny" and name != "original"):
            ref = embed(model, sentences, None, backend="reference")
            comparisons.append(("fp32 fast vs fp32 reference (noise floor)", layer_errors(fp32, ref)))
        for what, errs in comparisons:
            for layer, e in enumerate(errs):
                rows.append(f"| {label}, {len(sentences)} sent. / {tokens} tok. | {what} | {layer} | {e['max']:.2e} "
                            f"| {e['mean']:.2e} | {e['scale']:.3f} | {e['cos_min']:.6f} | {e['cos_mean']:.6f} |")
    return rows


def downstream_rows(model_dir: str, demo_seed: int, pos_train: int, pos_epochs: int) -> list[str]:
    from elmo_fast.demo_corpus import generate
    from elmo_fast.probe import (embed_tokens, find_shared_data, load_embedder, nearest_neighbour_senses,
                                 pos_probe, read_conllu, sense_vectors)
    rows = ["| task (same model, embedded in fp32 / bf16) | representation | fp32 | bf16 | bf16 - fp32 |",
            "|---|---|---|---|---|"]
    corpus = generate(demo_seed)
    heldout = corpus.heldout
    words, senses = [s.word for s in heldout], [s.sense for s in heldout]
    exclude = [[f"{s.label}/{s.prefix}" for s in heldout], [f"{s.label}/{s.suffix}" for s in heldout]]
    acc: dict[str, Any] = {}
    for precision in ("fp32", "bf16"):
        with numerics.use(precision=precision):
            embedder = load_embedder(model_dir)
            vecs = sense_vectors(embed_tokens(embedder, [s.tokens for s in heldout]), [s.index for s in heldout])
        acc[precision] = (nearest_neighbour_senses(vecs, words, senses),
                          nearest_neighbour_senses(vecs, words, senses, exclude=exclude))
    for k, what in ((0, "demo sense accuracy (any neighbour)"), (1, "demo sense accuracy (no shared prefix/suffix)")):
        for key in ("1", "2", "average"):
            a, b = acc["fp32"][k].accuracy[key], acc["bf16"][k].accuracy[key]
            rows.append(f"| {what}, {len(heldout)} sentences | layer {key} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    if pos_train > 0:
        data = find_shared_data("ud-english-ewt", None)
        train = read_conllu(str(data / "en_ewt-ud-train.conllu"))[:pos_train]
        dev = read_conllu(str(data / "en_ewt-ud-dev.conllu"))
        test = read_conllu(str(data / "en_ewt-ud-test.conllu"))
        pos = {}
        for precision in ("fp32", "bf16"):
            with numerics.use(precision=precision):
                pos[precision] = pos_probe(load_embedder(model_dir), train, dev, test, epochs=pos_epochs, seed=0)
        n_test = pos["fp32"].n_tokens["test"]
        for key in ("0", "1", "2", "mix"):
            a, b = pos["fp32"].test_accuracy[key], pos["bf16"].test_accuracy[key]
            rows.append(f"| POS probe test accuracy (EWT, {pos_train} train sent., {pos_epochs} epochs, {n_test} "
                        f"test tokens) | {key} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["original", "allennlp", "bilm-tf"],
                        help="original | allennlp | bilm-tf | a model folder (default: the first three)")
    parser.add_argument("--sentences", type=int, default=400,
                        help="WikiText-2 sentences per tiny model (a quarter of them for the original shape)")
    parser.add_argument("--reference", choices=["none", "tiny", "all"], default="tiny",
                        help="also compare fp32 fast with the fp32 reference (noise floor); default: tiny models")
    parser.add_argument("--downstream", metavar="MODEL_DIR", default=None,
                        help="a trained model folder: demo sense accuracy and POS probe in fp32 vs bf16")
    parser.add_argument("--demo-seed", type=int, default=0, help="the demo's --seed (its held-out sentences)")
    parser.add_argument("--pos-train", type=int, default=2000, help="POS probe training sentences (0: skip)")
    parser.add_argument("--pos-epochs", type=int, default=5, help="POS probe epochs")
    parser.add_argument("--int8", action="store_true", help="also the whole model with int8 dynamic products")
    parser.add_argument("--products", action="store_true", help="single-product speed/error table (fp32, bf16, "
                        "int8 dynamic, int8 weight-only) at the original shapes")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    head = (f"torch {torch.__version__}, {torch.get_num_threads()} threads; oneDNN bf16 products native: "
            f"{packing.BF16_NATIVE}")
    lines = [head, ""]
    if args.models:
        lines += error_rows(args.models, args.sentences, args.reference, args.int8)
    if args.products:
        lines += [""] + product_rows()
    if args.downstream:
        lines += [""] + downstream_rows(args.downstream, args.demo_seed, args.pos_train, args.pos_epochs)
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
