"""``elmo-fast train``: pretrain a biLM from raw text (one process, or every process under ``torchrun``)."""
from __future__ import annotations

import argparse

from ..atomic import write_json
from . import add_runtime_args, add_threads_arg, apply_threads
import sys


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train", help="train a biLM from tokenized text (bilm-tf recipe); runs under torchrun too",
        description="Train ELMo's biLM from scratch (or fine-tune with --init-from) on a corpus of UTF-8 text "
                    "files, one whitespace-tokenized sentence per line. bilm-tf recipe: stateful B x T batches, "
                    "sampled softmax with 8192 log-uniform negatives, dropout 0.1, Adagrad lr 0.2, global-norm "
                    "clipping 10. Settings come from the options file's training keys, overridden by the flags "
                    "below. Under `torchrun --nproc_per_node N -m elmo_fast.cli train ...` the processes train "
                    "with DistributedDataParallel (gloo on CPU, nccl on GPU); each reads its own part of the "
                    "corpus and rank 0 writes. Ctrl-C / SIGTERM writes a checkpoint; --resume continues exactly.")
    p.add_argument("--train", required=True, action="append", metavar="GLOB",
                   help="corpus files (a glob; quote it; may be repeated)")
    p.add_argument("--out", required=True, metavar="RUN_DIR",
                   help="run directory: options.json, vocab.txt, config.json, checkpoint.pt")
    p.add_argument("--options", required=True, metavar="PRESET|FILE.json",
                   help="model shape: a preset (tiny, small, medium, original) or an options.json")
    p.add_argument("--heldout", metavar="FILE", help="held-out text for perplexity (periodic and at the end)")
    p.add_argument("--vocab", metavar="FILE", help="bilm-tf vocab file (<S>, </S>, <UNK>, then words by "
                   "descending frequency); default: built from the corpus and written to RUN_DIR/vocab.txt")
    p.add_argument("--min-count", type=int, default=1, help="building the vocabulary: keep words seen at least "
                   "this often (default 1)")
    p.add_argument("--max-vocab", type=int, default=None, help="building the vocabulary: at most this many "
                   "tokens including <S>, </S>, <UNK> (default unlimited)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in total "
                   "(default: n_epochs passes over the corpus)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this many minutes of this "
                   "invocation (a checkpoint is written)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per process (default: options "
                   "batch_size, else 128)")
    p.add_argument("--unroll-steps", type=int, default=None, help="tokens per row per batch, backprop window "
                   "(default: options unroll_steps, else 20)")
    p.add_argument("--n-negative-samples", type=int, default=None, help="sampled-softmax negatives per "
                   "direction per batch (default: options n_negative_samples_batch, else 8192)")
    p.add_argument("--full-softmax", action="store_true", help="train with the full softmax instead of the "
                   "sampled one (small vocabularies)")
    p.add_argument("--dropout", type=float, default=None, help="dropout on LSTM inputs and the top output "
                   "(default: options dropout, else 0.1)")
    p.add_argument("--learning-rate", type=float, default=None, help="Adagrad learning rate (default 0.2)")
    p.add_argument("--clip-norm", type=float, default=None, help="global gradient-norm clip (default 10)")
    p.add_argument("--n-epochs", type=float, default=None, help="passes over the corpus when --max-steps and "
                   "--max-minutes are not given (default: options n_epochs, else 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order, dropout and "
                   "sampling (default 0)")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR/checkpoint.pt exactly")
    p.add_argument("--init-from", metavar="MODEL_DIR", help="start from ELMo files (options.json, weights.hdf5; "
                   "softmax_weights.hdf5 + vocab.txt when present) or another run directory, to fine-tune on new "
                   "text; the model shape comes from MODEL_DIR, the softmax is kept when the vocabulary is the same")
    p.add_argument("--checkpoint-every", type=int, default=1250, help="steps between checkpoints (default 1250)")
    p.add_argument("--eval-every", type=int, default=None, help="steps between held-out evaluations "
                   "(default: only at the end)")
    p.add_argument("--eval-batch-size", type=int, default=256, help="rows of the held-out evaluation "
                   "(bilm-tf: 256)")
    p.add_argument("--data-parts", type=int, default=None, help="split the corpus into this many disjoint parts "
                   "(default: the number of processes); a 1-process run with --data-parts N reads what an "
                   "N-process run reads")
    p.add_argument("--skip-bad-lines", action="store_true", help="log and skip lines that are not UTF-8 "
                   "instead of stopping")
    add_runtime_args(p, device_help="'cpu' or 'cuda' (under torchrun: cuda:LOCAL_RANK)")
    add_threads_arg(p, help="CPU threads per process (torch.set_num_threads)")
    p.add_argument("--json", metavar="OUT", help="also write the final summary as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:

    from ..train import TrainConfig, resolve_options, run_training

    apply_threads(args)
    options = resolve_options(args.options)
    flags = {"batch_size": args.batch_size, "unroll_steps": args.unroll_steps,
             "n_negative_samples": args.n_negative_samples, "dropout": args.dropout,
             "learning_rate": args.learning_rate, "clip_norm": args.clip_norm, "n_epochs": args.n_epochs}
    given = {k: v for k, v in flags.items() if v is not None}
    if args.full_softmax:
        given["sample_softmax"] = False
    config = TrainConfig(seed=args.seed, max_steps=args.max_steps, max_minutes=args.max_minutes,
                         checkpoint_every=args.checkpoint_every, eval_every=args.eval_every,
                         eval_batch_size=args.eval_batch_size, data_parts=args.data_parts,
                         min_count=args.min_count, max_vocab=args.max_vocab, skip_bad_lines=args.skip_bad_lines,
                         device=args.device, backend=args.backend)
    config = config.apply_options(options, overridden=given)
    import dataclasses
    config = dataclasses.replace(config, **given)
    summary = run_training(args.train, args.out, options, config, heldout=args.heldout, vocab_path=args.vocab,
                           resume=args.resume, init_from=args.init_from, progress=not args.quiet)
    import os
    if int(os.environ.get("RANK", "0")) == 0:
        if args.json:
            write_json(args.json, summary)
        h = summary.get("heldout")
        line = (f"step {summary['step']} ({summary['stopped_by']}), {summary['run_tokens']} tokens in "
                f"{summary['seconds']:.1f}s = {summary['tokens_per_second']:.0f} tokens/s, "
                f"train loss {summary['last_loss']}")
        if h:
            line += (f", held-out perplexity {h['perplexity']:.2f} (forward {h['forward_perplexity']:.2f}, "
                     f"backward {h['backward_perplexity']:.2f})")
        print(line, file=sys.stdout)
    return 130 if summary["stopped_by"] == "signal" else 0
