"""The three steps of an embed run -- scan, embed, merge -- and the protocol between the processes.

:func:`~elmo_fast.embedding.job.embed_to_hdf5` checks the paths, takes the lock of its rank and then calls, on
every rank of a run (one process, or ``torchrun``'s ``WORLD_SIZE`` processes sharing one work folder):

1. :func:`scan_step`: rank 0 validates INPUT and cuts it into chunks; every rank gets the same
   :class:`~elmo_fast.embedding.reader.InputPlan`, or the same input error.
2. :func:`embed_step`: rank ``r`` writes the chunk files of its block of chunks (resumable: a chunk file whose
   fingerprint matches is kept); then every rank learns whether every rank succeeded.
3. :func:`merge_step`: rank 0 copies the chunk files into OUTPUT (or its shards) and publishes it by a rename;
   every rank waits for the merge's outcome.

Every agreement point is reached by every rank even when one of them fails with an ordinary exception (the
failure travels as a message and each rank raises it), so no rank waits forever at a collective. An interrupt
(SIGINT/SIGTERM) skips the agreement: the process group's timeout ends the others. Memory per rank: one chunk of
text plus one batch of activations.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from ..errors import Interrupted, UserError, raise_if_interrupted
from ..runtime import thread_tick
from .batching import chunk_batches
from .checkpoint import chunk_components, fingerprint_of, model_fingerprint, why_stale
from .distributed import broadcast_from_zero, gather_ok, rank_share
from .index import SentenceStore
from .isolated import ChunkWriterProcess, run_isolated
from .reader import Chunk, InputFileError, InputPlan, line_list, read_chunk, scan_input
from .space import check_space_for
from .writer import ChunkFile, chunk_path, format_payload, merge_chunks, read_chunk_record

__all__ = ["RunSpec", "BlockResult", "scan_step", "embed_step", "merge_step"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSpec:
    """One embed run as every step sees it (validated by :func:`~elmo_fast.embedding.job.embed_to_hdf5`).

    Attributes:
        input_path: the text file (absolute; a spooled copy in ``work`` when the caller gave a file object).
        outputs: the hdf5 files to publish (one, or the shards in order; absolute).
        work: the work folder shared by all ranks (chunk files, sentence store, locks).
        output_format / batch_size / stateful / forget_sentences / use_sentence_keys: as the job's arguments.
        chunk_lines: lines per chunk (already a multiple of ``batch_size`` when stateful).
        progress: show progress bars (rank 0 only).
        rank / world: this process and the number of processes.
    """
    input_path: str
    outputs: tuple[str, ...]
    work: str
    output_format: str
    batch_size: int
    stateful: bool
    forget_sentences: bool
    use_sentence_keys: bool
    chunk_lines: int
    progress: bool
    rank: int
    world: int

    @property
    def needs_store(self) -> bool:
        """Whether the scan keeps every line on disk (for ``sentence_to_index`` or the duplicate-key check)."""
        return self.use_sentence_keys or not self.forget_sentences

    @property
    def writes_index(self) -> bool:
        """Whether the outputs get a ``sentence_to_index`` dataset."""
        return not (self.forget_sentences or self.use_sentence_keys)


class BlockResult(NamedTuple):
    """What :func:`embed_step` did on this rank: chunks kept from an earlier run, chunks embedded now, and the
    tokens of the latter."""
    reused: int
    embedded: int
    tokens: int


# ----------------------------------------------------------------------------------------------------- scan
def scan_step(spec: RunSpec) -> tuple[InputPlan, SentenceStore | None]:
    """Validate and chunk INPUT once (rank 0) and give every rank the same plan.

    Inputs: ``spec`` (INPUT, ``chunk_lines``, the key mode, the work folder).
    Outputs: the :class:`InputPlan` (identical on every rank) and, on rank 0 when ``spec.needs_store``, the
    :class:`SentenceStore` holding every line (``sentences.sqlite`` in the work folder; the caller closes it).
    Other ranks get no store.

    Guarantees: every line is validated before any model work (errors name file and line); with sentence keys a
    repeated line is refused. Rank 0 sends its error message instead of a plan, so every rank raises the same
    :class:`InputFileError`; rank 0 closes the store before raising. After the plan is sent, rank 0 removes chunk
    files numbered beyond it (left by a run on a longer input), which no rank reads.
    """
    if spec.rank != 0:
        received = broadcast_from_zero(None, spec.world)
        if isinstance(received, str):
            raise InputFileError(received)
        return received, None
    store: SentenceStore | None = None
    try:
        try:
            if spec.needs_store:
                store = SentenceStore(os.path.join(spec.work, "sentences.sqlite"))
            plan = scan_input(spec.input_path, spec.chunk_lines, sentence_keys=spec.use_sentence_keys,
                              on_line=store.add if store is not None else None, progress=spec.progress)
            if spec.use_sentence_keys and store is not None:
                _refuse_duplicates(store, spec.input_path)
        except Exception as e:
            broadcast_from_zero(f"{e}", spec.world)
            raise
    except BaseException:
        if store is not None:
            store.close()
        raise
    broadcast_from_zero(plan, spec.world)
    _remove_foreign_chunks(spec.work, len(plan.chunks))
    return plan, store


def _refuse_duplicates(store: SentenceStore, input_path: str) -> None:
    """Sentence keys must be unique: name the first repeated lines and the earlier line each repeats."""
    dups, total = store.duplicates()
    if dups:
        pairs = ", ".join(f"line {a} repeats line {b}" for a, b in dups[:5])
        more = f" ({total} repeated lines in all)" if total > 1 else ""
        raise InputFileError(f"{input_path}: {pairs}{more}; duplicate sentences cannot be keys "
                             f"(run without --use-sentence-keys)")


def _remove_foreign_chunks(work: str, n_chunks: int) -> None:
    """Remove chunk files beyond this run's plan (left by a run on a longer input)."""
    for name in os.listdir(work):
        if name.startswith("chunk-") and name.endswith(".h5"):
            try:
                index = int(name[6:-3])
            except ValueError:
                continue
            if index >= n_chunks:
                os.remove(os.path.join(work, name))
                logger.info("removed %s: not part of this run (the input now has %d chunks)", name, n_chunks)


