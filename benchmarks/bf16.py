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


def error_rows(names: Sequence[str], n_sentences: int, reference: str) -> list[str]:
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
        comparisons = [("bf16 vs fp32 (fast)", layer_errors(bf16, fp32))]
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
        lines += error_rows(args.models, args.sentences, args.reference)
    if args.downstream:
        lines += [""] + downstream_rows(args.downstream, args.demo_seed, args.pos_train, args.pos_epochs)
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
