"""``ElmoEmbedder``: AllenNLP's embedder API (no mixing, no dropout) and the hdf5-writing ``embed_file``."""
from __future__ import annotations

import io
import json
import logging
import os
import time
from typing import IO, Iterable, Iterator, Sequence

import h5py
import numpy as np
import torch

from .atomic import atomic_path
from .chars import batch_to_ids
from .nn.bilm import BiLM, remove_sentence_boundaries

__all__ = ["ElmoEmbedder", "InputFileError", "read_sentences", "length_groups", "rank_share", "merge_parts",
           "OUTPUT_FORMATS"]

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("all", "top", "average")


class InputFileError(ValueError):
    """An input text file has blank lines, undecodable bytes or duplicate keys."""


def _line_list(numbers: Sequence[int], limit: int = 20) -> str:
    shown = ", ".join(str(n) for n in numbers[:limit])
    return shown + (f", ... ({len(numbers)} in all)" if len(numbers) > limit else "")


def read_sentences(source: str | os.PathLike | IO) -> list[str]:
    """Read one sentence per line; each line is ``str.strip()``-ed (as AllenNLP's ``elmo`` command).

    Raises:
        InputFileError: undecodable (non-UTF-8) lines or blank lines, listing their 1-based line numbers.
    """
    name = getattr(source, "name", None) or os.fspath(source)  # type: ignore[arg-type]
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            data = f.read()
    else:
        data = source.read()
    if isinstance(data, bytes):
        bad = []
        for lineno, raw in enumerate(data.split(b"\n"), start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(lineno)
        if bad:
            raise InputFileError(f"{name}: lines {_line_list(bad)} are not valid UTF-8 "
                                 f"(expected UTF-8 text, one sentence per line)")
        text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline=None)
        lines = [line.strip() for line in text]
    else:
        lines = [line.strip() for line in io.StringIO(data, newline=None)]
    blank = [i + 1 for i, line in enumerate(lines) if line == ""]
    if blank:
        raise InputFileError(f"{name}: lines {_line_list(blank)} are blank (expected one sentence per line; "
                             f"remove the blank lines)")
    return lines


