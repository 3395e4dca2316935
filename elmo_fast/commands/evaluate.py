"""``elmo-fast evaluate``: held-out perplexity of a run or of exported ELMo files (bilm-tf protocol)."""
from __future__ import annotations

import argparse

from ..atomic import write_json
from ..validation import check_positive_flags
from . import add_runtime_args, apply_threads, precision_context


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate", help="full-softmax perplexity of a biLM on held-out text",
        description="Full-softmax perplexity on held-out text with bilm-tf's protocol: the file is read in order "
                    "by a forward and a reverse stream of --batch-size rows x 1 step, states carried, no dropout; "
                    "the last incomplete batch is dropped; targets include </S> (forward) and <S> (backward). "
                    "The whole file is scored: after the first row runs out of sentences (where bilm-tf stops) the "
                    "other rows finish theirs. Prints forward, backward and average perplexity (exp of the mean "
                    "loss per token), after a first line saying which part of the file was scored. MODEL_DIR is "
                    "a run directory (checkpoint.pt) or an export (options.json, weights.hdf5, "
                    "softmax_weights.hdf5, vocab.txt).")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="run directory or ELMo export directory")
    p.add_argument("--heldout", required=True, metavar="FILE", help="UTF-8 text, one tokenized sentence per line")
    p.add_argument("--json", metavar="OUT", help="also write the result as JSON")
    p.add_argument("--batch-size", type=int, default=256, help="rows (bilm-tf: 256)")
    p.add_argument("--max-batches", type=int, default=None, help="stop after this many batches (a quick estimate; "
                   "the output's first line says which fraction of the file was scored)")
    p.add_argument("--softmax-chunk", type=int, default=16384, help="vocabulary rows per softmax chunk")
    add_runtime_args(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..data import check_text_file
    from ..training import evaluate_perplexity, load_model_dir
    from ..training.evaluation import describe_coverage

    apply_threads(args)
    check_positive_flags(("--batch-size", args.batch_size), ("--max-batches", args.max_batches),
                         ("--softmax-chunk", args.softmax_chunk))
    check_text_file(args.heldout, "--heldout")  # the whole file, before the model is loaded
    from ..hub import resolve
    # a folder URL: an export's four files (public models publish no softmax weights, so a name fails there)
    model_dir = resolve(args.model_dir, "model_dir",
                        files=("options.json", "weights.hdf5", "softmax_weights.hdf5", "vocab.txt"))
    model, vocab, _ = load_model_dir(model_dir, backend=args.backend, need_softmax=True)
    model.to(args.device)
    with precision_context(args):  # the model (precision None) inherits --precision
        result = evaluate_perplexity(model, vocab, args.heldout, args.batch_size, 1, args.softmax_chunk,
                                     progress=not args.quiet, max_batches=args.max_batches)
    result["model_dir"] = args.model_dir
    if args.json:
        write_json(args.json, result)
    print(describe_coverage(result))
    print(f"perplexity {result['perplexity']:.3f} (forward {result['forward_perplexity']:.3f}, backward "
          f"{result['backward_perplexity']:.3f}) over {result['tokens']} tokens in {result['batches']} batches")
    return 0
