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

from .chars import batch_to_ids
from .nn.bilm import BiLM, remove_sentence_boundaries

__all__ = ["ElmoEmbedder", "InputFileError", "read_sentences", "OUTPUT_FORMATS"]

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


class ElmoEmbedder:
    """Drop-in for AllenNLP's ``ElmoEmbedder``: the three biLM layers per token, as numpy arrays.

    Args:
        options_file, weight_file: the ELMo files (options.json, bilm-tf weights.hdf5).
        cuda_device: -1 for CPU, else the CUDA device index.
        stateful: carry LSTM states across batches (AllenNLP's behaviour). ``False`` makes each batch
            independent of earlier calls (not bit-compatible with AllenNLP).
        batch_size: default batch size of :meth:`embed_sentences` and :meth:`embed_file`.
        backend: ``reference`` | ``fast`` | ``triton`` (default: by device, see :mod:`elmo_fast.backend`).
    """

    def __init__(self, options_file: str | os.PathLike, weight_file: str | os.PathLike, cuda_device: int = -1,
                 *, stateful: bool = True, batch_size: int = 64, backend: str | None = None) -> None:
        self.device = torch.device("cpu") if cuda_device < 0 else torch.device("cuda", cuda_device)
        self.elmo_bilm = BiLM.from_files(options_file, weight_file, stateful=stateful, backend=backend)
        self.elmo_bilm.to(self.device).eval()
        self.batch_size = batch_size
        self.output_dim = self.elmo_bilm.options.output_dim
        self.num_layers = self.elmo_bilm.options.lstm.n_layers + 1

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

    def embed_sentences(self, sentences: Iterable[Sequence[str]], batch_size: int | None = None) -> Iterator[np.ndarray]:
        """Yield one ``(3, n, 2P)`` array per sentence, in input order, batching consecutive sentences."""
        batch_size = batch_size or self.batch_size
        batch: list[Sequence[str]] = []
        for sentence in sentences:
            batch.append(sentence)
            if len(batch) == batch_size:
                yield from self.embed_batch(batch)
                batch = []
        if batch:
            yield from self.embed_batch(batch)

    def embed_file(self, input_file: str | os.PathLike | IO, output_file_path: str | os.PathLike,
                   output_format: str = "all", batch_size: int | None = None, forget_sentences: bool = False,
                   use_sentence_keys: bool = False, progress: bool = True) -> None:
        """Embed a file of whitespace-tokenized sentences (one per line) into an hdf5 file.

        Layout (AllenNLP's ``elmo`` command): one float32 dataset per line keyed by its 0-based line index
        (or the sentence text with ``use_sentence_keys``); payload ``(3, n, 2P)`` for ``all``, ``(n, 2P)``
        for ``top`` (last layer) and ``average`` (mean of the layers). Unless ``forget_sentences`` or
        ``use_sentence_keys``, dataset ``sentence_to_index`` (1,) holds a JSON object {sentence: key}.
        The file is written to a temporary name and renamed when complete.
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
        tmp = f"{output_file_path}.tmp-{os.getpid()}"
        total_tokens = sum(len(s) for s in split)
        try:
            from tqdm import tqdm
            bar = tqdm(total=total_tokens, unit="tok", unit_scale=True, disable=not progress, desc="embedding")
            start, done = time.perf_counter(), 0
            with h5py.File(tmp, "w") as fout:
                for key, tokens, emb in zip(keys, split, self.embed_sentences(split, batch_size)):
                    if output_format == "all":
                        payload = emb
                    elif output_format == "top":
                        payload = emb[-1]
                    else:
                        payload = np.average(emb, axis=0)
                    fout.create_dataset(key, payload.shape, dtype="float32", data=payload)
                    bar.update(len(tokens))
                    done += len(tokens)
                if not forget_sentences and not use_sentence_keys:
                    index = {s: k for s, k in zip(sentences, keys)}
                    ds = fout.create_dataset("sentence_to_index", (1,), dtype=h5py.special_dtype(vlen=str))
                    ds[0] = json.dumps(index)
            bar.close()
            os.replace(tmp, output_file_path)
            elapsed = time.perf_counter() - start
            logger.info("embedded %d sentences (%d tokens) in %.1fs, %.0f tokens/s -> %s", len(sentences), done,
                        elapsed, done / max(elapsed, 1e-9), output_file_path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
