"""The downstream ``Elmo`` module (docs/numerics.md#downstream-use) and the biLM it loads from files.

:class:`Elmo` runs a biLM once and mixes its layers with one :class:`~elmo_fast.nn.scalar_mix.ScalarMix` per output
representation. Without ``module=`` it loads a :class:`CachedBiLM`: a :class:`~elmo_fast.nn.bilm.BiLM` that can
also cache the token vectors of a vocabulary (``vocab_to_cache``) and read word ids into it (``word_inputs``).

What ``Elmo`` needs of a module that takes word ids is the :class:`WordInputBiLM` protocol; :class:`CachedBiLM`
satisfies it, and so does every subclass (the AllenNLP-named ``compat`` classes build on it). Nothing here knows
of :mod:`elmo_fast.compat`: the arrow points from ``compat`` to this module only.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from .. import chars, hub, numerics
from ..modes import normal_tensors
from ..options import load_options
from ..weights import read_weights
from .bilm import BiLM, add_sentence_boundaries, remove_sentence_boundaries
from .scalar_mix import ScalarMix
from .token_encoder import CharCNNTokenEncoder

__all__ = ["Elmo", "CachedBiLM", "WordInputBiLM", "check_char_ids", "CACHE_CHUNK"]

logger = logging.getLogger(__name__)

#: token-encoder rows per chunk when caching ``vocab_to_cache``
CACHE_CHUNK = 512


def check_char_ids(inputs: Any, encoder: CharCNNTokenEncoder, name: str = "inputs") -> None:
    """Refuse anything but ``(B, T, L)`` integer char ids with every id in ``[0, n_symbols]``, ``B >= 1``, where
    ``n_symbols`` is the rows of ``encoder``'s character table: :func:`elmo_fast.chars.check_char_ids`."""
    chars.check_char_ids(inputs, encoder.char_embed.shape[0], name)


@runtime_checkable
class WordInputBiLM(Protocol):
    """A biLM module that reads word ids into a cached vocabulary as well as character ids.

    ``module(char_ids (B, T, L), word_ids (B, T) or None)`` returns ``{"activations", "mask"}`` and checks the
    character ids itself; without a cache it ignores ``word_ids`` (AllenNLP's behaviour).
    :class:`Elmo` passes word ids on to such a module, and gives ``vocab_to_cache`` to it.
    """

    def has_word_cache(self) -> bool:
        """Whether a vocabulary is cached (``word_ids`` are then read)."""
        ...

    def create_cached_cnn_embeddings(self, tokens: list[str]) -> None:
        """Compute and keep the token vectors of ``tokens`` (id k = ``tokens[k]``; 0 is padding)."""
        ...


