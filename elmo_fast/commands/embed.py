"""``elmo-fast embed``: AllenNLP's ``elmo`` command (one hdf5 dataset per input line)."""
from __future__ import annotations

import argparse

from . import add_runtime_args


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "embed", help="embed a text file (one tokenized sentence per line) into an hdf5 file",
        description="Embed every line of INPUT (whitespace-tokenized, one sentence per line) with an ELMo "
                    "model and write one float32 dataset per line to OUTPUT (hdf5), keyed by the 0-based line "
                    "index, exactly as AllenNLP's `elmo` command. States are carried across batches "
                    "(stateful, AllenNLP-identical) unless --stateless.")
    p.add_argument("input", metavar="INPUT", help="UTF-8 text file, one whitespace-tokenized sentence per line; "
                   "blank lines are an error")
    p.add_argument("output", metavar="OUTPUT", help="hdf5 file to write (written to a temporary name, then renamed)")
    fmt = p.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--all", dest="output_format", action="store_const", const="all",
                     help="store all three layers: (3, n_tokens, 2P) per sentence")
    fmt.add_argument("--top", dest="output_format", action="store_const", const="top",
                     help="store the top LSTM layer only: (n_tokens, 2P)")
    fmt.add_argument("--average", dest="output_format", action="store_const", const="average",
                     help="store the mean of the three layers: (n_tokens, 2P)")
    p.add_argument("--options-file", required=True, help="the model's options.json")
    p.add_argument("--weight-file", required=True, help="the model's weights.hdf5 (bilm-tf layout)")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per batch (default 64)")
    p.add_argument("--stateless", action="store_true",
                   help="start every batch from zero LSTM state: outputs no longer depend on batch order "
                        "(not bit-compatible with AllenNLP)")
    p.add_argument("--forget-sentences", action="store_true",
                   help="do not write the 'sentence_to_index' dataset")
    p.add_argument("--use-sentence-keys", action="store_true",
                   help="key datasets by the sentence text instead of the line index (duplicates are an error)")
    add_runtime_args(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..embedder import ElmoEmbedder

    if args.batch_size < 1:
        raise ValueError(f"--batch-size: expected a positive integer, found {args.batch_size}")
    device = args.device
    cuda = -1 if device == "cpu" else int(device.split(":")[1]) if ":" in device else 0
    embedder = ElmoEmbedder(args.options_file, args.weight_file, cuda_device=cuda, stateful=not args.stateless,
                            batch_size=args.batch_size, backend=args.backend)
    embedder.embed_file(args.input, args.output, output_format=args.output_format, batch_size=args.batch_size,
                        forget_sentences=args.forget_sentences, use_sentence_keys=args.use_sentence_keys,
                        progress=not args.quiet)
    return 0
