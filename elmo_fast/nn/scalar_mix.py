"""ScalarMix and the downstream ``Elmo`` module (ELMO_SPEC §6), state-dict compatible with AllenNLP."""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import nn

from ..chars import batch_to_ids
from .bilm import BiLM, add_sentence_boundaries, remove_sentence_boundaries

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
        options_file, weight_file: the public ELMo files (bilm-tf layout).
        num_output_representations: number of independent mixes (``scalar_mix_0``, ``scalar_mix_1``, ...).
        requires_grad: fine-tune the biLM weights.
        do_layer_norm: layer norm inside each mix (statistics include BOS/EOS, as AllenNLP).
        dropout: applied to each output representation.
        vocab_to_cache: optional vocabulary; its token embeddings are computed once and ``forward`` may
            then take ``word_inputs`` (ids into this list, 0 = padding) instead of characters.
        keep_sentence_boundaries: keep BOS/EOS positions in the outputs.
        scalar_mix_parameters: fixed pre-softmax mix weights (then not trainable).
        stateful: carry LSTM states across calls (AllenNLP behaviour, default).
        backend: see :mod:`elmo_fast.backend`.
    """

    def __init__(self, options_file: str | os.PathLike, weight_file: str | os.PathLike,
                 num_output_representations: int, requires_grad: bool = False, do_layer_norm: bool = False,
                 dropout: float = 0.5, vocab_to_cache: list[str] | None = None,
                 keep_sentence_boundaries: bool = False, scalar_mix_parameters: list[float] | None = None,
                 module: BiLM | None = None, *, stateful: bool = True, backend: str | None = None) -> None:
        super().__init__()
        if module is None:
            module = BiLM.from_files(options_file, weight_file, stateful=stateful, requires_grad=requires_grad,
                                     backend=backend)
        self._elmo_lstm = module
        self._keep_sentence_boundaries = keep_sentence_boundaries
        self._dropout = nn.Dropout(p=dropout)
        self._scalar_mixes: list[ScalarMix] = []
        n_layers = module.options.lstm.n_layers + 1
        for k in range(num_output_representations):
            mix = ScalarMix(n_layers, do_layer_norm=do_layer_norm,
                            initial_scalar_parameters=scalar_mix_parameters,
                            trainable=scalar_mix_parameters is None)
            self.add_module(f"scalar_mix_{k}", mix)
            self._scalar_mixes.append(mix)
        self._word_embedding: torch.Tensor | None = None
        if vocab_to_cache is not None:
            self.create_cached_cnn_embeddings(vocab_to_cache)

    def get_output_dim(self) -> int:
        return self._elmo_lstm.options.output_dim

    def reset_states(self) -> None:
        """Forget the carried LSTM states."""
        self._elmo_lstm.reset_states()

    @torch.no_grad()
    def create_cached_cnn_embeddings(self, tokens: list[str], batch_size: int = 512) -> None:
        """Compute the token-encoder output for every token of ``tokens`` once (``vocab_to_cache``)."""
        chunks = []
        for start in range(0, len(tokens), batch_size):
            ids = batch_to_ids([[t] for t in tokens[start:start + batch_size]])
            chunks.append(self._elmo_lstm.encode_tokens(ids.to(self._elmo_lstm.bos_ids.device))[:, 0])
        self._word_embedding = torch.cat(chunks) if chunks else None
        bos_eos = torch.stack([self._elmo_lstm.bos_ids, self._elmo_lstm.eos_ids])
        emb = self._elmo_lstm.encode_tokens(bos_eos)
        self._bos_embedding, self._eos_embedding = emb[0], emb[1]

    def forward(self, inputs: torch.Tensor, word_inputs: torch.Tensor | None = None) -> dict[str, Any]:
        """Args:
            inputs: ``(B, T, 50)`` char ids (extra leading dims are flattened and restored).
            word_inputs: optional ``(B, T)`` ids into ``vocab_to_cache`` (used when a cache exists).

        Returns:
            ``{"elmo_representations": [(B, T, 2P)] * num_output_representations, "mask": (B, T) bool}``
            (T + 2 with ``keep_sentence_boundaries``).
        """
        bilm = self._elmo_lstm
        if word_inputs is not None and self._word_embedding is not None:
            lead = word_inputs.shape[:-1]
            words = word_inputs.reshape(-1, word_inputs.shape[-1])
            wmask = words > 0
            emb = self._word_embedding[words]
            emb, mask = add_sentence_boundaries(emb, wmask, self._bos_embedding, self._eos_embedding)
            out = bilm.forward_embeddings(emb, mask)
        else:
            lead = inputs.shape[:-2]
            out = bilm(inputs.reshape(-1, *inputs.shape[-2:]))
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
