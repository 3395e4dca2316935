"""``elmo-fast demo``: train a tiny biLM on the embedded corpus and show what its layers know about word senses.

Steps: generate the seeded demo corpus (:mod:`elmo_fast.demo_corpus`), train the ``tiny`` preset for ``--steps`` (or
``--minutes``) with the project's training loop (:func:`elmo_fast.train.run_training`), export the ELMo files, embed
the labelled held-out sentences and report, for the token layer, layer 1, layer 2 and their average, the
leave-one-out nearest-neighbour sense accuracy of the ambiguous words. The same numbers for the *untrained* model
(the initial weights of the same run) are printed next to them, so that what comes from the architecture (any LSTM
mixes in the context) and what comes from training can be told apart; and a harder variant where the neighbour must
share neither the beginning nor the end of the sentence with the query (matching the words around the ambiguous word
is then no help: only a representation of the sense is).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from typing import Any, Sequence

import numpy as np

from ..atomic import atomic_path, write_json, write_lines
from . import add_precision_arg, add_threads_arg, apply_threads, precision_context

logger = logging.getLogger(__name__)

#: the file that marks a folder as the demo's own (``--out`` may then be reused)
DEMO_MARKER = ".elmo-fast-demo"

#: training steps of the default demo (a fixed count, so the numbers do not depend on the machine or its load)
DEFAULT_STEPS = 600

LAYER_KEYS = ("0", "1", "2", "average")
LAYER_NAMES = {"0": "layer 0 (token)", "1": "layer 1", "2": "layer 2", "average": "average of 0-2"}
#: words whose senses the printed nearest-neighbour examples show (the PNG draws every ambiguous word)
EXAMPLE_WORDS = ("bank", "play", "bat", "spring", "match", "light")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo", help="train a tiny biLM on the embedded corpus and show that its layers separate word senses",
        description="Generate the embedded English-like demo corpus (ambiguous words such as bank, play, bat, "
                    "spring, match, light in different senses), train the tiny biLM on it (--steps or --minutes), "
                    "export it, embed held-out sentences whose senses are labelled, and print the "
                    "nearest-neighbour sense accuracy of the token layer, layer 1, layer 2 and their average "
                    "(with the untrained model's numbers beside them), a few nearest-neighbour examples, and a "
                    "PNG of the ambiguous words' vectors (2-D PCA, coloured by sense). No downloads.")
    p.add_argument("--minutes", type=float, default=None,
                   help="train for this many minutes instead of a fixed number of steps (the result then "
                        "depends on the machine's speed and load)")
    p.add_argument("--steps", type=int, default=None,
                   help="train exactly this many steps (default 600 when --minutes is not given: the same "
                        "result on any machine and at any thread count)")
    p.add_argument("--out", default=os.path.join("runs", "demo"),
                   help="output folder (default runs/demo): corpus/ (train.txt, heldout.tsv), model/ (ELMo files) "
                        "and model-run/ (checkpoint) of the trained model, untrained/ and untrained-run/ of the "
                        "initial weights, senses.png; the model and run folders are replaced on every call")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    p.add_argument("--seed", type=int, default=0, help="seed of the corpus, the initialisation and the "
                   "training order (default 0)")
    p.add_argument("--n-train", type=int, default=8000, help="training sentences to generate (default 8000, "
                   "about 83k tokens)")
    p.add_argument("--heldout-per-sense", type=int, default=20, help="labelled held-out sentences per sense "
                   "(default 20)")
    p.add_argument("--batch-size", type=int, default=32, help="training rows per batch (default 32; unroll 20)")
    add_threads_arg(p)
    add_precision_arg(p, help="arithmetic of the fast CPU path's products for training and embedding: fp32 "
                      "(default) or bf16 (bfloat16 inputs, float32 accumulation, float32 weights and state); the "
                      "tiny demo model's products are too small to gain speed from bf16: this shows its effect on "
                      "the sense accuracy")
    p.add_argument("--examples", type=int, default=4, help="nearest-neighbour examples to print (default 4)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


# ---------------------------------------------------------------------------------------------- pieces
def _train(corpus_paths: dict[str, str], heldout_text: str, out: str, args: argparse.Namespace,
           max_steps: int | None, minutes: float | None, progress: bool) -> dict[str, Any]:
    """Train (or, with ``max_steps=0``, only initialise) the tiny preset; export to ``out/model``-style dirs."""
    from ..options import preset
    from ..train import TrainConfig, export_run, run_training

    run_dir, model_dir = out + "-run", out
    for d in (run_dir, model_dir):
        if os.path.isdir(d):
            shutil.rmtree(d)
    config = TrainConfig(batch_size=args.batch_size, unroll_steps=20, sample_softmax=False, seed=args.seed,
                         max_steps=max_steps, max_minutes=minutes, checkpoint_every=10 ** 9,
                         eval_batch_size=64)
    summary = run_training(corpus_paths["train"], run_dir, preset("tiny"), config, heldout=heldout_text,
                           progress=progress)
    export_run(run_dir, model_dir)
    return summary


def _embed(model_dir: str, sentences: Sequence[Any]) -> dict[str, np.ndarray]:
    from ..probe import embed_tokens, load_embedder, sense_vectors

    embedder = load_embedder(model_dir)
    embeddings = embed_tokens(embedder, [s.tokens for s in sentences], desc="embedding held-out")
    return sense_vectors(embeddings, [s.index for s in sentences])


def _pca2(x: np.ndarray) -> np.ndarray:
    """``(N, D)`` -> ``(N, 2)`` projection on the two leading principal components (zeros if degenerate)."""
    centred = x - x.mean(0, keepdims=True)
    if len(x) < 2 or not np.any(np.abs(centred) > 1e-7):
        return np.zeros((len(x), 2))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    proj = centred @ vt[:2].T
    return np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))


def _plot(path: str, vectors: dict[str, np.ndarray], sentences: Sequence[Any], accuracy: dict[str, dict[str, float]],
          minutes: float, steps: int) -> list[str] | None:
    """One row per ambiguous word of the held-out sentences (in the corpus's order), one column per
    representation. Returns the words drawn, or None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'elmo-fast[demo]'): no PNG written")
        return None
    from ..demo_corpus import AMBIGUOUS_WORDS
    words = np.array([s.word for s in sentences])
    senses = np.array([s.sense for s in sentences])
    plot_words = [w for w in AMBIGUOUS_WORDS if (words == w).any()]
    fig, axes = plt.subplots(len(plot_words), len(LAYER_KEYS), figsize=(3.2 * len(LAYER_KEYS), 2.3 * len(plot_words)),
                             squeeze=False)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for r, word in enumerate(plot_words):
        idx = np.flatnonzero(words == word)
        names = list(dict.fromkeys(senses[idx]))
        for c, key in enumerate(LAYER_KEYS):
            ax = axes[r, c]
            xy = _pca2(vectors[key][idx].astype(np.float64))
            for k, name in enumerate(names):
                sel = senses[idx] == name
                ax.scatter(xy[sel, 0], xy[sel, 1], s=14, alpha=0.75, color=colours[k % len(colours)],
                           label=name)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{LAYER_NAMES[key]}\nNN sense acc {accuracy[key]['all']:.2f}", fontsize=9)
            if c == 0:
                ax.set_ylabel(word, fontsize=11)
                ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"Ambiguous words in held-out sentences, 2-D PCA per layer (tiny biLM, {steps} steps = "
                 f"{minutes * 60:.0f} s of training)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))  # keep the title above the column titles
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return plot_words


