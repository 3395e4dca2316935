"""``elmo-fast convert``: an ELMoForManyLangs model directory -> bilm-tf ``options.json`` + ``weights.hdf5``."""
from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "convert", help="write an ELMoForManyLangs model as bilm-tf options.json + weights.hdf5 (when it maps)",
        description="Convert the ELMoForManyLangs model in EFML_DIR (config.json, char.dic, token_embedder.pkl, "
                    "encoder.pkl; the .pkl files are read with torch.load(weights_only=True)) into bilm-tf's "
                    "options.json + weights.hdf5 in OUT_DIR, which then load in elmo-fast's and AllenNLP's Elmo and "
                    "ElmoEmbedder with the same numbers. Only models that bilm-tf's format can express are converted: "
                    "no word embedding (every published ELMoForManyLangs model has one, so they are refused: use "
                    "them directly with `elmo-fast embed --model-dir EFML_DIR`), 50 characters per token, and a "
                    "char.dic of ASCII characters (bilm-tf reads UTF-8 bytes, ELMoForManyLangs reads code points). "
                    "A refusal lists every reason. OUT_DIR is published whole, as by `export` (staged beside it, with "
                    "a manifest, swapped in one step).")
    p.add_argument("efml_dir", metavar="EFML_DIR", help="an ELMoForManyLangs model directory")
    p.add_argument("out_dir", metavar="OUT_DIR",
                   help="where to write options.json and weights.hdf5 (created if needed)")
    p.add_argument("--ascii-only", action="store_true",
                   help="convert even when char.dic holds non-ASCII characters: their rows are dropped, every byte "
                        ">= 128 reads as <oov>; the result equals the ELMoForManyLangs model on ASCII text only")
    p.add_argument("--overwrite", action="store_true", help="replace the model files already in OUT_DIR (an "
                   "export's softmax_weights.hdf5 and vocab.txt go too: they belonged to the replaced model)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..efml import convert

    info = convert(args.efml_dir, args.out_dir, ascii_only=args.ascii_only, overwrite=args.overwrite)
    if info["ascii_only"]:
        logger.warning("converted with --ascii-only: the bilm-tf model equals the ELMoForManyLangs model on ASCII "
                       "text only")
    print(f"wrote {info['options_file']} and {info['weight_file']}")
    return 0