def length_groups(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices ``0..n-1`` in batches of ``batch_size`` sentences of similar length.

    Sentences are ordered by length (ties keep input order) and cut into consecutive chunks, so each batch
    pads little and its rows stay busy for about the same number of LSTM steps. Every index appears once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, found {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def rank_share(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous block ``[lo, hi)`` of ``n`` lines that process ``rank`` of ``world`` embeds."""
    if not 0 <= rank < world:
        raise ValueError(f"rank: expected 0 <= rank < world ({world}), found {rank}")
    return n * rank // world, n * (rank + 1) // world


def _distributed_env() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment variables; (0, 1) outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return (rank, world) if world > 1 else (0, 1)


def _part_path(output: str, rank: int, world: int) -> str:
    return f"{output}.part-{rank:05d}-of-{world:05d}"


class ElmoEmbedder:
    """Drop-in for AllenNLP's ``ElmoEmbedder``: the three biLM layers per token, as numpy arrays.

    Args:
        options_file, weight_file: the ELMo files (options.json, bilm-tf weights.hdf5).
        cuda_device: -1 for CPU, else the CUDA device index.
        stateful: carry LSTM states across batches (AllenNLP's behaviour). ``False`` makes each batch
            independent of earlier calls (not bit-compatible with AllenNLP).
        batch_size: default batch size of :meth:`embed_sentences` and :meth:`embed_file`.
        backend: ``reference`` | ``fast`` | ``triton`` (default: by device, see :mod:`elmo_fast.backend`).

    Batching: with ``stateful=False`` :meth:`embed_sentences` and :meth:`embed_file` batch sentences of
    similar length together (outputs still come in input order); a sentence's result does not depend on its
    batch then. With ``stateful=True`` the order in which sentences meet the carried state is part of the
    result, so batches are consecutive input sentences, exactly as AllenNLP's ``elmo`` command.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) with a CUDA device, each process uses GPU ``LOCAL_RANK``.
    """

    def __init__(self, options_file: str | os.PathLike, weight_file: str | os.PathLike, cuda_device: int = -1,
                 *, stateful: bool = True, batch_size: int = 64, backend: str | None = None) -> None:
        if cuda_device >= 0 and _distributed_env()[1] > 1 and "LOCAL_RANK" in os.environ:
            cuda_device = int(os.environ["LOCAL_RANK"])  # one GPU per rank
        self.device = torch.device("cpu") if cuda_device < 0 else torch.device("cuda", cuda_device)
        self.elmo_bilm = BiLM.from_files(options_file, weight_file, stateful=stateful, backend=backend)
        self.elmo_bilm.to(self.device).eval()
        self.batch_size = batch_size
        self.output_dim = self.elmo_bilm.options.output_dim
        self.num_layers = self.elmo_bilm.options.lstm.n_layers + 1

    @property
    def stateful(self) -> bool:
        """Whether LSTM states are carried across batches (the biLM's setting)."""
        return self.elmo_bilm.stateful

    def reset_states(self) -> None:
        """Forget the carried LSTM states."""
        self.elmo_bilm.reset_states()

    def empty_embedding(self) -> np.ndarray:
        """Zeros ``(3, 0, 2P)`` for an empty sentence."""
        return np.zeros((self.num_layers, 0, self.output_dim), dtype=np.float32)

    @torch.no_grad()
    def batch_to_embeddings(self, batch: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenized sentences -> (activations ``(B, 3, T, 2P)``, mask ``(B, T)``)."""
        char_ids = batch_to_ids(batch).to(self.device)
        out = self.elmo_bilm(char_ids)
        mask_bos = out["mask"]
        layers = [remove_sentence_boundaries(layer, mask_bos)[0] for layer in out["activations"]]
        _, mask = remove_sentence_boundaries(mask_bos.unsqueeze(-1), mask_bos)
        return torch.stack(layers, dim=1), mask

    def embed_sentence(self, sentence: Sequence[str]) -> np.ndarray:
        """One tokenized sentence -> ``(3, n, 2P)`` float32."""
        return self.embed_batch([sentence])[0]

    def embed_batch(self, batch: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Tokenized sentences -> one ``(3, n_i, 2P)`` float32 array each (empty -> ``(3, 0, 2P)``)."""
        batch = [list(s) for s in batch]
        if batch == [[]]:  # as AllenNLP: a lone empty sentence does not run the model (states untouched)
            return [self.empty_embedding()]
        embeddings, mask = self.batch_to_embeddings(batch)
        lengths = mask.sum(dim=1).tolist()
        out = []
        for i, n in enumerate(lengths):
            out.append(embeddings[i, :, :n].cpu().numpy() if n else self.empty_embedding())
        return out

    def embed_sentences(self, sentences: Iterable[Sequence[str]], batch_size: int | None = None,
                        window: int | None = None) -> Iterator[np.ndarray]:
        """Yield one ``(3, n, 2P)`` array per sentence, in input order.

        Stateful: batches of consecutive sentences (AllenNLP). Stateless: sentences are read in windows of
        ``window`` sentences (default ``16 * batch_size``; ``0`` = the whole input) and batched by length
        within each window (:func:`length_groups`); a window's results are held until they can be yielded
        in order, so ``window`` bounds the memory used.
        """
        batch_size = batch_size or self.batch_size
        if self.stateful:
            batch: list[Sequence[str]] = []
            for sentence in sentences:
                batch.append(sentence)
                if len(batch) == batch_size:
                    yield from self.embed_batch(batch)
                    batch = []
            if batch:
                yield from self.embed_batch(batch)
            return
        window = 16 * batch_size if window is None else window
        buffer: list[Sequence[str]] = []
        for sentence in sentences:
            buffer.append(sentence)
            if window > 0 and len(buffer) >= window:
                yield from self._embed_grouped(buffer, batch_size)
                buffer = []
        if buffer:
            yield from self._embed_grouped(buffer, batch_size)

    def _embed_grouped(self, sentences: Sequence[Sequence[str]], batch_size: int) -> list[np.ndarray]:
        """Stateless: embed ``sentences`` in length-grouped batches; results in input order."""
        out: list[np.ndarray | None] = [None] * len(sentences)
        for idx, emb in self._iter_grouped(sentences, batch_size):
            out[idx] = emb
        return out  # type: ignore[return-value]

    def _iter_grouped(self, sentences: Sequence[Sequence[str]], batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """Stateless: ``(input index, embedding)`` in processing order (length-grouped batches)."""
        nonempty = [i for i, s in enumerate(sentences) if len(s)]
        for i, s in enumerate(sentences):
            if not len(s):  # empty sentences need no model run
                yield i, self.empty_embedding()
        for group in length_groups([len(sentences[i]) for i in nonempty], batch_size):
            idx = [nonempty[g] for g in group]
            for i, emb in zip(idx, self.embed_batch([sentences[i] for i in idx])):
                yield i, emb

    def embed_file(self, input_file: str | os.PathLike | IO, output_file_path: str | os.PathLike,
                   output_format: str = "all", batch_size: int | None = None, forget_sentences: bool = False,
                   use_sentence_keys: bool = False, progress: bool = True, distributed: bool | None = None) -> None:
        """Embed a file of whitespace-tokenized sentences (one per line) into an hdf5 file.

        Layout (AllenNLP's ``elmo`` command): one float32 dataset per line keyed by its 0-based line index
        (or the sentence text with ``use_sentence_keys``); payload ``(3, n, 2P)`` for ``all``, ``(n, 2P)``
        for ``top`` (last layer) and ``average`` (mean of the layers). Unless ``forget_sentences`` or
        ``use_sentence_keys``, dataset ``sentence_to_index`` (1,) holds a JSON object {sentence: key}.
        The file is written to a temporary name and renamed when complete.

        Stateless embedders batch sentences of similar length across the whole file; stateful ones batch
        consecutive lines (the carried state sees the sentences in input order, as AllenNLP's command).

        Several processes (``torchrun --nproc_per_node N``; ``distributed=None`` detects ``WORLD_SIZE``):
        rank r embeds the r-th contiguous block of lines (:func:`rank_share`) into
        ``OUTPUT.part-r-of-N`` (written atomically; a part that already exists is kept, so a rerun after an
        interruption only redoes missing parts); rank 0 then merges the parts into ``OUTPUT`` (atomically)
        with the same keys as a single-process run and deletes them. Stateless results equal a
        single-process run; stateful ones differ where a rank starts (it starts from zero state).
        """
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format: expected one of {OUTPUT_FORMATS}, found {output_format!r}")
        name = getattr(input_file, "name", None) or os.fspath(input_file)  # type: ignore[arg-type]
        sentences = read_sentences(input_file)
        split = [s.split() for s in sentences]
        if use_sentence_keys:
            logger.warning("using sentences as keys: keys are the sentence texts")
            seen: dict[str, int] = {}
            for i, s in enumerate(sentences):
                if "/" in s or s == ".":
                    raise InputFileError(f"{name}: line {i + 1}: sentence {s!r} cannot be an hdf5 key "
                                         f"('/' or a lone '.'); run without --use-sentence-keys")
                if s in seen:
                    raise InputFileError(f"{name}: line {i + 1} repeats line {seen[s] + 1}; duplicate sentences "
                                         f"cannot be keys (run without --use-sentence-keys)")
                seen[s] = i
        keys = sentences if use_sentence_keys else [str(i) for i in range(len(sentences))]
        output_file_path = os.fspath(output_file_path)
        batch_size = batch_size or self.batch_size
        rank, world = _distributed_env() if distributed is None or distributed else (0, 1)
        if world > 1:
            self._embed_file_distributed(split, keys, sentences, output_file_path, output_format, batch_size,
                                         forget_sentences, use_sentence_keys, progress, rank, world)
            return
        self._write_embeddings(split, keys, range(len(split)), output_file_path, output_format, batch_size,
                               progress, index=None if forget_sentences or use_sentence_keys else sentences)

    # ------------------------------------------------------------------ hdf5 writing
    def _write_embeddings(self, split: Sequence[Sequence[str]], keys: Sequence[str], lines: range, path: str,
                          output_format: str, batch_size: int, progress: bool,
                          index: Sequence[str] | None) -> None:
        """Embed ``split[lines]`` into ``path`` (temporary name, renamed when complete).

        Stateless: length-grouped batches over all of ``lines``, each result written as soon as it exists.
        Stateful: consecutive batches in input order. ``index``: sentences for ``sentence_to_index``.
        """
        selected = [split[i] for i in lines]
        total_tokens = sum(len(s) for s in selected)
        from tqdm import tqdm
        bar = tqdm(total=total_tokens, unit="tok", unit_scale=True, disable=not progress, desc="embedding")
        start, done = time.perf_counter(), 0
        with atomic_path(path) as tmp:
            with h5py.File(tmp, "w") as fout:
                if self.stateful:
                    results: Iterable[tuple[int, np.ndarray]] = enumerate(self.embed_sentences(selected, batch_size))
                else:
                    results = self._iter_grouped(selected, batch_size)
                for j, emb in results:
                    if output_format == "all":
                        payload = emb
                    elif output_format == "top":
                        payload = emb[-1]
                    else:
                        payload = np.average(emb, axis=0)
                    fout.create_dataset(keys[lines[j]], payload.shape, dtype="float32", data=payload)
                    bar.update(len(selected[j]))
                    done += len(selected[j])
                if index is not None:
                    _write_sentence_index(fout, index, keys)
        bar.close()
        elapsed = time.perf_counter() - start
        logger.info("embedded %d sentences (%d tokens) in %.1fs, %.0f tokens/s -> %s", len(selected), done,
                    elapsed, done / max(elapsed, 1e-9), path)

    def _embed_file_distributed(self, split: Sequence[Sequence[str]], keys: Sequence[str], sentences: Sequence[str],
                                output: str, output_format: str, batch_size: int, forget_sentences: bool,
                                use_sentence_keys: bool, progress: bool, rank: int, world: int) -> None:
        """One rank's share of :meth:`embed_file` under torchrun, then rank 0 merges (see there)."""
        import torch.distributed as dist
        created = False
        if not dist.is_initialized():
            dist.init_process_group(backend="gloo")
            created = True
        try:
            self.embed_file_part(split, keys, output, output_format, batch_size, progress and rank == 0, rank, world)
            dist.barrier()
            if rank == 0:
                merge_parts(output, world, None if forget_sentences or use_sentence_keys else sentences, keys)
            dist.barrier()
        finally:
            if created:
                dist.destroy_process_group()

    def embed_file_part(self, split: Sequence[Sequence[str]], keys: Sequence[str], output: str, output_format: str,
                        batch_size: int, progress: bool, rank: int, world: int) -> str:
        """Embed rank ``rank``'s block of lines into its part file (skipped if the part exists); its path."""
        part = _part_path(output, rank, world)
        if os.path.exists(part):
            logger.info("rank %d: keeping existing part %s", rank, part)
            return part
        lo, hi = rank_share(len(split), rank, world)
        self._write_embeddings(split, keys, range(lo, hi), part, output_format, batch_size, progress, index=None)
        return part


def _write_sentence_index(fout: h5py.File, index: Sequence[str], keys: Sequence[str]) -> None:
    """Dataset ``sentence_to_index`` (1,): a JSON object {sentence text: key} (AllenNLP's layout; for a repeated
    sentence the last line's key wins, as in AllenNLP)."""
    mapping = {s: keys[i] for i, s in enumerate(index)}
    ds = fout.create_dataset("sentence_to_index", (1,), dtype=h5py.special_dtype(vlen=str))
    ds[0] = json.dumps(mapping)


def merge_parts(output: str, world: int, index: Sequence[str] | None, keys: Sequence[str]) -> None:
    """Merge ``OUTPUT.part-r-of-N`` (r < ``world``) into ``output`` atomically, add ``sentence_to_index``
    when ``index`` is given, and delete the parts. Raises if a part or a key is missing."""
    parts = [_part_path(output, r, world) for r in range(world)]
    missing = [p for p in parts if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"{output}: parts {missing} are missing (did every rank finish?)")
    with atomic_path(output) as tmp, h5py.File(tmp, "w") as fout:
        for part in parts:
            with h5py.File(part, "r") as fin:
                for key in fin:
                    fin.copy(fin[key], fout, name=key)
        absent = [k for k in keys if k not in fout]
        if absent:
            raise KeyError(f"{output}: merged parts lack {len(absent)} keys, e.g. {absent[:5]}")
        if index is not None:
            _write_sentence_index(fout, index, keys)
    for part in parts:
        os.remove(part)
