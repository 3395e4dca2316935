"""``elmo-fast train``: pretrain a biLM from raw text (one process, or every process under ``torchrun``)."""
from __future__ import annotations

import argparse

import dataclasses
import math
import os
import sys
from typing import Any

from ..atomic import write_json
from .. import settings
from ..errors import MissingFileError, UserError
from . import add_runtime_args, apply_threads, check_device, precision_context


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train", help="train a biLM from tokenized text (bilm-tf recipe); runs under torchrun too",
        description="Train ELMo's biLM from scratch (or fine-tune with --init-from) on a corpus of UTF-8 text "
                    "files, one whitespace-tokenized sentence per line. bilm-tf recipe: stateful B x T batches, "
                    "sampled softmax with 8192 log-uniform negatives, dropout 0.1, Adagrad lr 0.2, global-norm "
                    "clipping 10. Settings come from the options file's training keys, overridden by the flags "
                    "below. Under `torchrun --nproc_per_node N -m elmo_fast.cli train ...` the processes train "
                    "with DistributedDataParallel (gloo on CPU, nccl on GPU); each reads its own part of the "
                    "corpus and rank 0 writes. Ctrl-C / SIGTERM writes a checkpoint; "
                    "`elmo-fast train --out RUN_DIR --resume` continues exactly, with the run's own options, "
                    "corpus, held-out file and settings. A checkpoint "
                    "is never written with NaN/Inf weights (the run stops with an error naming the step and the "
                    "tensor; the previous checkpoint stays). One train per RUN_DIR at a time (RUN_DIR/train.lock); "
                    "each checkpoint's sha256 is checked when it is loaded, and the one it replaced is kept as "
                    "checkpoint.prev.pt, the fallback of --resume.")
    p.add_argument("--train", action="append", metavar="GLOB",
                   help="corpus files (a glob; quote it; may be repeated); required unless --resume (default "
                        "then: the run's corpus, checked by file names and sizes)")
    p.add_argument("--out", required=True, metavar="RUN_DIR",
                   help="run directory: options.json, vocab.txt, config.json, checkpoint.pt")
    p.add_argument("--options", metavar="PRESET|FILE.json",
                   help="model shape: a preset (tiny, small, medium, original) or an options.json; required "
                        "unless --resume (the run's) or --init-from (that model's)")
    p.add_argument("--heldout", metavar="FILE", help="held-out text for perplexity (periodic and at the end)")
    p.add_argument("--vocab", metavar="FILE", help="bilm-tf vocab file, one token per line; <S>, </S> and <UNK> "
                   "may be on any line (found by name, as bilm-tf does), !!!MAXTERMID lines are skipped; default: "
                   "built from the corpus and written to RUN_DIR/vocab.txt. A vocabulary covering less than 50%% "
                   "of the corpus tokens is warned about")
    p.add_argument("--min-count", type=int, default=None, help="building the vocabulary: keep words seen at least "
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
    p.add_argument("--seed", type=int, default=None, help="seed of initialisation, data order, dropout and "
                   "sampling (default 0)")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR/checkpoint.pt exactly; options, corpus, "
                   "held-out file and settings default to the run's own (RUN_DIR/config.json), flags given "
                   "override them")
    p.add_argument("--allow-changed-corpus", action="store_true", help="with --resume: continue although the "
                   "corpus files (names or sizes) differ from those the run was trained on")
    p.add_argument("--init-from", metavar="MODEL_DIR", help="start from ELMo files (options.json, weights.hdf5; "
                   "softmax_weights.hdf5 + vocab.txt when present) or another run directory, to fine-tune on new "
                   "text; the model shape comes from MODEL_DIR (--options is then optional), the softmax is kept "
                   "when the vocabulary is the same")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default 1250)")
    p.add_argument("--eval-every", type=int, default=None, help="steps between held-out evaluations "
                   "(default: only at the end)")
    p.add_argument("--eval-batch-size", type=int, default=None, help="rows of the held-out evaluation "
                   "(default 256, bilm-tf's; the whole file is scored)")
    p.add_argument("--data-parts", type=int, default=None, help="split the corpus into this many disjoint parts "
                   "(default: the number of processes); a 1-process run with --data-parts N reads what an "
                   "N-process run reads")
    p.add_argument("--skip-bad-lines", action="store_true", help="log and skip lines that are not UTF-8 "
                   "instead of stopping")
    add_runtime_args(p, device_help="'cpu' or 'cuda' (under torchrun: cuda:LOCAL_RANK); default cpu, with "
                                    "--resume the run's",
                     threads_help="CPU threads per process (torch.set_num_threads)")
    p.set_defaults(device=None)
    p.add_argument("--json", metavar="OUT", help="also write the final summary as JSON")
    p.set_defaults(func=run)
    return p


