"""``elmo-fast export``: a training run -> ELMo files (options.json, weights.hdf5, softmax weights, vocab)."""
from __future__ import annotations

import argparse

from . import add_threads_arg, apply_threads


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export", help="write a training run's latest checkpoint as ELMo files",
        description="Write RUN_DIR's latest checkpoint as ELMo files in OUT_DIR: options.json (n_characters 262, "
                    "with the training keys), weights.hdf5 (bilm-tf layout: loads in elmo-fast's and AllenNLP's "
                    "ElmoEmbedder/Elmo), softmax_weights.hdf5 (softmax/W (V, P), softmax/b (V)) and vocab.txt. "
                    "The files and a manifest (elmo-fast-manifest.json: size and sha256 of each) are written into "
                    "OUT_DIR.tmp-PID and the folder is swapped into place in one step: a kill or a full disk leaves "
                    "OUT_DIR as it was or wholly new. OUT_DIR must be new or empty (or pass --overwrite); a "
                    "checkpoint holding NaN/Inf or failing its sha256 is refused.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by `elmo-fast train`")
    p.add_argument("out_dir", metavar="OUT_DIR", help="where to write the ELMo files (created if needed; must be "
                   "empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="export into an existing non-empty OUT_DIR, replacing "
                   "its options.json, weights.hdf5, softmax_weights.hdf5 and vocab.txt as one set (other files are "
                   "kept)")
    add_threads_arg(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..training import export_run

    apply_threads(args)
    info = export_run(args.run_dir, args.out_dir, overwrite=args.overwrite)
    print(f"exported step {info['step']} ({info['vocab_size']} vocabulary tokens) -> {info['out_dir']}")
    return 0