class CachedBiLM(BiLM):
    """A :class:`BiLM` loaded from files, with ``vocab_to_cache`` and ``word_inputs`` (what :class:`Elmo` runs).

    Args:
        options_file, weight_file: the public ELMo files (bilm-tf layout): paths, ``http(s)://`` URLs or a public
            model's name, downloaded once into a cache (:mod:`elmo_fast.hub`).
        requires_grad: whether the biLM's weights (and the cached word vectors) get gradients.
        vocab_to_cache: tokens whose token-encoder output is computed once; ``forward`` may then take
            ``word_inputs`` (ids into this list; id 0 is padding, so put a padding token first).
        stateful: carry LSTM states across calls. backend: see :mod:`elmo_fast.backend`.
        precision, order: the fast path's arithmetic (:mod:`elmo_fast.numerics`), set before the cached
            vectors are computed; None keeps the caller's setting.

    ``forward(inputs (B, T, 50), word_inputs=None)`` returns ``{"activations": [3 x (B, T+2, 2P)], "mask":
    (B, T+2) bool}``. With a cache and ``word_inputs``, the cached vectors are used; if any id is outside the
    cache (negative or >= len(vocab_to_cache)), the whole batch falls back to the character encoder on
    ``inputs`` (AllenNLP's behaviour), so pass both. Without a cache, ``word_inputs`` (of any shape or type) are
    ignored, as in AllenNLP, with one warning per module. Satisfies :class:`WordInputBiLM`.
    """

    def __init__(self, options_file: str | os.PathLike, weight_file: str | os.PathLike, requires_grad: bool = False,
                 vocab_to_cache: list[str] | None = None, *, stateful: bool = True,
                 backend: str | None = None, precision: str | None = None, order: str | None = None) -> None:
        numerics.check(precision, order)  # fail before loading
        options_file, weight_file = hub.resolve_files(options_file, weight_file)
        options = load_options(options_file)
        weights = read_weights(weight_file, options)
        super().__init__(options, stateful=stateful, has_projection="CNN_proj/W_proj" in weights, backend=backend,
                         precision=precision, order=order)
        self.load_bilm_tf_weights(weights)
        del weights
        self.requires_grad_(requires_grad)
        self._requires_grad = requires_grad
        self.num_layers = options.lstm.n_layers + 1
        self._word_embedding: nn.Embedding | None = None
        self.register_buffer("_bos_embedding", None, persistent=False)
        self.register_buffer("_eos_embedding", None, persistent=False)
        if requires_grad and vocab_to_cache:
            logger.warning("fine-tuning ELMo with vocab_to_cache: the cached word vectors are trained separately "
                           "from the character encoder (as in AllenNLP)")
        if vocab_to_cache:
            self.create_cached_cnn_embeddings(vocab_to_cache)

    def get_output_dim(self) -> int:
        return 2 * self.options.lstm.projection_dim

    def has_word_cache(self) -> bool:
        """Whether ``vocab_to_cache`` vectors are held (``word_inputs`` are then read)."""
        return self._word_embedding is not None

    def create_cached_cnn_embeddings(self, tokens: list[str]) -> None:
        """Token-encoder output of every token of ``tokens`` (and of BOS/EOS), computed once: ``(V, P)``."""
        from ..chars import batch_to_ids

        if not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) for t in tokens):
            raise TypeError("vocab_to_cache: expected a list of token strings")
        if not tokens:
            raise ValueError("vocab_to_cache: the list is empty")
        device = self.bos_ids.device
        with torch.no_grad(), normal_tensors():  # kept across calls: usable after leaving torch.inference_mode()
            chunks = [self.encode_tokens(batch_to_ids([[t] for t in tokens[k:k + CACHE_CHUNK]]).to(device))[:, 0]
                      for k in range(0, len(tokens), CACHE_CHUNK)]
            markers = self.encode_tokens(torch.stack([self.bos_ids, self.eos_ids]))
            table = torch.cat(chunks)
            bos, eos = markers[0].clone(), markers[1].clone()
        self._word_embedding = nn.Embedding.from_pretrained(table, freeze=not self._requires_grad, padding_idx=0)
        self._bos_embedding, self._eos_embedding = bos, eos

    def _cache_covers(self, word_inputs: torch.Tensor) -> bool:
        if self._word_embedding is None or word_inputs.numel() == 0:
            return self._word_embedding is not None
        lo, hi = int(word_inputs.min()), int(word_inputs.max())
        if lo < 0 or hi >= self._word_embedding.num_embeddings:
            logger.debug("word ids in [%d, %d] outside the cache of %d words: the character encoder runs",
                         lo, hi, self._word_embedding.num_embeddings)
            return False
        return True

    def forward(self, inputs: torch.Tensor, word_inputs: torch.Tensor | None = None) -> dict[str, Any]:
        """See the class docstring. ``inputs`` ``(B, T, 50)``; ``word_inputs`` ``(B, T)`` ids into the cache."""
        if word_inputs is not None and self._word_embedding is None:
            # AllenNLP reads word_inputs only with a cache (its own tests pass the character ids there)
            if not self.__dict__.get("_warned_word_inputs"):
                self.__dict__["_warned_word_inputs"] = True
                logger.warning("word_inputs were given to an %s without vocab_to_cache: they are ignored "
                               "(as in AllenNLP) and the character ids are used", type(self).__name__)
            word_inputs = None
        if word_inputs is not None:
            if not isinstance(word_inputs, torch.Tensor) or word_inputs.dtype.is_floating_point \
                    or word_inputs.dtype == torch.bool:
                raise TypeError("word_inputs: expected an integer tensor of ids into vocab_to_cache")
            if word_inputs.dim() != 2:
                raise ValueError(f"word_inputs: expected shape (batch, tokens), found {tuple(word_inputs.shape)}")
            if self._cache_covers(word_inputs):
                if word_inputs.shape[0] == 0:
                    raise ValueError("word_inputs: the batch is empty; give at least one sentence")
                assert self._word_embedding is not None
                embedded = self._word_embedding(word_inputs.to(self.bos_ids.device))
                embeddings, mask = add_sentence_boundaries(embedded, word_inputs > 0, self._bos_embedding,
                                                           self._eos_embedding)
                return self.forward_embeddings(embeddings, mask.to(embeddings.device))
        check_char_ids(inputs, self.token_encoder)
        return super().forward(inputs)


