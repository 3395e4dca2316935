"""The embed job: read -> batch -> embed -> write, in bounded memory, resumable, never destroying a file.

:func:`embed_to_hdf5` runs, in order:

1. **Checks before any work** (:mod:`.paths`): INPUT is a readable regular file; no OUTPUT (or shard) is INPUT
   or a model file, a directory or a special file; an existing OUTPUT needs ``overwrite``; the folder is
   writable and the temporary names fit. The work folder ``OUTPUT.embed-work`` is created and this rank's lock
   in it taken (a second embed of the same OUTPUT is refused); leftover ``*.tmp-PID`` files of dead runs go.
2. **Scan** (:func:`.steps.scan_step`, rank 0 only): every line validated (file:line errors), the input cut
   into chunks of ``chunk_lines`` lines with a content hash each; lines go to an on-disk sentence store when
   ``sentence_to_index`` or the duplicate-key check needs them.
3. **Embed** (:func:`.steps.embed_step`): the model is loaded only now (a factory) and its files hashed for the
   fingerprints; the free space is checked (:mod:`.space`); each process walks its block of chunks, keeping
   chunk files whose fingerprint matches (:mod:`.checkpoint`) and writing the others. Memory: one chunk of text
   plus one batch of activations.
4. **Merge** (:func:`.steps.merge_step`, rank 0): chunk files -> OUTPUT (or shards) with ``sentence_to_index``,
   published by a rename; then the work folder goes.

Every hdf5 write runs in a child process (:mod:`.isolated`), because HDF5 crashes the process when a write
fails: a full disk during the run is a one-line error naming the file and the space it needed, the completed
chunks stay, and a rerun with space continues.

SIGINT/SIGTERM (:class:`elmo_fast.errors.Interrupted`) or any error leaves the completed chunks and removes
the temporary file being written: rerunning the same command continues.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import IO, Any, Callable, Sequence

import numpy as np

from ..atomic import FileLock
from ..errors import Interrupted, UserError
from .distributed import distributed_env, process_group
from .isolated import DISK_ERRNOS, write_failed
from .paths import check_input, check_outputs, remove_dead_temps, shard_paths, work_dir_for
from .steps import RunSpec, embed_step, merge_step, scan_step
from .writer import OUTPUT_FORMATS

__all__ = ["embed_to_hdf5", "EmbedReport", "DEFAULT_CHUNK_LINES"]

logger = logging.getLogger(__name__)

#: lines per chunk (the resume unit and, stateless, the length-sorting window); rounded up to a multiple of
#: the batch size for stateful runs
DEFAULT_CHUNK_LINES = 4096


@dataclass
class EmbedReport:
    """What one :func:`embed_to_hdf5` call did (on this process)."""
    outputs: list[str]
    n_lines: int
    n_tokens: int
    chunks: int
    chunks_reused: int
    chunks_embedded: int
    tokens_embedded: int
    seconds: float


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected a positive integer, found {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive integer, found {value}")
    return int(value)


def _spool(stream: IO, path: str) -> None:
    """Copy a file object's text or bytes to ``path`` (constant memory)."""
    try:
        with open(path, "wb") as out:
            while True:
                block = stream.read(1 << 20)
                if not block:
                    break
                out.write(block.encode("utf-8") if isinstance(block, str) else block)
    except OSError as e:
        if e.errno in DISK_ERRNOS:
            raise write_failed(path, None, e.strerror or str(e)) from None
        raise UserError(f"{path}: cannot write the copy of the input ({e.strerror})") from None


