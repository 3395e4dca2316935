"""ScalarMix and the downstream ``Elmo`` module (docs/numerics.md#downstream-use), state-dict compatible with AllenNLP."""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import nn

from .bilm import BiLM, remove_sentence_boundaries

__all__ = ["ScalarMix", "Elmo"]

#: AllenNLP's ``tiny_value_of_dtype(torch.float32)``, the layer-norm epsilon
LAYER_NORM_EPS = 1e-13


class ScalarMix(nn.Module):
    """``gamma * sum_j softmax(w)_j * h_j`` over ``mixture_size`` tensors of the same shape.

    Args:
        mixture_size: number of layers mixed (3 for ELMo).
        do_layer_norm: normalise each layer with one mean/variance over all unmasked elements of the batch.
        initial_scalar_parameters: pre-softmax weights (default zeros -> equal weights).
        trainable: whether ``scalar_parameters`` and ``gamma`` get gradients.
    """

    def __init__(self, mixture_size: int, do_layer_norm: bool = False,
                 initial_scalar_parameters: Sequence[float] | None = None, trainable: bool = True) -> None:
        super().__init__()
        self.mixture_size = mixture_size
        self.do_layer_norm = do_layer_norm
        if initial_scalar_parameters is None:
            initial_scalar_parameters = [0.0] * mixture_size
        if len(initial_scalar_parameters) != mixture_size:
            raise ValueError(f"initial_scalar_parameters: expected {mixture_size} values, "
                             f"found {len(initial_scalar_parameters)}")
        self.scalar_parameters = nn.ParameterList(
            [nn.Parameter(torch.tensor([float(v)]), requires_grad=trainable) for v in initial_scalar_parameters])
        self.gamma = nn.Parameter(torch.tensor([1.0]), requires_grad=trainable)

    @staticmethod
    def _layer_norm(x: torch.Tensor, mask: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        masked = x * mask
        mean = masked.sum() / count
        var = (((masked - mean) * mask) ** 2).sum() / count
        return (x - mean) / torch.sqrt(var + LAYER_NORM_EPS)

    def forward(self, tensors: Sequence[torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mix ``tensors`` (each ``(B, T, D)``); ``mask`` ``(B, T)`` is required with layer norm."""
        if len(tensors) != self.mixture_size:
            raise ValueError(f"expected {self.mixture_size} tensors, found {len(tensors)}")
        weights = torch.softmax(torch.cat(list(self.scalar_parameters)), dim=0)
        if not self.do_layer_norm:
            return self.gamma * sum(w * t for w, t in zip(weights, tensors))
        if mask is None:
            raise ValueError("ScalarMix with do_layer_norm=True needs a mask")
        fmask = mask.unsqueeze(-1).to(tensors[0].dtype)
        count = fmask.sum() * tensors[0].shape[-1]
        return self.gamma * sum(w * self._layer_norm(t, fmask, count) for w, t in zip(weights, tensors))


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

    ``self._elmo_lstm`` is an :class:`elmo_fast.compat.allennlp._ElmoBiLm` (a :class:`BiLM`), so AllenNLP idioms
    such as ``elmo._elmo_lstm._elmo_lstm.reset_states()`` work.
    """

    def __init__(self, options_file: str | os.PathLike | None, weight_file: str | os.PathLike | None,
                 num_output_representations: int, requires_grad: bool = False, do_layer_norm: bool = False,
                 dropout: float = 0.5, vocab_to_cache: list[str] | None = None,
                 keep_sentence_boundaries: bool = False, scalar_mix_parameters: list[float] | None = None,
                 module: nn.Module | None = None, *, stateful: bool = True, backend: str | None = None,
                 precision: str | None = None, order: str | None = None) -> None:
        super().__init__()
        from .. import numerics
        from ..compat.modules import _ElmoBiLm

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
            module = _ElmoBiLm(options_file, weight_file, requires_grad=requires_grad, vocab_to_cache=vocab_to_cache,
                               stateful=stateful, backend=backend, precision=precision, order=order)
        else:
            if vocab_to_cache is not None and not isinstance(module, _ElmoBiLm):
                raise ValueError("vocab_to_cache with module=...: build the module as "
                                 "elmo_fast.compat.allennlp._ElmoBiLm(options, weights, vocab_to_cache=...)")
            numerics.configure(module, precision, order)
            if vocab_to_cache is not None:
                module.create_cached_cnn_embeddings(vocab_to_cache)
        self._elmo_lstm = module
        self._has_cached_vocab = getattr(module, "_word_embedding", None) is not None
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
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"inputs: expected a torch.Tensor of character ids, found {type(inputs).__name__}")
        if inputs.dtype.is_floating_point or inputs.dtype.is_complex or inputs.dtype == torch.bool:
            raise TypeError(f"inputs: expected integer character ids (torch.long), found dtype {inputs.dtype}")
        if inputs.dim() < 3:
            raise ValueError(f"inputs: expected shape (batch, tokens, characters) or with more leading dims, "
                             f"found {tuple(inputs.shape)}")
        if inputs.numel() == 0 and any(d == 0 for d in inputs.shape[:-2]):
            raise ValueError(f"inputs: the batch is empty (shape {tuple(inputs.shape)}); give at least one sentence")
        lead = inputs.shape[:-2]
        char_ids = inputs.reshape(-1, *inputs.shape[-2:])
        bilm = self._elmo_lstm
        if word_inputs is not None and hasattr(bilm, "_cache_covers") and bilm._word_embedding is None:
            out = bilm(char_ids, word_inputs)  # no vocab_to_cache: ignored there (one warning), as in AllenNLP
        elif word_inputs is not None:
            if not isinstance(word_inputs, torch.Tensor):
                raise TypeError(f"word_inputs: expected a torch.Tensor, found {type(word_inputs).__name__}")
            if tuple(word_inputs.shape) != tuple(inputs.shape[:-1]):
                raise ValueError(f"word_inputs: expected shape {tuple(inputs.shape[:-1])} (inputs without the "
                                 f"character axis), found {tuple(word_inputs.shape)}")
            out = bilm(char_ids, word_inputs.reshape(-1, word_inputs.shape[-1]))
        else:
            if isinstance(bilm, BiLM) and not hasattr(bilm, "_cache_covers"):
                from ..compat.modules import _check_char_ids
                _check_char_ids(char_ids, bilm.token_encoder)
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
