"""``ElmoEmbedder``: AllenNLP's embedder API (no mixing, no dropout), a thin face over the model and over the
streaming, resumable hdf5 pipeline of :mod:`elmo_fast.embedding` (``embed_file``)."""
from __future__ import annotations

import os
import threading
from typing import IO, Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from .chars import as_token_lists, batch_to_ids
from .embedding import (DEFAULT_CHUNK_LINES, OUTPUT_FORMATS, InputFileError, length_groups, rank_share,
                        read_sentences)
from . import hub, numerics, settings
from .errors import UserError
from .validation import positive_int
from .nn.bilm import BiLM, remove_sentence_boundaries

__all__ = ["ElmoEmbedder", "InputFileError", "read_sentences", "length_groups", "rank_share", "OUTPUT_FORMATS"]


def _device_for(cuda_device: Any) -> torch.device:
    if isinstance(cuda_device, bool) or not isinstance(cuda_device, (int, np.integer)):
        raise TypeError(f"cuda_device: expected an int (-1 for CPU), found {type(cuda_device).__name__}")
    if cuda_device < 0:
        return torch.device("cpu")
    env = settings.distributed()
    if env.is_distributed and settings.raw("LOCAL_RANK") is not None:
        cuda_device = env.local_rank  # one GPU per rank
    if not torch.cuda.is_available():
        raise UserError(f"cuda_device={cuda_device}: CUDA is not available on this machine (use -1 for CPU)")
    if cuda_device >= torch.cuda.device_count():
        raise UserError(f"cuda_device={cuda_device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", int(cuda_device))