def embed_to_hdf5(model: Any, input_file: str | os.PathLike | IO, output: str | os.PathLike, *,
                  output_format: str = "all", batch_size: int = 64, stateful: bool | None = None,
                  forget_sentences: bool = False, use_sentence_keys: bool = False, progress: bool = True,
                  distributed: bool | None = None, overwrite: bool = False, shards: int = 1,
                  chunk_lines: int = DEFAULT_CHUNK_LINES, model_files: Sequence[str] | None = None,
                  ) -> EmbedReport:
    """Embed a text file (one whitespace-tokenized sentence per line) into AllenNLP's hdf5 layout.

    Args:
        model: an embedder (``embed_batch``, ``stateful``, ``reset_states``; see :class:`elmo_fast.ElmoEmbedder`)
            or a zero-argument factory returning one (called after every check and the input scan).
        input_file: path of a regular file, or a file object (copied to the work folder first).
        output: the hdf5 file; with ``shards`` > 1 the name pattern ``stem-0000i-of-0000N.ext``.
        output_format: ``all`` ``(3, n, 2P)``, ``top`` or ``average`` ``(n, 2P)`` per line.
        batch_size: sentences per batch.
        stateful: required with a factory (the embedder's setting otherwise).
        forget_sentences / use_sentence_keys: as AllenNLP's ``elmo`` command.
        distributed: None detects torchrun's ``WORLD_SIZE``; False forces one process.
        overwrite: replace an existing OUTPUT (see :mod:`elmo_fast.embedding.paths` for symlinks).
        shards: number of output files (contiguous line ranges; each has its own ``sentence_to_index``).
        chunk_lines: lines per chunk (resume unit; stateless sorting window).
        model_files: the model's files (never written; hashed for the resume fingerprint); default: the
            embedder's ``source_files()``.

    Raises:
        UserError / InputFileError: a refused path, a bad input line, non-finite embeddings.
    """
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format: expected one of {OUTPUT_FORMATS}, found {output_format!r}")
    batch_size = _positive_int("batch_size", batch_size)
    shards = _positive_int("shards", shards)
    chunk_lines = _positive_int("chunk_lines", chunk_lines)
    if callable(model) and not hasattr(model, "embed_batch"):
        load_model: Callable[[], Any] = model  # a factory: called only after the checks and the scan
        if stateful is None:
            raise ValueError("stateful: expected True or False when the model is a factory")
    else:
        embedder = model
        load_model = lambda: embedder  # noqa: E731
        stateful = bool(embedder.stateful)
        if model_files is None and hasattr(embedder, "source_files"):
            model_files = embedder.source_files()
    if stateful:
        chunk_lines = math.ceil(chunk_lines / batch_size) * batch_size
    output = os.path.abspath(os.fspath(output))
    outputs = shard_paths(output, shards)
    rank, world = distributed_env() if distributed is None or distributed else (0, 1)
    work = work_dir_for(output)

    # 1. checks before any work
    stream = None
    if isinstance(input_file, (str, os.PathLike)):
        input_path = os.path.abspath(os.fspath(input_file))
        check_input(input_path)
    else:
        stream, input_path = input_file, os.path.join(work, "input.txt")
        if world > 1:
            raise ValueError("input_file: a file object cannot be shared by several processes; pass a path")
    protected = [("INPUT", input_path)] if stream is None else []
    protected += [("model file", p) for p in (model_files or [])]
    check_outputs(outputs, protected=protected, overwrite=overwrite)
    spec = RunSpec(input_path=input_path, outputs=tuple(outputs), work=work, output_format=output_format,
                   batch_size=batch_size, stateful=bool(stateful), forget_sentences=forget_sentences,
                   use_sentence_keys=use_sentence_keys, chunk_lines=chunk_lines, progress=progress, rank=rank,
                   world=world)
    start_time = time.perf_counter()
    os.makedirs(work, exist_ok=True)
    lock = FileLock(os.path.join(work, f"lock-{rank}"), f"OUTPUT {output}",
                    "another embed process is writing it now")
    store = None
    done_ok = False
    try:
        if rank == 0:
            remove_dead_temps(os.path.dirname(output), [os.path.basename(p) for p in outputs])
        _remove_dead_chunk_temps(work)
        if stream is not None:
            _spool(stream, input_path)
        with process_group() if world > 1 else nullcontext():
            plan, store = scan_step(spec)                               # 2.
            done = embed_step(spec, plan, load_model, model_files)      # 3.
            merge_step(spec, plan, store)                               # 4.
            done_ok = True
        elapsed = time.perf_counter() - start_time
        report = EmbedReport(outputs, plan.n_lines, plan.n_tokens, len(plan.chunks), done.reused, done.embedded,
                             done.tokens, elapsed)
        if rank == 0:
            logger.info("embedded %d lines (%d tokens; %d of %d chunks reused) in %.1fs, %.0f tokens/s -> %s",
                        plan.n_lines, plan.n_tokens, done.reused, len(plan.chunks), elapsed,
                        done.tokens / max(elapsed, 1e-9), ", ".join(outputs))
        return report
    except (Interrupted, KeyboardInterrupt) as e:
        if _has_chunks(work):  # one line in the end: the CLI prints str(e)
            e.args = (f"{e or 'interrupted'}; completed chunks are kept in {work}: run the same command again "
                      f"to continue",)
        raise
    except OSError as e:  # a write beside the chunk files and the output (those are checked where written)
        if e.errno in DISK_ERRNOS:
            raise write_failed(e.filename or work, None, e.strerror or str(e)) from None
        raise
    finally:
        if store is not None:
            store.close()
        lock.release()
        if rank == 0 and (done_ok or not _has_chunks(work)):
            shutil.rmtree(work, ignore_errors=True)  # done, or nothing there worth resuming


def _has_chunks(work: str) -> bool:
    try:
        return any(n.startswith("chunk-") and n.endswith(".h5") for n in os.listdir(work))
    except OSError:
        return False


def _remove_dead_chunk_temps(work: str) -> None:
    names = [n for n in os.listdir(work) if ".tmp-" in n]
    prefixes = sorted({n.rsplit(".tmp-", 1)[0] for n in names})
    remove_dead_temps(work, prefixes)