def _examples(sentences: Sequence[Any], result: Any, n: int, seed: int) -> list[dict[str, Any]]:
    """Up to ``n`` queries (one per sense of the first words of :data:`EXAMPLE_WORDS`) and their neighbours."""
    out: list[dict[str, Any]] = []
    rng = np.random.default_rng(seed)
    for word in EXAMPLE_WORDS:
        idx = [i for i, s in enumerate(sentences) if s.word == word]
        for sense in dict.fromkeys(sentences[i].sense for i in idx):
            if len(out) >= n:
                return out
            candidates = [i for i in idx if sentences[i].sense == sense]
            q = int(rng.choice(candidates))
            entry = {"word": word, "sense": sense, "query": sentences[q].text, "neighbours": {}}
            for key in ("0", "2"):
                j = result.neighbour[key][q]
                entry["neighbours"][key] = {"sense": sentences[j].sense, "text": sentences[j].text}
            out.append(entry)
    return out


# ---------------------------------------------------------------------------------------------- command
def _check_out(out: str) -> None:
    """``--out`` must be new, empty or an earlier demo's folder: the demo replaces folders inside it."""
    from ..errors import UserError
    if os.path.lexists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out}: exists and is not a directory; expected a new or empty folder (or an earlier "
                        f"demo's)")
    if os.path.isdir(out) and os.listdir(out):
        if not (os.path.exists(os.path.join(out, DEMO_MARKER))
                or os.path.isfile(os.path.join(out, "corpus", "train.txt"))):
            raise UserError(f"--out {out}: holds files the demo did not write, and the demo replaces the folders "
                            f"model/, model-run/, untrained/, untrained-run/ and corpus/ in it; choose a new or empty "
                            f"folder")
        if not os.access(out, os.W_OK | os.X_OK):
            raise UserError(f"--out {out}: directory is not writable")