#: TrainConfig fields a command-line flag sets (flag value None = not given)
_FLAG_FIELDS = ("batch_size", "unroll_steps", "n_negative_samples", "dropout", "learning_rate", "clip_norm",
                "n_epochs", "seed", "checkpoint_every", "eval_every", "eval_batch_size", "data_parts", "min_count",
                "max_vocab", "max_steps")
#: fields of a run's config.json that --resume does not take over (they belong to this invocation/machine)
_PER_INVOCATION = ("max_minutes",)

#: TrainConfig field -> (kind, lower bound, whether the bound itself is allowed); upper bound 1 for dropout
_RANGES: dict[str, tuple[str, float, bool]] = {
    "batch_size": ("int", 1, True), "unroll_steps": ("int", 1, True), "n_negative_samples": ("int", 1, True),
    "checkpoint_every": ("int", 1, True), "eval_every": ("int", 1, True), "eval_batch_size": ("int", 1, True),
    "softmax_chunk": ("int", 1, True), "data_parts": ("int", 1, True), "min_count": ("int", 1, True),
    "max_vocab": ("int", 4, True), "max_steps": ("int", 0, True), "seed": ("int", 0, True),
    "learning_rate": ("float", 0.0, False), "clip_norm": ("float", 0.0, False), "n_epochs": ("float", 0.0, False),
    "max_minutes": ("float", 0.0, False), "initial_accumulator": ("float", 0.0, False),
    "dropout": ("float", 0.0, True),
}


def _check_range(field: str, value: Any, where: str) -> None:
    """Refuse a value out of the field's range, or a non-finite number; ``where`` names the flag
    (``"--seed:"``) or the file and field (``"RUN/config.json: field 'seed'"``)."""
    if value is None or field not in _RANGES:
        return
    kind, low, inclusive = _RANGES[field]
    if kind == "float" and not math.isfinite(value):
        raise UserError(f"{where} expected a finite number, found {value}")
    if field == "dropout" and not 0.0 <= value < 1.0:
        raise UserError(f"{where} expected a probability 0 <= p < 1, found {value}")
    if value < low or (value == low and not inclusive):
        if kind == "int":
            expected = "a positive integer" if low == 1 else f"an integer >= {low:g}"
        else:
            expected = f"a number > {low:g}" if not inclusive else f"a number >= {low:g}"
        raise UserError(f"{where} expected {expected}, found {value}")


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def check_flags(args: argparse.Namespace) -> None:
    """Every numeric flag in range and finite (``--max-minutes nan``, ``--learning-rate inf`` are refused),
    naming the flag, before anything is read or trained."""
    for field in _RANGES:
        value = getattr(args, field, None)
        if value is not None:
            _check_range(field, value, _flag(field) + ":")


def _field_types(annotation: str) -> tuple[set[str], bool]:
    """``"int | None"`` -> ({"int"}, True)."""
    names = {part.strip() for part in str(annotation).split("|")}
    return names - {"None"}, "None" in names


def _type_ok(value: Any, kinds: set[str]) -> bool:
    if "bool" in kinds and isinstance(value, bool):
        return True
    if isinstance(value, bool):
        return False
    if "int" in kinds and isinstance(value, int):
        return True
    if "float" in kinds and isinstance(value, (int, float)):
        return True
    return "str" in kinds and isinstance(value, str)


def check_saved_config(saved: dict, path: str) -> dict:
    """The TrainConfig fields of a run's config.json, each checked for type and range (errors name the file
    and the field: a hand-edited ``"batch_size": "64"`` is refused here, not deep inside the training)."""
    from ..training import TrainConfig
    out = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in saved or f.name in _PER_INVOCATION:
            continue
        value = saved[f.name]
        kinds, nullable = _field_types(f.type)
        if value is None and nullable:
            out[f.name] = None
            continue
        if not _type_ok(value, kinds):
            expected = " or ".join(sorted(kinds)) + (" or null" if nullable else "")
            raise UserError(f"{path}: field '{f.name}' expected {expected}, found {type(value).__name__} {value!r}")
        _check_range(f.name, value, f"{path}: field '{f.name}'")
        out[f.name] = value
    return out


def _run_config(out_dir: str) -> dict:
    """The run's config.json (what --resume takes its defaults from)."""
    from ..textfile import read_json_file
    path = os.path.join(out_dir, "config.json")
    if not os.path.isdir(out_dir):
        raise MissingFileError(f"--resume: run directory not found: {out_dir}")
    from ..publish import recover_files
    recover_files(out_dir)  # a settings update a killed run committed is completed before it is read
    if not os.path.exists(path):
        _refuse_if_running(out_dir)  # a train that has not written its settings yet holds the folder
        raise MissingFileError(f"--resume: {path} not found (not a run directory written by `elmo-fast train`)")
    saved = read_json_file(path, "run settings file (config.json)")
    if not isinstance(saved, dict):
        raise UserError(f"{path}: expected a JSON object with the run's settings")
    return saved


