"""``elmo-fast embed``: AllenNLP's ``elmo`` command (one hdf5 dataset per input line), streaming and resumable."""
from __future__ import annotations

import argparse
import os
import stat

from ..errors import MissingFileError, UserError
from ..validation import check_positive_flags
from . import add_runtime_args, add_threads_arg, apply_threads, check_precision

_EPILOG = """\
memory and resuming:
  The input is read line by line and embedded chunk by chunk (--chunk-lines); memory does not grow with the
  input. Completed chunks are kept in OUTPUT.embed-work/ until OUTPUT is complete, so a run that was killed
  (Ctrl-C, SIGTERM, kill -9, a crash) continues when the same command is run again. A chunk is reused only if
  its input lines, the model files' contents, the backend and its arithmetic (--precision, order), the output
  format, the key mode and statefulness (and, stateful, the batch size) are unchanged; anything else is
  recomputed and the log says why. A stateful run stores the LSTM state after each chunk, so a resumed run
  writes exactly what an uninterrupted run writes.
  Temporary files of dead runs (OUTPUT.tmp-PID, chunk-*.h5.tmp-PID) are removed at the next start.

output safety (checked before the model is loaded):
  OUTPUT may not be INPUT, a model file, a directory, a FIFO or a device (refused even with --overwrite).
  An existing OUTPUT is refused unless --overwrite; the old file stays until the new one is complete.
  A symbolic link at OUTPUT is never followed: it is refused unless --overwrite, which replaces the link
  itself by the new file (the link's target is left untouched).

disk space:
  Before the first chunk is embedded, the space still needed (chunk files until merged, then OUTPUT: about
  4 bytes x layers x tokens x 2P) is checked against the folder's free space and the file size limit
  (ulimit -f). hdf5 files are written by child processes: a disk that fills up during the run ends with one
  line naming the file and the space it needed; completed chunks stay, the same command continues.

several processes:
  torchrun --nproc_per_node N -m elmo_fast.cli embed ... : each process embeds a contiguous block of chunks
  (gloo on CPU, GPU LOCAL_RANK on CUDA), rank 0 writes OUTPUT. Stateful runs start each block from zero
  state, so they differ from a one-process run at block starts.

exit status: 0 done; 2 a user error (one line naming the file, line or flag); 70 an internal error (a bug:
  a crash report to send us); 130/143 interrupted.
"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "embed", help="embed a text file (one tokenized sentence per line) into an hdf5 file",
        description="Embed every line of INPUT (whitespace-tokenized, one sentence per line) with an ELMo "
                    "model and write one float32 dataset per line to OUTPUT (hdf5), keyed by the 0-based line "
                    "index, exactly as AllenNLP's `elmo` command. States are carried across batches "
                    "(stateful, AllenNLP-identical) unless --stateless.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="INPUT", help="UTF-8 text file (a regular file), one whitespace-tokenized "
                   "sentence per line; blank lines and invalid UTF-8 are errors naming the lines")
    p.add_argument("output", metavar="OUTPUT", help="hdf5 file to write (assembled under a temporary name, then "
                   "renamed); see 'output safety' below")
    fmt = p.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--all", dest="output_format", action="store_const", const="all",
                     help="store all three layers: (3, n_tokens, 2P) per sentence")
    fmt.add_argument("--top", dest="output_format", action="store_const", const="top",
                     help="store the top LSTM layer only: (n_tokens, 2P)")
    fmt.add_argument("--average", dest="output_format", action="store_const", const="average",
                     help="store the mean of the three layers: (n_tokens, 2P)")
    p.add_argument("--options-file", help="the model's options.json (with --weight-file)")
    p.add_argument("--weight-file", help="the model's weights.hdf5 (bilm-tf layout; with --options-file)")
    p.add_argument("--model-dir", help="a model folder instead of --options-file/--weight-file: options.json + "
                   "weights.hdf5, or an ELMoForManyLangs folder (elmo_fast.pretrained)")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per batch (default 64)")
    p.add_argument("--stateless", action="store_true",
                   help="start every batch from zero LSTM state: outputs no longer depend on batch order, and "
                        "sentences are batched by length within each chunk (not bit-compatible with AllenNLP)")
    p.add_argument("--forget-sentences", action="store_true",
                   help="do not write the 'sentence_to_index' dataset")
    p.add_argument("--use-sentence-keys", action="store_true",
                   help="key datasets by the sentence text instead of the line index (duplicate lines, and "
                        "lines with a NUL byte or '/', or a lone '.', are errors naming the lines)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing OUTPUT (or a symbolic link at OUTPUT: the link, not its target)")
    p.add_argument("--shards", type=int, default=1,
                   help="write N hdf5 files OUTPUTSTEM-0000i-of-0000N.EXT instead of one, each with a contiguous "
                        "range of lines and its own sentence_to_index (default 1)")
    p.add_argument("--chunk-lines", type=int, default=4096,
                   help="lines per chunk: the unit of resuming and, with --stateless, the window sorted by "
                        "length; rounded up to a multiple of --batch-size when stateful (default 4096)")
    add_runtime_args(p)
    p.add_argument("--order", choices=["fast", "allennlp"], default=None,
                   help="floating-point order of the fast CPU path: fast (default: oneDNN-packed products) or "
                        "allennlp (AllenNLP's order of operations: AllenNLP's bits at one thread; slower, see "
                        "benchmarks/RESULTS.md). The reference backend always computes in "
                        "AllenNLP's order; ELMO_FAST_ONEDNN=0 makes allennlp the default. Part of the resume "
                        "fingerprint")
    if not any("--threads" in a.option_strings for a in p._actions):
        add_threads_arg(p)
    p.set_defaults(func=run)
    return p


def _cuda_index(device: str) -> int:
    """``cpu`` -> -1, ``cuda`` -> 0, ``cuda:N`` -> N; CUDA must be available."""
    if device == "cpu":
        return -1
    head, _, tail = device.partition(":")
    if head != "cuda" or (tail and not tail.isdigit()):
        raise UserError(f"--device: expected 'cpu', 'cuda' or 'cuda:N', found {device!r}")
    import torch
    if not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    index = int(tail) if tail else 0
    if index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return index


def _model_files(args: argparse.Namespace) -> list[str]:
    from ..hub import resolve_args
    resolve_args(args)  # URLs and public model names -> their cached local files
    if args.model_dir:
        if args.options_file or args.weight_file:
            raise UserError("--model-dir: give either --model-dir or --options-file and --weight-file, not both")
        if not os.path.isdir(args.model_dir):
            raise UserError(f"--model-dir {args.model_dir}: not a directory")
        files = []
        for root, _dirs, names in sorted(os.walk(args.model_dir)):
            files += [os.path.join(root, n) for n in sorted(names)]
        for path in files:  # every file is read (hashed): a FIFO would block forever, a device never end
            _check_regular(path, "--model-dir")
        return files
    missing = [flag for flag, value in (("--options-file", args.options_file), ("--weight-file", args.weight_file))
               if not value]
    if missing:
        raise UserError(f"{' and '.join(missing)}: required (or give --model-dir)")
    for flag, path in (("--options-file", args.options_file), ("--weight-file", args.weight_file)):
        if not os.path.exists(path):
            raise MissingFileError(f"{flag} {path}: no such file")
        _check_regular(path, flag)
    return [args.options_file, args.weight_file]


def _check_regular(path: str, flag: str) -> None:
    """Model files are read whole: only regular files (a FIFO blocks the reader, a device never ends)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise UserError(f"{flag}: {path}: cannot be read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{flag} {path}: is a directory; expected a file")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a device"
                if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket"
                if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise UserError(f"{flag}: {path} is {kind}; model files must be regular files (remove it from the folder)")


