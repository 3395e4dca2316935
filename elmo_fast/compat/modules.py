"""AllenNLP's ELMo module structure on top of :class:`elmo_fast.nn.bilm.BiLM`.

AllenNLP's ``Elmo._elmo_lstm`` is an ``_ElmoBiLm`` whose ``_token_embedder`` (``_ElmoCharacterEncoder``) and
``_elmo_lstm`` (``ElmoLstm``, which owns the carried states) code written for AllenNLP reaches into, most often
as ``elmo._elmo_lstm._elmo_lstm.reset_states()``. Here :class:`_ElmoBiLm` *is* a :class:`BiLM` (same
parameters, same state-dict names, same backends), and its ``_token_embedder`` / ``_elmo_lstm`` are views that
share the BiLM's parameters and carried states (they are not registered submodules, so nothing appears twice in
``state_dict()`` or ``parameters()`` of the enclosing model; their own ``parameters()`` list the shared ones).
:class:`ElmoLstm` and :class:`_ElmoCharacterEncoder` can also be built on their own, as in AllenNLP.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from .. import backend as backends
from .. import hub, numerics
from ..chars import BOS_IDS, EOS_IDS, check_char_ids
from ..errors import MissingFileError
from ..modes import normal_tensors
from ..nn.bilm import BiLM, add_sentence_boundaries, token_mask
from ..nn.lstm import BiLSTM, StateSlots
from ..nn.token_encoder import CharCNNTokenEncoder
from ..options import LSTMOptions, load_options
from ..weights import WeightFileError, check_finite, lstm_prefix, open_hdf5, read_dataset, read_weights

__all__ = ["COMPAT_ORDER", "_ElmoBiLm", "_ElmoCharacterEncoder", "ElmoLstm"]

#: the floating-point order (:mod:`elmo_fast.numerics`) of the AllenNLP-named classes unless ``order=`` is
#: given: a user migrating from AllenNLP compares against AllenNLP's numbers
COMPAT_ORDER = "allennlp"

logger = logging.getLogger(__name__)

#: token-encoder rows per chunk when caching ``vocab_to_cache``
CACHE_CHUNK = 512


def _check_char_ids(inputs: Any, encoder: CharCNNTokenEncoder, name: str = "inputs") -> None:
    """``(B, T, L)`` integer char ids with every id in ``[0, n_symbols]`` (bilm-tf: ``[0, 261]``): see
    :func:`elmo_fast.chars.check_char_ids`."""
    check_char_ids(inputs, encoder.char_embed.shape[0], name)


# ------------------------------------------------------------------------------------------------------------
class _NumericsSetting:
    """``precision`` / ``order`` of a compat module (:mod:`elmo_fast.numerics`): its own when built on its own
    (kept in ``__dict__["_numerics"]``), the biLM's when it is a view of one (reading and setting both)."""

    @property
    def precision(self) -> str | None:
        """The products' precision (the biLM's, for a view)."""
        bilm = self.__dict__.get("_bilm")
        return bilm.precision if bilm is not None else self.__dict__["_numerics"][0]

    @precision.setter
    def precision(self, value: str | None) -> None:
        self._set_numerics(value, self.order)

    @property
    def order(self) -> str | None:
        """The floating-point order (the biLM's, for a view)."""
        bilm = self.__dict__.get("_bilm")
        return bilm.order if bilm is not None else self.__dict__["_numerics"][1]

    @order.setter
    def order(self, value: str | None) -> None:
        self._set_numerics(self.precision, value)

    def _set_numerics(self, precision: str | None, order: str | None) -> None:
        numerics.check(precision, order)
        bilm = self.__dict__.get("_bilm")
        if bilm is not None:
            bilm.precision, bilm.order = precision, order
        else:
            self.__dict__["_numerics"] = (precision, order)