# ---------------------------------------------------------------------------------------------------- embed
def embed_step(spec: RunSpec, plan: InputPlan, load_model: Callable[[], Any],
               model_files: Sequence[str] | None) -> BlockResult:
    """Write the chunk files of this rank's block of chunks, then agree with the other ranks on the outcome.

    Inputs: ``spec``; the ``plan`` of :func:`scan_step`; ``load_model`` returns the embedder (``embed_batch``,
    ``stateful``, ``reset_states``; called here, after the scan); ``model_files`` are hashed into the chunk
    fingerprints (None: the embedder's ``source_files()``, else its parameters are hashed).
    Outputs: a :class:`BlockResult` for this rank's block ``rank_share(len(plan.chunks), rank, world)``.

    Guarantees:

    * Resumable chunks: each chunk file ``work/chunk-NNNNNN.h5`` is written under a temporary name in a child
      process (:class:`~elmo_fast.embedding.isolated.ChunkWriterProcess`) and renamed when complete, with its
      fingerprint (:mod:`.checkpoint`) as an attribute. An existing chunk file is kept only if its fingerprint
      matches (stateful: only the leading run of matching chunks, continued from the last one's saved state);
      others are removed and recomputed, and the log says why.
    * Rank 0 checks the disk space for the whole run (:func:`~elmo_fast.embedding.space.check_space_for`)
      before the first chunk is embedded.
    * Non-finite embeddings are an error naming the input lines; no chunk file holds them.
    * On return every rank has succeeded. A rank's ordinary exception is sent to all before it is raised, and
      the other ranks raise it as a :class:`UserError`, so none is left waiting at the next step.
    """
    writer = ChunkWriterProcess()
    try:
        try:
            embedder = load_model()
            if model_files is None and hasattr(embedder, "source_files"):
                model_files = embedder.source_files()
            model_hash = model_fingerprint(model_files, getattr(embedder, "elmo_bilm", embedder)
                                           if not model_files else None)
            lo, hi = rank_share(len(plan.chunks), spec.rank, spec.world)
            if spec.rank == 0:
                check_space_for(plan, embedder, spec.output_format, spec.outputs, spec.work,
                                os.path.dirname(spec.outputs[0]), spec.writes_index)
            result = _embed_block(embedder, spec, plan.chunks[lo:hi], model_hash, _backend_label(embedder), writer)
        except Interrupted:
            raise
        except Exception as e:
            if spec.world <= 1:
                raise
            gather_ok(f"rank {spec.rank}: {e}", spec.world)
            raise
    finally:
        writer.shutdown()  # no chunk is written after this step
    _raise_first_failure(gather_ok(None, spec.world))
    return result