def run(args: argparse.Namespace) -> int:
    from ..embedder import ElmoEmbedder
    from ..embedding import embed_to_hdf5

    apply_threads(args)
    check_positive_flags(("--batch-size", args.batch_size), ("--shards", args.shards),
                         ("--chunk-lines", args.chunk_lines))
    cuda = _cuda_index(args.device)
    check_precision(args)
    files = _model_files(args)
    stateful = not args.stateless

    def load() -> ElmoEmbedder:
        if args.model_dir:
            return ElmoEmbedder.from_pretrained(args.model_dir, cuda_device=cuda, stateful=stateful,
                                                batch_size=args.batch_size, backend=args.backend,
                                                precision=args.precision, order=args.order)
        return ElmoEmbedder(args.options_file, args.weight_file, cuda_device=cuda, stateful=stateful,
                            batch_size=args.batch_size, backend=args.backend, precision=args.precision,
                            order=args.order)

    embed_to_hdf5(load, args.input, args.output, output_format=args.output_format, batch_size=args.batch_size,
                  stateful=stateful, forget_sentences=args.forget_sentences,
                  use_sentence_keys=args.use_sentence_keys, progress=not args.quiet, overwrite=args.overwrite,
                  shards=args.shards, chunk_lines=args.chunk_lines, model_files=files)
    return 0