def _refuse_if_running(out_dir: str) -> None:
    """UserError naming the holder when another ``train`` holds ``out_dir``'s lock now."""
    from ..training.loop import check_run_lock
    check_run_lock(out_dir)


def build_config(args: argparse.Namespace):
    """-> (TrainConfig, options or None, train globs, heldout): flags over the run's own settings (--resume)
    over the options' training keys over bilm-tf's defaults."""
    from ..training import TrainConfig, resolve_options

    options = resolve_options(args.options) if args.options else None
    given = {k: getattr(args, k) for k in _FLAG_FIELDS if getattr(args, k, None) is not None}
    if args.full_softmax:
        given["sample_softmax"] = False
    given["skip_bad_lines"] = True if args.skip_bad_lines else given.get("skip_bad_lines", None)
    if given["skip_bad_lines"] is None:
        del given["skip_bad_lines"]
    train, heldout = args.train, args.heldout
    if args.resume:
        saved = _run_config(args.out)
        config_path = os.path.join(args.out, "config.json")
        config = TrainConfig(**check_saved_config(saved, config_path))
        if train is None:  # the files themselves (absolute paths, data order), else the globs as given
            corpus = saved.get("corpus")
            train = ([p for p, _ in corpus["files"]] if isinstance(corpus, dict) and corpus.get("files")
                     else saved.get("train"))
            if not train or not isinstance(train, list) or not all(isinstance(p, str) for p in train):
                raise UserError(f"{config_path}: no 'train' file list; pass --train")
        if heldout is None:
            heldout = saved.get("heldout")
            if heldout is not None and not isinstance(heldout, str):
                raise UserError(f"{config_path}: field 'heldout' expected a path or null, found "
                                f"{type(heldout).__name__} {heldout!r}")
        config = dataclasses.replace(config, max_steps=None) if "max_steps" not in given else config
    else:
        if train is None:
            raise UserError("--train: required (unless --resume, which reads the run's corpus)")
        config = TrainConfig()
        if options is not None:
            try:
                config = config.apply_options(options, overridden=given)
            except (TypeError, ValueError) as e:
                raise UserError(f"--options {args.options}: a training key has a value of the wrong type ({e})") \
                    from None
            for key, field in TrainConfig.OPTION_KEYS.items():
                if key in options.extra and field not in given:
                    _check_range(field, getattr(config, field), f"--options {args.options}: field '{key}'")
    runtime = {k: getattr(args, k) for k in ("device", "backend", "precision") if getattr(args, k, None) is not None}
    config = dataclasses.replace(config, **given, max_minutes=args.max_minutes, **runtime)
    check_device(config.device)
    return config, options, train, heldout


def run(args: argparse.Namespace) -> int:
    from ..data import check_text_file
    from ..training import run_training

    check_flags(args)
    apply_threads(args)
    if args.options is None and not args.resume and not args.init_from:
        raise UserError("--options: required unless --resume (the run's options) or --init-from (that model's)")
    config, options, train, heldout = build_config(args)
    if heldout is not None:  # the whole file, now: a bad held-out file must not wait for the end of training
        check_text_file(heldout, "--heldout" if args.heldout else f"{os.path.join(args.out, 'config.json')} "
                                                                  f"field 'heldout'")
    args.precision = config.precision  # a resumed run keeps the precision it started with unless --precision says
    # models built with precision None inherit --precision (forward, hand-written backward, evaluation);
    # Adagrad state and master weights stay float32
    with precision_context(args):
        summary = run_training(train, args.out, options, config, heldout=heldout, vocab_path=args.vocab,
                               resume=args.resume, init_from=args.init_from, progress=not args.quiet,
                               allow_changed_corpus=args.allow_changed_corpus)
    if settings.distributed().is_main:  # a RANK left over in a one-process run is rank 0 (elmo_fast.settings)
        if args.json:
            write_json(args.json, summary)
        h = summary.get("heldout")
        line = (f"step {summary['step']} ({summary['stopped_by']}), {summary['run_tokens']} tokens in "
                f"{summary['seconds']:.1f}s = {summary['tokens_per_second']:.0f} tokens/s, "
                f"train loss {_loss_text(summary['last_loss'])}")
        if h:
            line += (f", held-out perplexity {h['perplexity']:.2f} (forward {h['forward_perplexity']:.2f}, "
                     f"backward {h['backward_perplexity']:.2f}) over all {h['tokens']} held-out tokens")
        print(line, file=sys.stdout)
    return 130 if summary["stopped_by"] == "signal" else 0


def _loss_text(loss: float | None) -> str:
    """The last step's loss to 4 significant digits (the --json summary keeps every digit)."""
    return "none (no step run)" if loss is None else f"{loss:.4g}"
