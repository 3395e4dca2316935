"""``elmo-fast probe pos|wic MODEL_DIR``: what each biLM layer knows (the paper's layer analysis,
docs/numerics.md#reported-results)."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ..atomic import write_json
from . import add_runtime_args, apply_threads, precision_context

logger = logging.getLogger(__name__)

_EWT = {"train": "en_ewt-ud-train.conllu", "dev": "en_ewt-ud-dev.conllu", "test": "en_ewt-ud-test.conllu"}


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "probe", help="probe a model's layers: POS tagging (CoNLL-U) or word-in-context (WiC)",
        description="Freeze a model and measure what its layers know. `pos`: a linear UPOS classifier on layer "
                    "0 (token), 1, 2 and a learned scalar mix; `wic`: cosine-similarity threshold accuracy of "
                    "the target word's two vectors per layer. Data defaults to ../shared/data next to the "
                    "repository (or $ELMO_FAST_SHARED/data).")
    kinds = p.add_subparsers(dest="probe", metavar="PROBE")
    kinds.required = True

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("model_dir", metavar="MODEL_DIR",
                       help="directory with options.json and weights.hdf5 (e.g. from `elmo-fast export`)")
        q.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
        q.add_argument("--batch-size", type=int, default=64, help="sentences per embedding batch (default 64)")
        add_runtime_args(q)

    pos = kinds.add_parser(
        "pos", help="linear UPOS probe per layer (UD English EWT by default)",
        description="Train a linear (softmax-regression) UPOS classifier on frozen representations from layer 0, "
                    "1, 2 and a learned scalar mix; the epoch is chosen on dev; report test accuracy per choice, "
                    "next to a most-frequent-tag-per-word baseline.")
    common(pos)
    pos.add_argument("--data-dir", help="directory holding en_ewt-ud-{train,dev,test}.conllu "
                     "(default: ../shared/data/ud-english-ewt)")
    pos.add_argument("--conllu-train", help="training CoNLL-U file (overrides --data-dir)")
    pos.add_argument("--conllu-dev", help="dev CoNLL-U file, picks the epoch (overrides --data-dir; "
                     "default: the test file when no dev file exists)")
    pos.add_argument("--conllu-test", help="test CoNLL-U file (overrides --data-dir)")
    pos.add_argument("--max-train-sentences", type=int, default=None,
                     help="use only the first N training sentences (default: all)")
    pos.add_argument("--epochs", type=int, default=20, help="passes over the training tokens; dev picks the best "
                     "(default 20: on EWT the best epoch was 12-20)")
    pos.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    pos.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    pos.set_defaults(func=run_pos)

    wic = kinds.add_parser(
        "wic", help="WiC cosine-threshold accuracy per layer",
        description="For each WiC pair, the cosine similarity of the target word's vectors in the two contexts, "
                    "per layer (0, 1, 2 and their average); one threshold per layer is chosen on "
                    "--threshold-on and accuracy is reported on train, dev and test. WiC is CC BY-NC 4.0 "
                    "(non-commercial use only).")
    common(wic)
    wic.add_argument("--wic-dir", help="directory with train/, dev/, test/ holding *.data.txt and *.gold.txt "
                     "(default: ../shared/data/wic)")
    wic.add_argument("--threshold-on", choices=["train", "dev", "train+dev"], default="train",
                     help="split(s) on which the threshold is chosen (default train)")
    wic.set_defaults(func=run_wic)

    text = kinds.add_parser(
        "conllu-text", help="write the word forms of a CoNLL-U file, one sentence per line (e.g. training text)",
        description="Write the syntactic-word forms of CONLLU (the tokenization `probe pos` embeds), one "
                    "whitespace-separated sentence per line, to OUT: training text for `elmo-fast train` that "
                    "matches the probe's tokenization. Forms containing whitespace are an error.")
    text.add_argument("conllu", metavar="CONLLU", help="input CoNLL-U file")
    text.add_argument("output", metavar="OUT", help="text file to write (written to a temporary name, then renamed)")
    text.set_defaults(func=run_conllu_text)
    return p


def run_pos(args: argparse.Namespace) -> int:
    from ..probe import find_shared_data, load_embedder, pos_probe, read_conllu

    apply_threads(args)
    files: dict[str, str | None] = {"train": args.conllu_train, "dev": args.conllu_dev, "test": args.conllu_test}
    if files["train"] is None or files["test"] is None:
        data = find_shared_data("ud-english-ewt", args.data_dir)
        for split, name in _EWT.items():
            if files[split] is None and (split != "dev" or args.conllu_train is None):
                files[split] = str(data / name)
    sentences = {split: read_conllu(path) if path else [] for split, path in files.items()}
    if args.max_train_sentences is not None:
        sentences["train"] = sentences["train"][:args.max_train_sentences]
    with precision_context(args):  # the embedder's model (precision None) inherits --precision
        embedder = load_embedder(args.model_dir, args.device, args.backend, args.batch_size)
        result = pos_probe(embedder, sentences["train"], sentences["dev"], sentences["test"], epochs=args.epochs,
                           lr=args.lr, seed=args.seed, progress=not args.quiet)
    names = {"0": "layer 0 (token)", "1": "layer 1", "2": "layer 2", "mix": "scalar mix"}
    print(f"POS probe ({result.n_tags} UPOS tags; train {result.n_tokens['train']} / dev {result.n_tokens['dev']} "
          f"/ test {result.n_tokens['test']} tokens), model {args.model_dir}")
    print(f"{'representation':<18} {'dev acc':>8} {'test acc':>9} {'epoch':>6}")
    for key, label in names.items():
        print(f"{label:<18} {result.dev_accuracy[key]:>8.4f} {result.test_accuracy[key]:>9.4f} "
              f"{result.best_epoch[key]:>6d}")
    print(f"{'word baseline':<18} {'':>8} {result.baseline_test_accuracy:>9.4f}   (most frequent tag per form)")
    print("scalar mix weights (softmax): " + ", ".join(f"{w:.3f}" for w in result.mix_weights))
    if args.json:
        write_json(args.json, {"probe": "pos", "model_dir": str(args.model_dir), "files": files, **result.to_dict()})
    return 0


def run_wic(args: argparse.Namespace) -> int:
    from ..probe import find_shared_data, load_embedder, read_wic, wic_probe

    apply_threads(args)
    root = find_shared_data("wic", args.wic_dir)
    splits = {}
    for split in ("train", "dev", "test"):
        data, gold = Path(root) / split / f"{split}.data.txt", Path(root) / split / f"{split}.gold.txt"
        if data.is_file() or split in args.threshold_on.split("+"):
            splits[split] = read_wic(data, gold)
    with precision_context(args):
        embedder = load_embedder(args.model_dir, args.device, args.backend, args.batch_size)
        result = wic_probe(embedder, splits, threshold_split=args.threshold_on, progress=not args.quiet)
    names = {"0": "layer 0 (token)", "1": "layer 1", "2": "layer 2", "average": "average"}
    print(f"WiC cosine-threshold probe (threshold chosen on {args.threshold_on}), model {args.model_dir}")
    header = f"{'representation':<18} {'threshold':>9} " + " ".join(f"{s + ' acc':>10}" for s in splits)
    print(header)
    for key, label in names.items():
        accs = " ".join(f"{result.accuracy[key][s]:>10.4f}" for s in splits)
        print(f"{label:<18} {result.threshold[key]:>9.4f} {accs}")
    print("pairs: " + ", ".join(f"{k} {v}" for k, v in result.n_pairs.items()) + " (chance 0.5)")
    if args.json:
        write_json(args.json, {"probe": "wic", "model_dir": str(args.model_dir), "wic_dir": str(root),
                                **result.to_dict()})
    return 0


def run_conllu_text(args: argparse.Namespace) -> int:
    from ..probe import ConlluError, read_conllu

    sentences = read_conllu(args.conllu)
    tmp = f"{args.output}.tmp-{os.getpid()}"
    n_words = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for s in sentences:
                bad = [w for w in s.forms if len(w.split()) != 1]
                if bad:
                    raise ConlluError(f"{args.conllu}: sentence at line {s.line}: form {bad[0]!r} contains "
                                      f"whitespace; expected one token per form")
                f.write(" ".join(s.forms) + "\n")
                n_words += len(s.forms)
        os.replace(tmp, args.output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"wrote {len(sentences)} sentences ({n_words} words) to {args.output}")
    return 0