def _raise_first_failure(statuses: Sequence[str | None]) -> None:
    failed = [s for s in statuses if s]
    if failed:
        raise UserError(failed[0])


def _backend_label(embedder: Any) -> str:
    fn = getattr(embedder, "backend_label", None)
    return str(fn()) if callable(fn) else "unknown"


def _embed_block(embedder: Any, spec: RunSpec, chunks: Sequence[Chunk], model_hash: str, backend: str,
                 writer: ChunkWriterProcess) -> BlockResult:
    """Embed ``chunks`` (one rank's contiguous block), reusing the chunk files that can be kept."""
    from ..progress import bar as progress_bar
    comps = _chunk_fingerprints(chunks, spec, model_hash, backend)
    keep = _reusable_chunks(embedder, spec, chunks, comps)
    progress = spec.progress and spec.rank == 0
    bar = progress_bar(progress, total=sum(c.n_tokens for c in chunks), unit="tok", unit_scale=True,
                       desc="embedding")
    reused = embedded = tokens = 0
    for c, comp, ok in zip(chunks, comps, keep):
        if ok:
            reused += 1
            bar.update(c.n_tokens)
            continue
        _embed_chunk(embedder, spec, c, comp, writer, bar.update)
        embedded += 1
        tokens += c.n_tokens
    bar.close()
    if reused:
        logger.info("reused %d of %d completed chunks from %s", reused, len(chunks), spec.work)
    return BlockResult(reused, embedded, tokens)


def _chunk_fingerprints(chunks: Sequence[Chunk], spec: RunSpec, model_hash: str,
                        backend: str) -> list[dict[str, Any]]:
    """The fingerprint components of each chunk; stateful, each one includes the previous chunk's fingerprint
    (so a chunk is only as valid as the chain before it within the block)."""
    comps, prev = [], None
    for c in chunks:
        comp = chunk_components(input_sha=c.sha256, first_line=c.first_line, n_lines=c.n_lines, model=model_hash,
                                backend=backend, output_format=spec.output_format,
                                sentence_keys=spec.use_sentence_keys, stateful=spec.stateful,
                                batch_size=spec.batch_size, previous=prev)
        comps.append(comp)
        prev = fingerprint_of(comp)
    return comps


def _reusable_chunks(embedder: Any, spec: RunSpec, chunks: Sequence[Chunk],
                     comps: Sequence[dict[str, Any]]) -> list[bool]:
    """Which chunk files to keep; stale ones are removed (the log says why).

    Stateless: every chunk file with a matching fingerprint. Stateful: the leading run of matching chunks only
    (a later chunk's state chain would need every earlier one), and the embedder is reset and then given the
    saved state of the last kept chunk, so the next chunk continues exactly where a single run would be.
    """
    keep: list[bool] = []
    states: list[Any] = []
    for c, comp in zip(chunks, comps):
        path = chunk_path(spec.work, c.index)
        if not os.path.exists(path):
            keep.append(False)
            states.append(None)
            continue
        stored, state = read_chunk_record(path)
        why = why_stale(stored, comp)
        if why is None and spec.stateful and state is None and _can_save_state(embedder):
            why = "it has no saved LSTM state"
        if why:
            logger.info("chunk %d (lines %d-%d): recomputing: %s", c.index, c.first_line + 1,
                        c.first_line + c.n_lines, why)
            os.remove(path)
        keep.append(why is None)
        states.append(state)
    if spec.stateful:
        first_missing = next((k for k, ok in enumerate(keep) if not ok), len(keep))
        if first_missing > 0 and states[first_missing - 1] is None and first_missing < len(keep):
            lo = chunks[0].index if chunks else 0
            logger.info("chunks %d-%d: the model's carried state cannot be restored; recomputing from chunk %d",
                        lo, lo + len(chunks) - 1, lo)
            first_missing = 0
        for k in range(first_missing, len(keep)):
            keep[k] = False
        embedder.reset_states()
        if 0 < first_missing < len(keep):
            _restore_state(embedder, states[first_missing - 1])
    return keep


