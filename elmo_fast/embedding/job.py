"""The embed job: read -> batch -> embed -> write, in bounded memory, resumable, never destroying a file.

Steps (:func:`embed_to_hdf5`):

1. **Checks before any work** (:mod:`.paths`): INPUT is a readable regular file; no OUTPUT (or shard) is INPUT
   or a model file, a directory or a special file; an existing OUTPUT needs ``overwrite``; the folder is
   writable and the temporary names fit. Leftover ``*.tmp-PID`` files of dead runs are removed.
2. **Scan** (:func:`.reader.scan_input`, rank 0 only): every line validated (file:line errors), the input cut
   into chunks of ``chunk_lines`` lines with a content hash each; lines go to an on-disk sentence store when
   ``sentence_to_index`` or the duplicate-key check needs them.
3. **Model**: loaded only now (a factory), or the given embedder; its files are hashed for the fingerprints.
4. **Embed**: each process walks its block of chunks; a chunk whose file exists with a matching fingerprint
   (:mod:`.checkpoint`) is skipped, others are recomputed (the log says why). A chunk is read by byte offset,
   batched (:mod:`.batching`), embedded, checked for NaN/Inf (the error names the input lines) and written
   to its own chunk file. Memory: one chunk of text plus one batch of activations.
5. **Merge** (rank 0): chunk files -> OUTPUT (or shards) with ``sentence_to_index``; then the work folder goes.

Disk space: before the first chunk is embedded, the bytes still to be written (chunk files until merged, then
the output: 4 bytes x layers x tokens x 2P plus ~512 bytes per line, and the sentence index) are compared with
the free space of OUTPUT's folder and the file size limit (``ulimit -f``): too little is a one-line error
naming both (:func:`check_space`). Every hdf5 write runs in a child process (:mod:`.isolated`), because HDF5
crashes the process when a write fails: a full disk during the run is a one-line error naming the file and
the space it needed, the completed chunks stay, and a rerun with space continues.

SIGINT/SIGTERM (:class:`elmo_fast.errors.Interrupted`) or any error leaves the completed chunks and removes
the temporary file being written: rerunning the same command continues.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import IO, Any, Callable, Sequence

import numpy as np

from ..atomic import FileLock
from ..errors import Interrupted, UserError, raise_if_interrupted
from ..runtime import thread_tick
from .batching import chunk_batches
from .checkpoint import chunk_components, fingerprint_of, model_fingerprint, why_stale
from .distributed import broadcast_from_zero, distributed_env, gather_ok, process_group, rank_share
from .index import SentenceStore
from .isolated import DISK_ERRNOS, ChunkWriterProcess, describe_bytes, free_bytes, run_isolated, write_failed
from .paths import check_input, check_outputs, remove_dead_temps, shard_paths, work_dir_for
from .reader import InputFileError, InputPlan, line_list, read_chunk, scan_input
from .writer import OUTPUT_FORMATS, ChunkFile, chunk_path, format_payload, merge_chunks, read_chunk_record

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


#: bytes per stored dataset beyond its float32 payload (HDF5 object header and link; measured ~330)
DATASET_OVERHEAD = 512
#: bytes per hdf5 file beyond its datasets (superblock, root group, heaps)
FILE_OVERHEAD = 64 << 10


def output_bytes(n_tokens: int, n_lines: int, layers: int, width: int) -> int:
    """Bytes of embeddings for ``n_tokens`` tokens on ``n_lines`` lines: ``4 x layers x tokens x width``
    (width = 2P) plus :data:`DATASET_OVERHEAD` per line."""
    return 4 * layers * n_tokens * width + DATASET_OVERHEAD * n_lines


def check_space(folder: str, output: str, *, chunks_bytes: int, largest_chunk: int, output_bytes: int,
                largest_output: int) -> None:
    """Refuse to start when ``folder`` lacks the space for the chunk files and the output, or a single file
    would exceed the file size limit (``ulimit -f``); the message names the folder and the bytes needed."""
    import resource
    needed = chunks_bytes + output_bytes
    free = free_bytes(folder)
    if free is not None and needed > free:
        raise UserError(f"OUTPUT {output}: not enough free space in {folder}: the embeddings need about "
                        f"{describe_bytes(needed)} ({describe_bytes(chunks_bytes)} of chunk files until they are "
                        f"merged, {describe_bytes(output_bytes)} of output), {describe_bytes(free)} are free")
    soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    largest = max(largest_chunk, largest_output)
    if soft != resource.RLIM_INFINITY and largest > soft:
        what = "a chunk file" if largest_chunk >= largest_output else "OUTPUT"
        raise UserError(f"OUTPUT {output}: {what} would need about {describe_bytes(largest)} but the file size "
                        f"limit (ulimit -f) is {describe_bytes(soft)}; raise the limit or write shards "
                        f"(--shards) and smaller chunks (--chunk-lines)")


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
    factory: Callable[[], Any] | None = None
    embedder = None
    if callable(model) and not hasattr(model, "embed_batch"):
        factory = model
        if stateful is None:
            raise ValueError("stateful: expected True or False when the model is a factory")
    else:
        embedder = model
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
    start_time = time.perf_counter()
    folder = os.path.dirname(output)
    os.makedirs(work, exist_ok=True)
    lock = FileLock(os.path.join(work, f"lock-{rank}"), f"OUTPUT {output}",
                    "another embed process is writing it now")
    store: SentenceStore | None = None
    writer = ChunkWriterProcess()
    done_ok = False
    try:
        if rank == 0:
            remove_dead_temps(folder, [os.path.basename(p) for p in outputs])
        _remove_dead_chunk_temps(work)
        if stream is not None:
            _spool(stream, input_path)

        # 2. scan (rank 0), shared with the other ranks
        need_store = use_sentence_keys or not forget_sentences
        context = process_group() if world > 1 else _nullcontext()
        with context:
            plan_or_error: Any
            if rank == 0:
                try:
                    if need_store:
                        store = SentenceStore(os.path.join(work, "sentences.sqlite"))
                    plan_or_error = scan_input(input_path, chunk_lines, sentence_keys=use_sentence_keys,
                                               on_line=store.add if store is not None else None, progress=progress)
                    if use_sentence_keys and store is not None:
                        dups, total = store.duplicates()
                        if dups:
                            pairs = ", ".join(f"line {a} repeats line {b}" for a, b in dups[:5])
                            more = f" ({total} repeated lines in all)" if total > 1 else ""
                            raise InputFileError(f"{input_path}: {pairs}{more}; duplicate sentences cannot be keys "
                                                 f"(run without --use-sentence-keys)")
                except Exception as e:
                    broadcast_from_zero(f"{e}", world)
                    raise
                broadcast_from_zero(plan_or_error, world)
            else:
                plan_or_error = broadcast_from_zero(None, world)
                if isinstance(plan_or_error, str):
                    raise InputFileError(plan_or_error)
            plan: InputPlan = plan_or_error
            _remove_foreign_chunks(work, len(plan.chunks), rank)

            # 3. model
            error: str | None = None
            reused = embedded = tokens_done = 0
            try:
                if embedder is None:
                    embedder = factory()  # type: ignore[misc]
                    if model_files is None and hasattr(embedder, "source_files"):
                        model_files = embedder.source_files()
                model_hash = model_fingerprint(model_files, getattr(embedder, "elmo_bilm", embedder)
                                               if not model_files else None)
                backend = _backend_label(embedder)
                lo, hi = rank_share(len(plan.chunks), rank, world)
                if rank == 0:
                    _check_space_for(plan, embedder, output_format, outputs, work, folder, use_sentence_keys,
                                     forget_sentences)
                # 4. embed this rank's block
                reused, embedded, tokens_done = _embed_block(
                    embedder, plan, lo, hi, work, model_hash=model_hash, backend=backend,
                    output_format=output_format, batch_size=batch_size, stateful=bool(stateful),
                    use_sentence_keys=use_sentence_keys, progress=progress and rank == 0, input_path=input_path,
                    writer=writer)
            except Interrupted:
                raise
            except Exception as e:
                if world <= 1:
                    raise
                gather_ok(f"rank {rank}: {e}", world)
                raise
            statuses = gather_ok(error, world)
            others = [s for s in statuses if s]
            if others:
                raise UserError(others[0])

            # 5. merge (rank 0)
            if rank == 0:
                groups = [rank_share(len(plan.chunks), i, len(outputs)) for i in range(len(outputs))]
                files = [chunk_path(work, c.index) for c in plan.chunks]

                def index_for(i: int):
                    if forget_sentences or use_sentence_keys or store is None:
                        return None
                    lo_c, hi_c = groups[i]
                    first = plan.chunks[lo_c].first_line if hi_c > lo_c else 0
                    last = plan.chunks[hi_c - 1].first_line + plan.chunks[hi_c - 1].n_lines if hi_c > lo_c else 0
                    return lambda: ((text, str(line)) for text, line in store.index_entries(first, last))
                try:
                    writer.shutdown()  # no chunk is written any more
                    _merge_isolated(outputs, files, groups, index_for, progress, store)
                except Exception as e:
                    gather_ok(f"rank 0 (merging): {e}", world)
                    raise
            statuses = gather_ok(None, world)  # every rank waits for the merge before the work folder goes
            if any(statuses):
                raise UserError(next(s for s in statuses if s))
            done_ok = True
        elapsed = time.perf_counter() - start_time
        report = EmbedReport(outputs, plan.n_lines, plan.n_tokens, len(plan.chunks), reused, embedded, tokens_done,
                             elapsed)
        if rank == 0:
            logger.info("embedded %d lines (%d tokens; %d of %d chunks reused) in %.1fs, %.0f tokens/s -> %s",
                        plan.n_lines, plan.n_tokens, reused, len(plan.chunks), elapsed,
                        tokens_done / max(elapsed, 1e-9), ", ".join(outputs))
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
        writer.shutdown()
        if store is not None:
            store.close()
        lock.release()
        if rank == 0 and (done_ok or not _has_chunks(work)):
            shutil.rmtree(work, ignore_errors=True)  # done, or nothing there worth resuming


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return False


def _has_chunks(work: str) -> bool:
    try:
        return any(n.startswith("chunk-") and n.endswith(".h5") for n in os.listdir(work))
    except OSError:
        return False


def _backend_label(embedder: Any) -> str:
    fn = getattr(embedder, "backend_label", None)
    return str(fn()) if callable(fn) else "unknown"


def _remove_dead_chunk_temps(work: str) -> None:
    names = [n for n in os.listdir(work) if ".tmp-" in n]
    prefixes = sorted({n.rsplit(".tmp-", 1)[0] for n in names})
    remove_dead_temps(work, prefixes)


def _remove_foreign_chunks(work: str, n_chunks: int, rank: int) -> None:
    """Rank 0 removes chunk files beyond this run's plan (left by a run on a longer input)."""
    if rank != 0:
        return
    for name in os.listdir(work):
        if name.startswith("chunk-") and name.endswith(".h5"):
            try:
                index = int(name[6:-3])
            except ValueError:
                continue
            if index >= n_chunks:
                os.remove(os.path.join(work, name))
                logger.info("removed %s: not part of this run (the input now has %d chunks)", name, n_chunks)