def run(args: argparse.Namespace) -> int:
    with precision_context(args):  # training and embedding run with --precision (fp32 unless given)
        return _run(args)


def _run(args: argparse.Namespace) -> int:

    from ..demo_corpus import AMBIGUOUS_WORDS, SENSES, generate, write_corpus
    from ..errors import UserError
    from ..probe import nearest_neighbour_senses

    if args.minutes is not None and args.minutes <= 0:
        raise UserError(f"--minutes: expected a positive number, found {args.minutes}")
    if args.minutes is None and args.steps is None:
        args.steps = DEFAULT_STEPS
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps: expected a positive integer, found {args.steps}")
    apply_threads(args)
    start = time.perf_counter()
    out = args.out
    _check_out(out)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, DEMO_MARKER), "w", encoding="utf-8") as f:
        f.write("written by `elmo-fast demo`: its model, run and corpus folders are replaced on every call\n")

    corpus = generate(args.seed, n_train=args.n_train, heldout_per_sense=args.heldout_per_sense)
    paths = write_corpus(corpus, os.path.join(out, "corpus"))
    heldout_text = os.path.join(out, "corpus", "heldout.txt")
    write_lines(heldout_text, (s.text for s in corpus.heldout))
    logger.info("demo corpus: %d training sentences (%d tokens), %d labelled held-out sentences, %d senses of %d "
                "words -> %s", len(corpus.train), corpus.n_train_tokens, len(corpus.heldout), len(SENSES),
                len(AMBIGUOUS_WORDS), paths["train"])

    untrained = _train(paths, heldout_text, os.path.join(out, "untrained"), args, max_steps=0, minutes=None,
                       progress=False)
    if args.steps is not None:
        logger.info("training the tiny biLM for %d steps", args.steps)
    else:
        logger.info("training the tiny biLM for %.1f minute(s)", args.minutes)
    trained = _train(paths, heldout_text, os.path.join(out, "model"), args, max_steps=args.steps,
                     minutes=args.minutes, progress=not args.quiet)

    heldout = corpus.heldout
    words = [s.word for s in heldout]
    senses = [s.sense for s in heldout]
    vectors = _embed(os.path.join(out, "model"), heldout)
    vectors_untrained = _embed(os.path.join(out, "untrained"), heldout)
    result = nearest_neighbour_senses(vectors, words, senses)
    result_untrained = nearest_neighbour_senses(vectors_untrained, words, senses)
    # harder: the neighbour must share neither the beginning nor the ending of the sentence (only the sense),
    # so matching the words around the ambiguous word is no help
    exclude = [[f"{s.label}/{s.prefix}" for s in heldout], [f"{s.label}/{s.suffix}" for s in heldout]]
    cross = nearest_neighbour_senses(vectors, words, senses, exclude=exclude)
    cross_untrained = nearest_neighbour_senses(vectors_untrained, words, senses, exclude=exclude)
    accuracy = {k: {"all": result.accuracy[k], **result.per_word[k]} for k in LAYER_KEYS}

    n_senses = {w: sum(1 for s in SENSES if s.word == w) for w in AMBIGUOUS_WORDS}
    chance = float(np.mean([1.0 / n_senses[w] for w in words]))

    # ---- report
    ppl = trained["heldout"]["perplexity"] if trained.get("heldout") else float("nan")
    ppl0 = untrained["heldout"]["perplexity"] if untrained.get("heldout") else float("nan")
    print(f"\nTrained the tiny biLM for {trained['seconds'] / 60:.1f} min: {trained['step']} steps, "
          f"{trained['run_tokens']} tokens ({trained['tokens_per_second']:.0f} tokens/s); held-out perplexity "
          f"{ppl:.1f} (untrained: {ppl0:.1f}).")
    print(f"Nearest-neighbour sense accuracy over {len(heldout)} held-out sentences ({len(SENSES)} senses of "
          f"{len(AMBIGUOUS_WORDS)} words; each occurrence takes the sense of the most similar other occurrence "
          f"of the same word; chance {chance:.2f}):")
    print(f"  {'':<18} {'any neighbour':>23}   {'neighbour sharing no prefix/suffix':>31}")
    print(f"  {'representation':<18} {'trained':>11} {'untrained':>11}   {'trained':>15} {'untrained':>15}")
    for key in LAYER_KEYS:
        print(f"  {LAYER_NAMES[key]:<18} {result.accuracy[key]:>11.3f} {result_untrained.accuracy[key]:>11.3f}   "
              f"{cross.accuracy[key]:>15.3f} {cross_untrained.accuracy[key]:>15.3f}")
    print("  Layer 0 gives every occurrence of a word the same vector, so it cannot tell senses apart (its row is the\n"
          "  chance level of each column). Layers 1 and 2 read the context: even untrained they mix in the\n"
          "  neighbouring words, which finds the sense when another sentence starts or ends the same way. The right-\n"
          "  hand columns only allow neighbours that share neither the words before nor the words after the\n"
          "  ambiguous word: there only a learned representation of the sense helps, and that is what training adds.")
    examples = _examples(heldout, result, args.examples, args.seed)
    if examples:
        print("\nNearest neighbours (trained model):")
        for e in examples:
            print(f"  {e['word']} [{e['sense']}]: {e['query']}")
            n0, n2 = e["neighbours"]["0"], e["neighbours"]["2"]
            print(f"    layer 0 -> [{n0['sense']}] {n0['text']}   (every occurrence ties: an arbitrary pick)")
            print(f"    layer 2 -> [{n2['sense']}] {n2['text']}")
    png, png_words = None, None
    if not args.no_plot:
        png = os.path.join(out, "senses.png")
        png_words = _plot(png, vectors, heldout, accuracy, trained["seconds"] / 60, trained["step"])
        if png_words:
            print(f"\nPCA plot of the {len(png_words)} ambiguous words per layer: {png}")
        else:
            png = None
    elapsed = time.perf_counter() - start
    print(f"Model (ELMo files): {os.path.join(out, 'model')}; demo took {elapsed / 60:.1f} min.")
    if args.json:
        write_json(args.json, {
            "sense_accuracy": {k: result.accuracy[k] for k in LAYER_KEYS},
            "sense_accuracy_untrained": {k: result_untrained.accuracy[k] for k in LAYER_KEYS},
            "sense_accuracy_other_context": {k: cross.accuracy[k] for k in LAYER_KEYS},
            "sense_accuracy_other_context_untrained": {k: cross_untrained.accuracy[k] for k in LAYER_KEYS},
            "sense_accuracy_per_word": {k: result.per_word[k] for k in LAYER_KEYS},
            "chance": chance,
            "n_heldout": len(heldout),
            "training": {k: trained[k] for k in ("step", "run_tokens", "seconds", "tokens_per_second",
                                                 "last_loss", "vocab_size")},
            "heldout_perplexity": ppl, "heldout_perplexity_untrained": ppl0,
            "examples": examples, "png": png, "png_words": png_words, "model_dir": os.path.join(out, "model"),
            "seed": args.seed,
            "minutes": args.minutes, "steps": args.steps, "seconds_total": elapsed})
    return 0