def _embed_chunk(embedder: Any, spec: RunSpec, chunk: Chunk, comp: dict[str, Any], writer: ChunkWriterProcess,
                 advance: Callable[[int], Any]) -> None:
    """Read one chunk by byte offset, embed it batch by batch and write its chunk file (atomically; with the
    carried LSTM state at its end when stateful). ``advance(n)`` is called with the tokens of each batch."""
    lines = read_chunk(spec.input_path, chunk)
    split = [s.split() for s in lines]
    keys = lines if spec.use_sentence_keys else [str(chunk.first_line + j) for j in range(len(lines))]
    with ChunkFile(chunk_path(spec.work, chunk.index), comp, writer=writer) as out:
        for rows in chunk_batches([len(s) for s in split], spec.batch_size, spec.stateful):
            results = embedder.embed_batch([split[j] for j in rows])
            raise_if_interrupted()  # a SIGTERM/SIGINT whose exception Python swallowed stops here
            thread_tick()  # automatic thread count follows the machine's load (elmo_fast.runtime)
            bad = [chunk.first_line + j + 1 for j, emb in zip(rows, results) if not np.isfinite(emb).all()]
            if bad:
                raise UserError(f"{spec.input_path}: the embeddings of {line_list(sorted(bad))} contain NaN or Inf: "
                                f"the model's weights or options produce non-finite values")
            for j, emb in zip(rows, results):
                out.write(keys[j], format_payload(emb, spec.output_format))
            advance(sum(len(split[j]) for j in rows))
        if spec.stateful:
            out.write_state(_saved_state(embedder))


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


# ---------------------------------------------------------------------------------------------------- merge
def merge_step(spec: RunSpec, plan: InputPlan, store: SentenceStore | None) -> None:
    """Publish OUTPUT: rank 0 merges every chunk file into the output(s); every rank waits for the outcome.

    Inputs: ``spec``; the ``plan``; rank 0's ``store`` (None on other ranks, or when no index is written).
    Output: none; on return every output exists under its final name.

    Guarantees: output ``i`` holds the chunks ``rank_share(len(plan.chunks), i, len(outputs))`` in input order
    and, when ``spec.writes_index``, a ``sentence_to_index`` of its own lines. Each output is written in a child
    process under ``OUTPUT.tmp-PID`` and renamed into place only when complete, so an existing file is replaced
    whole or not at all; a failed write (full disk, file size limit) is a one-line error and leaves the chunk
    files for a rerun. The chunk files are not removed here (the caller removes the work folder once every rank
    has returned). A merge failure is sent to every rank before rank 0 raises it.
    """
    if spec.rank == 0:
        groups = [rank_share(len(plan.chunks), i, len(spec.outputs)) for i in range(len(spec.outputs))]
        files = [chunk_path(spec.work, c.index) for c in plan.chunks]

        def index_for(i: int) -> Callable[[], Any] | None:
            if not spec.writes_index or store is None:
                return None
            lo_c, hi_c = groups[i]
            first = plan.chunks[lo_c].first_line if hi_c > lo_c else 0
            last = plan.chunks[hi_c - 1].first_line + plan.chunks[hi_c - 1].n_lines if hi_c > lo_c else 0
            return lambda: ((text, str(line)) for text, line in store.index_entries(first, last))
        try:
            _merge_isolated(spec.outputs, files, groups, index_for, spec.progress, store)
        except Exception as e:
            gather_ok(f"rank 0 (merging): {e}", spec.world)
            raise
    _raise_first_failure(gather_ok(None, spec.world))  # every rank waits for the merge


def _merge_isolated(outputs: Sequence[str], files: Sequence[str], groups: Sequence[tuple[int, int]],
                    index_for: Callable[[int], Any], progress: bool, store: SentenceStore | None) -> None:
    """:func:`merge_chunks` in a child process (HDF5 crashes its process when a write fails): a failure is a
    :class:`~elmo_fast.embedding.isolated.WriteFailed` naming the output; the chunk files stay for a rerun."""
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