def _check_space_for(plan: InputPlan, embedder: Any, output_format: str, outputs: Sequence[str], work: str,
                     folder: str, use_sentence_keys: bool, forget_sentences: bool) -> None:
    """:func:`check_space` with this run's sizes: chunk files not yet complete, every output (the sentence
    index about the input's size again). Skipped for a model whose output width is unknown."""
    width = getattr(embedder, "output_dim", None)
    if not isinstance(width, int):
        return
    layers = int(getattr(embedder, "num_layers", 3)) if output_format == "all" else 1
    per_chunk = [output_bytes(c.n_tokens, c.n_lines, layers, width) + FILE_OVERHEAD for c in plan.chunks]
    todo = [b for c, b in zip(plan.chunks, per_chunk) if not os.path.exists(chunk_path(work, c.index))]
    index = 0 if (forget_sentences or use_sentence_keys) else int(plan.size * 1.5) + 16 * plan.n_lines
    groups = [rank_share(len(plan.chunks), i, len(outputs)) for i in range(len(outputs))]
    out_sizes = [sum(per_chunk[lo:hi]) + index * (hi - lo) // max(1, len(plan.chunks)) for lo, hi in groups]
    check_space(folder, outputs[0], chunks_bytes=sum(todo), largest_chunk=max(per_chunk, default=0),
                output_bytes=sum(out_sizes), largest_output=max(out_sizes, default=0))


def _merge_isolated(outputs: Sequence[str], files: Sequence[str], groups: Sequence[tuple[int, int]],
                    index_for: Callable[[int], Any], progress: bool, store: SentenceStore | None) -> None:
    """:func:`merge_chunks` in a child process (HDF5 crashes its process when a write fails): a failure is a
    :class:`WriteFailed` naming the output; the chunk files stay for a rerun."""
    if store is not None:
        store.flush()
    needed = sum(os.path.getsize(f) for f in files if os.path.exists(f))

    def merge() -> None:
        if store is not None:
            store.reopen()  # SQLite connections must not cross fork
        merge_chunks(outputs, files, groups, index_for, progress=progress)

    def cleanup(pid: int) -> None:
        for out in outputs:
            try:
                os.remove(f"{out}.tmp-{pid}")
            except OSError:
                pass

    run_isolated(merge, path=outputs[0] if len(outputs) == 1 else os.path.dirname(outputs[0]), needed=needed,
                 cleanup=cleanup)


def _embed_block(embedder: Any, plan: InputPlan, lo: int, hi: int, work: str, *, model_hash: str, backend: str,
                 output_format: str, batch_size: int, stateful: bool, use_sentence_keys: bool, progress: bool,
                 input_path: str, writer: ChunkWriterProcess | None = None) -> tuple[int, int, int]:
    """Embed chunks ``[lo, hi)`` (reusing matching chunk files); (reused, embedded, tokens embedded)."""
    from tqdm import tqdm
    chunks = plan.chunks[lo:hi]
    comps, prev = [], None
    for c in chunks:
        comp = chunk_components(input_sha=c.sha256, first_line=c.first_line, n_lines=c.n_lines, model=model_hash,
                                backend=backend, output_format=output_format, sentence_keys=use_sentence_keys,
                                stateful=stateful, batch_size=batch_size, previous=prev)
        comps.append(comp)
        prev = fingerprint_of(comp)
    # the longest prefix (stateful) / the set (stateless) of chunks that can be kept
    keep: list[bool] = []
    states: list[Any] = []
    for c, comp in zip(chunks, comps):
        path = chunk_path(work, c.index)
        if not os.path.exists(path):
            keep.append(False)
            states.append(None)
            continue
        stored, state = read_chunk_record(path)
        why = why_stale(stored, comp)
        if why is None and stateful and state is None and _can_save_state(embedder):
            why = "it has no saved LSTM state"
        if why:
            logger.info("chunk %d (lines %d-%d): recomputing: %s", c.index, c.first_line + 1,
                        c.first_line + c.n_lines, why)
            os.remove(path)
        keep.append(why is None)
        states.append(state)
    if stateful:
        # resume after the last kept chunk of the leading run of kept chunks; later ones are recomputed
        # (their state chain would otherwise need every earlier chunk)
        first_missing = next((k for k, ok in enumerate(keep) if not ok), len(keep))
        if first_missing > 0 and states[first_missing - 1] is None and first_missing < len(keep):
            logger.info("chunks %d-%d: the model's carried state cannot be restored; recomputing from chunk %d",
                        lo, hi - 1, lo)
            first_missing = 0
        for k in range(first_missing, len(keep)):
            keep[k] = False
        embedder.reset_states()
        if first_missing > 0 and first_missing < len(keep):
            _restore_state(embedder, states[first_missing - 1])
    bar = tqdm(total=sum(c.n_tokens for c in chunks), unit="tok", unit_scale=True, disable=not progress,
               desc="embedding")
    reused = embedded = tokens = 0
    for c, comp, ok in zip(chunks, comps, keep):
        if ok:
            reused += 1
            bar.update(c.n_tokens)
            continue
        lines = read_chunk(input_path, c)
        split = [s.split() for s in lines]
        keys = lines if use_sentence_keys else [str(c.first_line + j) for j in range(len(lines))]
        with ChunkFile(chunk_path(work, c.index), comp, writer=writer) as out:
            for rows in chunk_batches([len(s) for s in split], batch_size, stateful):
                results = embedder.embed_batch([split[j] for j in rows])
                raise_if_interrupted()  # a SIGTERM/SIGINT whose exception Python swallowed stops here
                thread_tick()  # automatic thread count follows the machine's load (elmo_fast.runtime)
                bad = [c.first_line + j + 1 for j, emb in zip(rows, results) if not np.isfinite(emb).all()]
                if bad:
                    raise UserError(f"{input_path}: the embeddings of {line_list(sorted(bad))} contain NaN or Inf: "
                                    f"the model's weights or options produce non-finite values")
                for j, emb in zip(rows, results):
                    out.write(keys[j], format_payload(emb, output_format))
                bar.update(sum(len(split[j]) for j in rows))
            if stateful:
                out.write_state(_saved_state(embedder))
        embedded += 1
        tokens += c.n_tokens
    bar.close()
    if reused:
        logger.info("reused %d of %d completed chunks from %s", reused, len(chunks), work)
    return reused, embedded, tokens


def _slots(embedder: Any) -> Any:
    module = getattr(embedder, "elmo_bilm", embedder)
    return getattr(module, "states", None)


def _can_save_state(embedder: Any) -> bool:
    slots = _slots(embedder)
    return slots is not None and hasattr(slots, "h") and hasattr(slots, "c")


def _saved_state(embedder: Any) -> tuple[np.ndarray, np.ndarray] | None:
    slots = _slots(embedder)
    if slots is None or getattr(slots, "h", None) is None or getattr(slots, "c", None) is None:
        return None
    return slots.h.detach().cpu().numpy(), slots.c.detach().cpu().numpy()


def _restore_state(embedder: Any, state: tuple[np.ndarray, np.ndarray] | None) -> None:
    slots = _slots(embedder)
    if state is None or slots is None:
        return
    import torch
    module = getattr(embedder, "elmo_bilm", embedder)
    device = next(module.parameters()).device if any(True for _ in module.parameters()) else torch.device("cpu")
    slots.h = torch.from_numpy(np.ascontiguousarray(state[0])).to(device)
    slots.c = torch.from_numpy(np.ascontiguousarray(state[1])).to(device)