class Elmo(nn.Module):
    """Drop-in for AllenNLP's ``Elmo``: biLM once, then ``num_output_representations`` scalar mixes.

    Args:
        options_file, weight_file: the public ELMo files (bilm-tf layout): paths, ``http(s)://`` URLs or a public
            model's name (downloaded once into a cache, :mod:`elmo_fast.hub`); None for both with ``module``.
        num_output_representations: number of independent mixes (``scalar_mix_0``, ``scalar_mix_1``, ...), >= 1.
        requires_grad: fine-tune the biLM weights.
        do_layer_norm: layer norm inside each mix (statistics include BOS/EOS, as AllenNLP).
        dropout: applied to each output representation.
        vocab_to_cache: optional vocabulary; its token embeddings are computed once and ``forward`` may
            then take ``word_inputs`` (ids into this list, 0 = padding) instead of characters. A batch with an
            id outside the list falls back to the character encoder (as AllenNLP), so pass ``inputs`` too.
        keep_sentence_boundaries: keep BOS/EOS positions in the outputs.
        scalar_mix_parameters: fixed pre-softmax mix weights (then not trainable).
        module: a biLM-like module to use instead of loading files (AllenNLP's ``module``): ``forward`` returns
            ``{"activations", "mask"}``; ``num_layers`` (layers incl. the token layer) or ``options`` tells how
            many layers it has.
        stateful: carry LSTM states across calls (AllenNLP behaviour, default).
        backend: see :mod:`elmo_fast.backend`.
        precision, order: the fast path's arithmetic (see :mod:`elmo_fast.numerics`); None: fp32, fast.

    ``self._elmo_lstm`` is a :class:`CachedBiLM` (a :class:`BiLM`) or the given module. AllenNLP's idioms that
    reach inside it (``elmo._elmo_lstm._elmo_lstm.reset_states()``) are :class:`elmo_fast.compat.allennlp.Elmo`'s,
    whose biLM carries AllenNLP's views.
    """

    def __init__(self, options_file: str | os.PathLike | None, weight_file: str | os.PathLike | None,
                 num_output_representations: int, requires_grad: bool = False, do_layer_norm: bool = False,
                 dropout: float = 0.5, vocab_to_cache: list[str] | None = None,
                 keep_sentence_boundaries: bool = False, scalar_mix_parameters: list[float] | None = None,
                 module: nn.Module | None = None, *, stateful: bool = True, backend: str | None = None,
                 precision: str | None = None, order: str | None = None) -> None:
        super().__init__()
        if isinstance(num_output_representations, bool) or not isinstance(num_output_representations, int) \
                or num_output_representations < 1:
            raise ValueError("num_output_representations: expected a positive integer (one scalar mix each), "
                             f"found {num_output_representations!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1], found {dropout!r}")
        if module is None:
            if options_file is None or weight_file is None:
                raise ValueError("Elmo: give options_file and weight_file, or a module")
            # the setting goes in before the cached vocabulary vectors are computed (they are computed with it)
            module = CachedBiLM(options_file, weight_file, requires_grad=requires_grad, vocab_to_cache=vocab_to_cache,
                                stateful=stateful, backend=backend, precision=precision, order=order)
        else:
            if vocab_to_cache is not None and not isinstance(module, WordInputBiLM):
                raise ValueError("vocab_to_cache with module=...: the module must cache a vocabulary (WordInputBiLM), "
                                 "e.g. elmo_fast.nn.elmo.CachedBiLM(options, weights, vocab_to_cache=...)")
            numerics.configure(module, precision, order)
            if vocab_to_cache is not None:
                module.create_cached_cnn_embeddings(vocab_to_cache)
        self._elmo_lstm = module
        self._has_cached_vocab = isinstance(module, WordInputBiLM) and module.has_word_cache()
        self._keep_sentence_boundaries = keep_sentence_boundaries
        self._dropout = nn.Dropout(p=dropout)
        self._scalar_mixes: list[ScalarMix] = []
        n_layers = _layer_count(module)
        if scalar_mix_parameters is not None and len(scalar_mix_parameters) != n_layers:
            raise ValueError(f"scalar_mix_parameters: expected {n_layers} values (one per biLM layer), "
                             f"found {len(scalar_mix_parameters)}")
        for k in range(num_output_representations):
            mix = ScalarMix(n_layers, do_layer_norm=do_layer_norm,
                            initial_scalar_parameters=scalar_mix_parameters,
                            trainable=scalar_mix_parameters is None)
            self.add_module(f"scalar_mix_{k}", mix)
            self._scalar_mixes.append(mix)

    def get_output_dim(self) -> int:
        module = self._elmo_lstm
        if hasattr(module, "get_output_dim"):
            return int(module.get_output_dim())
        if hasattr(module, "output_dim"):
            return int(module.output_dim)
        return int(module.options.output_dim)

    def reset_states(self) -> None:
        """Forget the carried LSTM states."""
        self._elmo_lstm.reset_states()

    def create_cached_cnn_embeddings(self, tokens: list[str]) -> None:
        """Compute the token-encoder output for every token of ``tokens`` once (``vocab_to_cache``)."""
        self._elmo_lstm.create_cached_cnn_embeddings(tokens)
        self._has_cached_vocab = True

    def forward(self, inputs: torch.Tensor, word_inputs: torch.Tensor | None = None) -> dict[str, Any]:
        """Args:
            inputs: ``(B, T, 50)`` char ids (extra leading dims, e.g. ``(B, N, T, 50)``, are flattened and
                restored; carried states then belong to the flattened rows).
            word_inputs: optional ``(B, T)`` ids into ``vocab_to_cache`` (same leading dims as ``inputs``); without
                ``vocab_to_cache`` they are ignored (one warning), as in AllenNLP.

        Returns:
            ``{"elmo_representations": [(B, T, 2P)] * num_output_representations, "mask": (B, T) bool}``
            (T + 2 with ``keep_sentence_boundaries``).

        Raises:
            TypeError: ``inputs`` is not an integer tensor. ValueError: fewer than 3 dims, an empty batch, ids
            out of range, or (with ``vocab_to_cache``) ``word_inputs`` whose shape does not match.
        """
        chars.check_char_ids(inputs, None, leading_dims=True)
        lead = inputs.shape[:-2]
        char_ids = inputs.reshape(-1, *inputs.shape[-2:])
        bilm = self._elmo_lstm
        if word_inputs is not None and isinstance(bilm, WordInputBiLM) and not bilm.has_word_cache():
            out = bilm(char_ids, word_inputs)  # no vocab_to_cache: ignored there (one warning), as in AllenNLP
        elif word_inputs is not None:
            if not isinstance(word_inputs, torch.Tensor):
                raise TypeError(f"word_inputs: expected a torch.Tensor, found {type(word_inputs).__name__}")
            if tuple(word_inputs.shape) != tuple(inputs.shape[:-1]):
                raise ValueError(f"word_inputs: expected shape {tuple(inputs.shape[:-1])} (inputs without the "
                                 f"character axis), found {tuple(word_inputs.shape)}")
            out = bilm(char_ids, word_inputs.reshape(-1, word_inputs.shape[-1]))
        else:
            if isinstance(bilm, BiLM) and not isinstance(bilm, WordInputBiLM):  # a WordInputBiLM checks them itself
                check_char_ids(char_ids, bilm.token_encoder)
            out = bilm(char_ids)
        layers, mask_bos = out["activations"], out["mask"]
        reps = []
        for mix in self._scalar_mixes:
            rep = mix(layers, mask_bos)
            if not self._keep_sentence_boundaries:
                rep, _ = remove_sentence_boundaries(rep, mask_bos)
            reps.append(self._dropout(rep).reshape(*lead, *rep.shape[1:]))
        if self._keep_sentence_boundaries:
            mask = mask_bos
        else:
            _, mask = remove_sentence_boundaries(mask_bos.unsqueeze(-1), mask_bos)
        return {"elmo_representations": reps, "mask": mask.reshape(*lead, mask.shape[-1])}


def _layer_count(module: nn.Module) -> int:
    """Representation layers of a biLM-like module, the token layer included (AllenNLP's ``num_layers``)."""
    n = getattr(module, "num_layers", None)
    if isinstance(n, int) and n > 0:
        return n
    options = getattr(module, "options", None)
    lstm = getattr(options, "lstm", None)
    if lstm is not None:
        return int(lstm.n_layers) + 1
    return 3