class ElmoEmbedder:
    """Drop-in for AllenNLP's ``ElmoEmbedder``: the three biLM layers per token, as numpy arrays.

    Args:
        options_file, weight_file: the ELMo files (options.json, bilm-tf weights.hdf5): local paths, ``http(s)://``
            URLs or a public model's name (``"original"``, ...), downloaded once into a cache (:mod:`elmo_fast.hub`).
        cuda_device: -1 for CPU, else the CUDA device index (an error when CUDA is absent).
        stateful: carry LSTM states across batches (AllenNLP's behaviour). ``False`` makes each batch
            independent of earlier calls (not bit-compatible with AllenNLP).
        batch_size: default batch size of :meth:`embed_sentences` and :meth:`embed_file` (> 0).
        backend: ``reference`` | ``fast`` | ``triton`` (default: by device, see :mod:`elmo_fast.backend`).
        precision: ``"fp32"`` (default) | ``"bf16"``; order: ``"fast"`` (default) | ``"allennlp"``: the fast
            path's arithmetic (see :mod:`elmo_fast.numerics`). ``"bf16"`` (bfloat16 product inputs, float32
            accumulation, float32 weights/state/outputs; opt-in, about 2x faster products on CPUs with
            ``avx512_bf16``, at ~1e-2 relative error per value, see README "bf16") exists on the fast CPU backend
            only: with ``backend="reference"``, ``"triton"`` or a CUDA device it is a :class:`UserError`
            (those backends always compute in float32).

    Other models: :meth:`from_bilm` wraps any biLM-like module, :meth:`from_pretrained` a model folder.

    Batching: with ``stateful=False`` :meth:`embed_sentences` and :meth:`embed_file` batch sentences of
    similar length together (outputs still come in input order); a sentence's result does not depend on its
    batch then. With ``stateful=True`` the order in which sentences meet the carried state is part of the
    result, so batches are consecutive input sentences, exactly as AllenNLP's ``elmo`` command.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) with a CUDA device, each process uses GPU ``LOCAL_RANK``.

    Threads: an embedder may be shared by threads. A stateful one carries LSTM states from call to call, so
    its calls are serialised by a lock (one batch at a time; batches of different threads then meet the
    carried state in the order they arrive, so give each thread its own embedder for reproducible results);
    stateless calls run concurrently.
    """

    def __init__(self, options_file: str | os.PathLike, weight_file: str | os.PathLike, cuda_device: int = -1,
                 *, stateful: bool = True, batch_size: int = 64, backend: str | None = None,
                 precision: str | None = None, order: str | None = None) -> None:
        self.batch_size = positive_int("batch_size", batch_size)
        device = _device_for(cuda_device)
        numerics.check(precision, order)  # fail before loading
        options_file, weight_file = hub.resolve_files(options_file, weight_file)  # URLs, public names: cached files
        module = BiLM.from_files(options_file, weight_file, stateful=stateful, backend=backend,
                                 precision=precision, order=order)
        self._files = [os.path.abspath(os.fspath(options_file)), os.path.abspath(os.fspath(weight_file))]
        self._setup(module, device)

    def _setup(self, module: torch.nn.Module, device: torch.device) -> None:
        # serialises calls that read and write the carried LSTM states (see the class docstring)
        self._state_lock = threading.RLock()
        self.device = device
        self.elmo_bilm = module
        self._check_precision()
        module.to(device).eval()
        options = getattr(module, "options", None)
        dim = getattr(module, "output_dim", None)
        if dim is None and options is not None:
            dim = options.output_dim
        if dim is None:
            raise TypeError(f"{type(module).__name__}: a biLM-like module needs 'output_dim' or 'options.output_dim'")
        self.output_dim = int(dim)
        lstm = getattr(options, "lstm", None)
        self.num_layers = int(lstm.n_layers) + 1 if lstm is not None else 3

    @classmethod
    def from_bilm(cls, module: torch.nn.Module, *, cuda_device: int = -1, batch_size: int = 64) -> "ElmoEmbedder":
        """Wrap an already-built biLM-like module.

        The module must provide ``forward(*inputs) -> {"activations": [3 x (B, T+2, 2P)], "mask": (B, T+2)}``,
        ``reset_states()``, ``stateful`` and ``output_dim`` (or ``options.output_dim``); optionally
        ``prepare_inputs(sentences) -> Tensor | tuple`` (default :func:`elmo_fast.batch_to_ids`) and
        ``source_files() -> list[str]`` (files hashed for resumable ``embed_file`` runs and never written).
        """
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"module: expected a torch.nn.Module (a biLM-like module), found {type(module).__name__}")
        for attr in ("reset_states", "stateful"):
            if not hasattr(module, attr):
                raise TypeError(f"module: a biLM-like module needs '{attr}' ({type(module).__name__} has none)")
        self = cls.__new__(cls)
        self.batch_size = positive_int("batch_size", batch_size)
        files = module.source_files() if hasattr(module, "source_files") else None
        self._files = [os.path.abspath(os.fspath(f)) for f in files] if files else None
        self._setup(module, _device_for(cuda_device))
        return self

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, cuda_device: int = -1, stateful: bool = True,
                        batch_size: int = 64, backend: str | None = None, precision: str | None = None,
                        order: str | None = None) -> "ElmoEmbedder":
        """A model folder (``options.json`` + ``weights.hdf5``, or an ELMoForManyLangs folder), via
        :func:`elmo_fast.pretrained.load_pretrained`; also the URL of such a folder or a public model's name
        (:mod:`elmo_fast.hub`)."""
        try:
            from .pretrained import load_pretrained  # type: ignore[import-not-found]
        except ImportError as e:
            raise UserError(f"from_pretrained({os.fspath(path)!r}): elmo_fast.pretrained is not available in this "
                            f"installation ({e}); use ElmoEmbedder(options_file, weight_file)") from None
        _device_for(cuda_device)  # fail before loading
        numerics.check(precision, order)
        module = load_pretrained(path, stateful=stateful, backend=backend)
        numerics.configure(module, precision, order)
        return cls.from_bilm(module, cuda_device=cuda_device, batch_size=batch_size)

    # ------------------------------------------------------------------ properties
    @property
    def stateful(self) -> bool:
        """Whether LSTM states are carried across batches (the biLM's setting)."""
        return bool(self.elmo_bilm.stateful)

    def source_files(self) -> list[str] | None:
        """The model's files (never written by ``embed_file``; their contents fingerprint resumable runs)."""
        return list(self._files) if self._files else None

    def numerics(self) -> numerics.Numerics:
        """The arithmetic the model's fast ops use: its own ``precision`` / ``order``, else the current setting
        of :mod:`elmo_fast.numerics` (what the model inherits when it runs)."""
        base = numerics.current()
        precision = getattr(self.elmo_bilm, "precision", None) or base.precision
        order = getattr(self.elmo_bilm, "order", None) or base.order
        return numerics.Numerics(precision, order)

    def _backends(self) -> list[str] | None:
        name = getattr(self.elmo_bilm, "backend_name", None)
        if not callable(name):
            return None
        return [name(self.device, op) for op in ("token_encoder", "bilstm")]

    def _check_precision(self) -> None:
        """bf16 exists on the fast CPU backend only: refuse it, naming the setting, anywhere else."""
        setting = self.numerics()
        if setting.precision != "bf16":
            return
        names = self._backends()
        if names is not None and any(n != "fast" for n in names):
            raise UserError(f"precision='bf16': bfloat16 products exist on the fast CPU backend only; this model "
                            f"runs on backend {'/'.join(names)} (device {self.device}), which always computes in "
                            f"float32. Use backend='fast' on the CPU, or precision='fp32'")

    def backend_label(self) -> str:
        """The backends of the two model ops on this device and, where the fast backend runs, its arithmetic
        (precision and order): part of the resume fingerprint, so chunks made with one arithmetic are never
        reused by a run with another (e.g. ``"fast/fast bf16/fast"``)."""
        names = self._backends()
        if names is None:
            return type(self.elmo_bilm).__name__
        label = "/".join(names)
        if "fast" in names:
            setting = self.numerics()
            label += f" {setting.precision}/{setting.order}"
        return label

    def reset_states(self) -> None:
        """Forget the carried LSTM states."""
        with self._state_lock:
            self.elmo_bilm.reset_states()

    def empty_embedding(self) -> np.ndarray:
        """Zeros ``(3, 0, 2P)`` for an empty sentence."""
        return np.zeros((self.num_layers, 0, self.output_dim), dtype=np.float32)

    # ------------------------------------------------------------------ embedding
    def _inputs(self, batch: list[list[str]]) -> tuple[torch.Tensor, ...]:
        prepare = getattr(self.elmo_bilm, "prepare_inputs", None)
        inputs = prepare(batch) if callable(prepare) else batch_to_ids(batch)
        if isinstance(inputs, torch.Tensor):
            inputs = (inputs,)
        return tuple(x.to(self.device) if isinstance(x, torch.Tensor) else x for x in inputs)

    @torch.no_grad()
    def batch_to_embeddings(self, batch: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenized sentences -> (activations ``(B, 3, T, 2P)``, mask ``(B, T)``).

        Raises:
            TypeError: ``batch`` is not a sequence of token lists (see :func:`elmo_fast.chars.as_token_lists`).
            ValueError: ``batch`` is empty.
        """
        batch = as_token_lists(batch, "batch")
        if not batch:
            raise ValueError("batch: expected at least one sentence, found an empty batch")
        inputs = self._inputs(batch)
        if self.stateful:  # the carried states are read and replaced by this call: one thread at a time
            with self._state_lock:
                out = self.elmo_bilm(*inputs)
        else:
            out = self.elmo_bilm(*inputs)
        mask_bos = out["mask"]
        layers = [remove_sentence_boundaries(layer, mask_bos)[0] for layer in out["activations"]]
        _, mask = remove_sentence_boundaries(mask_bos.unsqueeze(-1), mask_bos)
        return torch.stack(layers, dim=1), mask

    def embed_sentence(self, sentence: Sequence[str]) -> np.ndarray:
        """One tokenized sentence (a list of str tokens; a plain str is a TypeError) -> ``(3, n, 2P)`` float32."""
        if isinstance(sentence, (str, bytes)):
            raise TypeError(f"sentence: expected a list of str tokens, found a {type(sentence).__name__} "
                            f"({sentence[:40]!r}); tokenize it first, e.g. embed_sentence(text.split())")
        return self.embed_batch([sentence])[0]

    def embed_batch(self, batch: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Tokenized sentences -> one ``(3, n_i, 2P)`` float32 array each (empty sentence -> ``(3, 0, 2P)``;
        empty batch -> ``[]``)."""
        batch = as_token_lists(batch, "batch")
        if not batch:
            return []
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
        """Yield one ``(3, n, 2P)`` array per sentence, in input order (``sentences`` is read lazily).

        Stateful: batches of consecutive sentences (AllenNLP). Stateless: sentences are read in windows of
        ``window`` sentences (default ``16 * batch_size``; ``0`` = the whole input) and batched by length
        within each window (:func:`length_groups`); a window's results are held until they can be yielded
        in order, so ``window`` bounds the memory used.
        """
        batch_size = self.batch_size if batch_size is None else positive_int("batch_size", batch_size)
        if isinstance(sentences, (str, bytes)):
            raise TypeError("sentences: expected an iterable of token lists, found a str; "
                            "tokenize first, e.g. [line.split() for line in lines]")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 0):
            raise ValueError(f"window: expected an integer >= 0, found {window!r}")
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
        sentences = as_token_lists(sentences, "sentences")
        out: list[np.ndarray | None] = [None] * len(sentences)
        nonempty = [i for i, s in enumerate(sentences) if s]
        for i, s in enumerate(sentences):
            if not s:  # empty sentences need no model run
                out[i] = self.empty_embedding()
        for group in length_groups([len(sentences[i]) for i in nonempty], batch_size):
            idx = [nonempty[g] for g in group]
            for i, emb in zip(idx, self.embed_batch([sentences[i] for i in idx])):
                out[i] = emb
        return out  # type: ignore[return-value]

    def embed_file(self, input_file: str | os.PathLike | IO, output_file_path: str | os.PathLike,
                   output_format: str = "all", batch_size: int | None = None, forget_sentences: bool = False,
                   use_sentence_keys: bool = False, progress: bool = True, distributed: bool | None = None,
                   *, overwrite: bool = False, shards: int = 1, chunk_lines: int = DEFAULT_CHUNK_LINES) -> None:
        """Embed a file of whitespace-tokenized sentences (one per line) into an hdf5 file.

        Layout (AllenNLP's ``elmo`` command): one float32 dataset per line keyed by its 0-based line index
        (or the sentence text with ``use_sentence_keys``); payload ``(3, n, 2P)`` for ``all``, ``(n, 2P)``
        for ``top`` (last layer) and ``average`` (mean of the layers). Unless ``forget_sentences`` or
        ``use_sentence_keys``, dataset ``sentence_to_index`` (1,) holds a JSON object {sentence: key} (for a
        repeated sentence the last line's key, as AllenNLP).

        Runs the pipeline of :func:`elmo_fast.embedding.embed_to_hdf5`: memory does not grow with the input,
        completed chunks of an interrupted run are reused by a rerun (only when input chunk, model files,
        format, key mode, statefulness and, stateful, batch size match), the output appears atomically.
        Differences from AllenNLP: an existing output is refused unless ``overwrite=True``; the output may
        not be the input or a model file; a stateful run starts from zero state (as a fresh embedder), so
        states carried from earlier calls are dropped.

        Stateless embedders batch sentences of similar length within each chunk of ``chunk_lines`` lines;
        stateful ones batch consecutive lines. Under ``torchrun`` (``distributed=None`` detects
        ``WORLD_SIZE``) each process embeds a contiguous block of chunks and rank 0 writes the output;
        stateless results equal a single-process run, stateful ones differ where a block starts (it starts
        from zero state). ``shards`` > 1 writes ``stem-0000i-of-0000N.ext`` files instead of one.
        """
        from .embedding import embed_to_hdf5
        batch_size = self.batch_size if batch_size is None else positive_int("batch_size", batch_size)
        embed_to_hdf5(self, input_file, output_file_path, output_format=output_format, batch_size=batch_size,
                      forget_sentences=forget_sentences, use_sentence_keys=use_sentence_keys, progress=progress,
                      distributed=distributed, overwrite=overwrite, shards=shards, chunk_lines=chunk_lines)