class _ElmoCharacterEncoder(_NumericsSetting, nn.Module):
    """AllenNLP's ``_ElmoCharacterEncoder``: char ids -> context-independent token vectors with BOS/EOS.

    Args:
        options_file, weight_file: the public ELMo files (bilm-tf layout): paths, ``http(s)://`` URLs or a public
            model's name, downloaded once into a cache (:mod:`elmo_fast.hub`).
        requires_grad: whether the char table, convolutions, highway and projection get gradients.
        backend: see :mod:`elmo_fast.backend`.
        precision, order: the fast path's arithmetic (:mod:`elmo_fast.numerics`); order defaults to
            ``"allennlp"`` (AllenNLP's floating-point order); None keeps the caller's setting.

    ``forward(inputs (B, T, 50))`` returns ``{"mask": (B, T + 2) bool, "token_embedding": (B, T + 2, P)}``;
    as in AllenNLP, padded positions hold the encoder's output for an all-padding token (not zeros).
    """

    def __init__(self, options_file: str | os.PathLike, weight_file: str | os.PathLike,
                 requires_grad: bool = False, *, backend: str | None = None, precision: str | None = None,
                 order: str | None = COMPAT_ORDER) -> None:
        super().__init__()
        numerics.check(precision, order)  # fail before loading
        options_file, weight_file = hub.resolve_files(options_file, weight_file)
        options = load_options(options_file)
        if options.char_cnn is None:
            raise ValueError(f"{options_file}: the options have no 'char_cnn' section (word-input models are "
                             "not supported)")
        weights = read_weights(weight_file, options)
        encoder = CharCNNTokenEncoder(options.char_cnn, options.lstm.projection_dim, "CNN_proj/W_proj" in weights)
        with torch.no_grad():
            for name, param in encoder.bilm_tf_parameters().items():
                param.copy_(torch.from_numpy(np.ascontiguousarray(weights[name])))
        encoder.requires_grad_(requires_grad)
        self.encoder = encoder
        self.backend = backend
        self.__dict__["_numerics"] = (precision, order)
        self.output_dim = options.lstm.projection_dim
        self.requires_grad = requires_grad
        self.register_buffer("bos_ids", torch.tensor(BOS_IDS, dtype=torch.long), persistent=False)
        self.register_buffer("eos_ids", torch.tensor(EOS_IDS, dtype=torch.long), persistent=False)
        self.__dict__["_bilm"] = None

    @classmethod
    def _view_of(cls, bilm: BiLM) -> "_ElmoCharacterEncoder":
        """The token encoder of ``bilm`` behind AllenNLP's interface (shares its parameters)."""
        view = cls.__new__(cls)
        nn.Module.__init__(view)
        view.__dict__["_bilm"] = bilm
        view.output_dim = bilm.options.lstm.projection_dim
        view.requires_grad = any(p.requires_grad for p in bilm.token_encoder.parameters())
        return view

    def get_output_dim(self) -> int:
        return self.output_dim

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Parameter]]:
        bilm = self.__dict__["_bilm"]
        if bilm is None:
            return super().named_parameters(prefix, recurse, remove_duplicate)
        return bilm.token_encoder.named_parameters(prefix, recurse, remove_duplicate)

    def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, T, 50)`` char ids -> ``{"mask": (B, T + 2) bool, "token_embedding": (B, T + 2, P)}``."""
        bilm = self.__dict__["_bilm"]
        encoder = self.encoder if bilm is None else bilm.token_encoder
        _check_char_ids(inputs, encoder)
        if bilm is not None:
            embedding, mask = bilm.embed_tokens(inputs)
            return {"mask": mask, "token_embedding": embedding}
        ids, mask = add_sentence_boundaries(inputs, token_mask(inputs), self.bos_ids, self.eos_ids)
        op = backends.get_op(backends.resolve(self.backend, ids.device, "token_encoder"), "token_encoder")
        with numerics.use(*self.__dict__["_numerics"]):
            out = op(encoder, ids.reshape(-1, ids.shape[-1]))
        return {"mask": mask, "token_embedding": out.reshape(*ids.shape[:-1], out.shape[-1])}


# ------------------------------------------------------------------------------------------------------------
class ElmoLstm(_NumericsSetting, nn.Module):
    """AllenNLP's ``ElmoLstm``: the stateful biLSTM stack (projection, clipping, residual from layer 2 on).

    Args (AllenNLP's): input_size (the first layer's input width), hidden_size (P: every layer's output per
        direction, and the input width of layers 2...), cell_size (C), num_layers, requires_grad,
        recurrent_dropout_probability (only 0.0 is supported), memory_cell_clip_value, state_projection_clip_value.
        backend: see :mod:`elmo_fast.backend`. With ``input_size != hidden_size`` (never the case inside an ELMo
            biLM, whose token vectors are P wide) the biLSTM runs on the ``reference`` backend: the fast and
            Triton kernels read P-wide inputs; asking for another backend then is a :class:`BackendError`.
        precision, order: the fast path's arithmetic (:mod:`elmo_fast.numerics`); order defaults to
            ``"allennlp"`` (AllenNLP's floating-point order); None keeps the caller's setting.

    ``forward(inputs (B, T, input_size), mask (B, T) bool) -> (num_layers, B, T, 2P)``; as AllenNLP, the first
    layer has no residual connection, the others add their input. Carries per-row states across calls
    (AllenNLP's slot semantics) until :meth:`reset_states`; ``_states`` shows them as AllenNLP does. Weights
    start random (AllenNLP: block orthogonal) until :meth:`load_weights` reads a bilm-tf weight file.
    """

    def __init__(self, input_size: int, hidden_size: int, cell_size: int, num_layers: int,
                 requires_grad: bool = False, recurrent_dropout_probability: float = 0.0,
                 memory_cell_clip_value: float | None = None, state_projection_clip_value: float | None = None,
                 *, backend: str | None = None, precision: str | None = None,
                 order: str | None = COMPAT_ORDER) -> None:
        super().__init__()
        numerics.check(precision, order)
        if recurrent_dropout_probability != 0.0:
            raise ValueError("ElmoLstm: recurrent_dropout_probability is not supported by elmo-fast (only 0.0); "
                             "bilm-tf's dropout is on layer inputs (BiLM.forward_embeddings(dropout=...))")
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("cell_size", cell_size),
                            ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ElmoLstm: {name} must be a positive integer, found {value!r}")
        if input_size != hidden_size and backend is not None and backend.strip().lower() != "reference":
            raise backends.BackendError(
                f"ElmoLstm: backend {backend!r} reads first-layer inputs as wide as hidden_size; with input_size "
                f"{input_size} != hidden_size {hidden_size} only the 'reference' backend runs (leave backend=None)")
        options = LSTMOptions(dim=cell_size, projection_dim=hidden_size, n_layers=num_layers,
                              cell_clip=memory_cell_clip_value, proj_clip=state_projection_clip_value,
                              use_skip_connections=True)
        self.lstm = BiLSTM(options, input_dim=input_size)
        bound = 1.0 / cell_size ** 0.5
        with torch.no_grad():
            for p in self.lstm.parameters():
                p.uniform_(-bound, bound)
        self.lstm.requires_grad_(requires_grad)
        self.requires_grad = requires_grad
        self.backend = backend
        self.__dict__["_bilm"] = None
        self.__dict__["_numerics"] = (precision, order)
        self.stateful = True
        self.__dict__["_slots"] = StateSlots()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.cell_size, self.num_layers = cell_size, num_layers

    @classmethod
    def _view_of(cls, bilm: BiLM) -> "ElmoLstm":
        """The biLSTM of ``bilm`` behind AllenNLP's interface (shares its parameters and carried states)."""
        view = cls.__new__(cls)
        nn.Module.__init__(view)
        o = bilm.options.lstm
        view.__dict__["_bilm"] = bilm
        view.input_size = view.hidden_size = o.projection_dim
        view.cell_size, view.num_layers = o.dim, o.n_layers
        view.requires_grad = any(p.requires_grad for p in bilm.lstm.parameters())
        view.backend = bilm.backend
        return view

    @property
    def stateful(self) -> bool:  # type: ignore[override]
        bilm = self.__dict__.get("_bilm")
        return bilm.stateful if bilm is not None else self.__dict__.get("_stateful", True)

    @stateful.setter
    def stateful(self, value: bool) -> None:
        bilm = self.__dict__.get("_bilm")
        if bilm is not None:
            bilm.stateful = value
        else:
            self.__dict__["_stateful"] = value

    @property
    def _states(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """AllenNLP's view of the carried states: ``(h (num_layers, B, 2P), c (num_layers, B, 2C))``, or None
        before the first call and after :meth:`reset_states` (read only; the biLM's, for a view)."""
        bilm = self.__dict__["_bilm"]
        slots = bilm.states if bilm is not None else self.__dict__["_slots"]
        return None if slots.h is None or slots.c is None else (slots.h, slots.c)

    def _bilstm(self) -> BiLSTM:
        bilm = self.__dict__["_bilm"]
        return self.lstm if bilm is None else bilm.lstm

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Parameter]]:
        bilm = self.__dict__["_bilm"]
        if bilm is None:
            return super().named_parameters(prefix, recurse, remove_duplicate)
        return bilm.lstm.named_parameters(prefix, recurse, remove_duplicate)

    def reset_states(self) -> None:
        """Forget the carried LSTM states (every row starts from zero on the next call)."""
        bilm = self.__dict__["_bilm"]
        if bilm is not None:
            bilm.reset_states()
        else:
            self.__dict__["_slots"].reset()

    def load_weights(self, weight_file: str | os.PathLike) -> None:
        """Read the biLSTM datasets (``RNN_{d}/.../Cell{l}/LSTMCell/{W_0,B,W_P_0}``) of a bilm-tf weight file
        (a path, URL or public model name: :mod:`elmo_fast.hub`)."""
        path = os.fspath(hub.resolve(weight_file, "weights"))
        if not os.path.isfile(path):
            raise MissingFileError(f"weight file not found: {path}")
        lstm = self._bilstm()
        with open_hdf5(path) as f, torch.no_grad():
            for d in (0, 1):
                for layer, cell in enumerate(lstm.cells[d]):
                    for name in ("W_0", "B", "W_P_0"):
                        key = f"{lstm_prefix(d, layer)}/{name}"
                        param = getattr(cell, name)
                        value = read_dataset(f, path, key)
                        if value is None:
                            raise WeightFileError(f"{path}: dataset '{key}' is missing (expected shape "
                                                  f"{tuple(param.shape)})")
                        if tuple(value.shape) != tuple(param.shape):
                            raise WeightFileError(f"{path}: dataset '{key}' expected shape {tuple(param.shape)}, "
                                                  f"found {tuple(value.shape)}")
                        check_finite(value, f"{path}: dataset '{key}'")
                        param.copy_(torch.from_numpy(value))
        lstm.requires_grad_(self.requires_grad)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``inputs`` ``(B, T, P)``, ``mask`` ``(B, T)`` (each row's valid positions first) ->
        ``(num_layers, B, T, 2P)``, zeros at padding."""
        if inputs.dim() != 3 or mask.shape != inputs.shape[:2]:
            raise ValueError(f"ElmoLstm: expected inputs (B, T, P) and mask (B, T), found {tuple(inputs.shape)} "
                             f"and {tuple(mask.shape)}")
        if inputs.shape[-1] != self.input_size:
            raise ValueError(f"ElmoLstm: inputs have {inputs.shape[-1]} features, expected {self.input_size}")
        bilm = self.__dict__["_bilm"]
        if bilm is not None:
            return torch.stack(bilm.forward_embeddings(inputs, mask.bool())["activations"][1:])
        lstm, slots = self.lstm, self.__dict__["_slots"]
        lengths = mask.long().sum(dim=1)
        zero = lstm.zero_state(inputs.shape[0], inputs)
        initial = slots.initial(inputs.shape[0], zero) if self.stateful else zero
        # inputs of another width than P: only the reference biLSTM reads them (see the class docstring)
        name = "reference" if self.input_size != self.hidden_size else backends.resolve(self.backend, inputs.device,
                                                                                        "bilstm")
        op = backends.get_op(name, "bilstm")
        with numerics.use(*self.__dict__["_numerics"]):
            outputs, (h, c) = op(lstm, inputs, lengths, initial, 0.0)
        if self.stateful:
            slots.update(h, c)
        return torch.stack(outputs)


# ------------------------------------------------------------------------------------------------------------
class _ElmoBiLm(BiLM):
    """AllenNLP's ``_ElmoBiLm``: a :class:`BiLM` loaded from files, with ``vocab_to_cache`` and ``word_inputs``.

    Args:
        options_file, weight_file: the public ELMo files (bilm-tf layout): paths, ``http(s)://`` URLs or a public
            model's name, downloaded once into a cache (:mod:`elmo_fast.hub`).
        requires_grad: whether the biLM's weights (and the cached word vectors) get gradients.
        vocab_to_cache: tokens whose token-encoder output is computed once; ``forward`` may then take
            ``word_inputs`` (ids into this list; id 0 is padding, so put a padding token first).
        stateful: carry LSTM states across calls (AllenNLP: always). backend: see :mod:`elmo_fast.backend`.
        precision, order: the fast path's arithmetic (:mod:`elmo_fast.numerics`), set before the cached
            vectors are computed; None keeps the caller's setting. (:class:`elmo_fast.compat.allennlp._ElmoBiLm`
            defaults order to ``"allennlp"``.)

    ``forward(inputs (B, T, 50), word_inputs=None)`` returns AllenNLP's dict ``{"activations": [3 x (B, T+2,
    2P)], "mask": (B, T+2) bool}``. With a cache and ``word_inputs``, the cached vectors are used; if any id is
    outside the cache (negative or >= len(vocab_to_cache)), the whole batch falls back to the character
    encoder on ``inputs`` (AllenNLP's behaviour), so pass both. Without a cache, ``word_inputs`` (of any shape
    or type) are ignored, as in AllenNLP, with one warning per module.
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
        self.__dict__["_token_embedder"] = _ElmoCharacterEncoder._view_of(self)
        self.__dict__["_elmo_lstm"] = ElmoLstm._view_of(self)
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

    def create_cached_cnn_embeddings(self, tokens: list[str]) -> None:
        """Token-encoder output of every token of ``tokens`` (and of BOS/EOS), computed once."""
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
                logger.warning("word_inputs were given to an _ElmoBiLm without vocab_to_cache: they are ignored "
                               "(as in AllenNLP) and the character ids are used")
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
        _check_char_ids(inputs, self.token_encoder)
        return super().forward(inputs)
