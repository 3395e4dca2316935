"""Reference context-independent token encoder: char embedding -> char-CNN -> max-pool -> highway -> projection.

Parameters are stored with exactly the shapes of the bilm-tf datasets (TF orientation, ``x @ W``), so
loading and saving a weight file is a plain copy (docs/numerics.md#token-encoder, #weightshdf5).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..chars import NUM_SYMBOLS
from ..options import CharCNNOptions

__all__ = ["CharCNNTokenEncoder", "char_cnn_features", "highway_reference"]


def char_cnn_features(char_ids: torch.Tensor, char_embed: torch.Tensor, conv_weights: list[torch.Tensor],
                      conv_biases: list[torch.Tensor], activation: str) -> torch.Tensor:
    """Char embedding + every convolution + bias + max over positions + activation.

    Args:
        char_ids: ``(N, L)`` int64 (bilm-tf: L = 50, values 0..261); 0 = padding, embeds to zeros.
        char_embed: ``(S, d)`` stored table (row k = symbol k, i.e. id k+1; bilm-tf: S = 261).
        conv_weights: per filter ``(1, w, d, n)`` (bilm-tf layout).
        conv_biases: per filter ``(n,)``.
        activation: ``"relu"`` or ``"tanh"``.

    Returns:
        ``(N, F)`` features in filter order.
    """
    table = torch.cat([char_embed.new_zeros(1, char_embed.shape[1]), char_embed], dim=0)
    x = F.embedding(char_ids, table).transpose(1, 2)  # (N, d, 50)
    act = torch.relu if activation == "relu" else torch.tanh
    feats = []
    for W, b in zip(conv_weights, conv_biases):
        # (n, d, w) contiguous, as a torch Conv1d stores it: the layout decides which kernel sums the windows
        conv = F.conv1d(x, W[0].permute(2, 1, 0).contiguous(), b)  # (N, n, L + 1 - w)
        feats.append(act(conv.max(dim=-1).values))
    return torch.cat(feats, dim=-1)


def highway_reference(x: torch.Tensor, W_carry: torch.Tensor, b_carry: torch.Tensor,
                      W_transform: torch.Tensor, b_transform: torch.Tensor) -> torch.Tensor:
    """One highway layer (always ReLU): ``g = σ(x W_c + b_c); x <- g*relu(x W_t + b_t) + (1-g)*x``. x: ``(N, F)``.

    Computed in AllenNLP's floating-point order (the same function): one product with the bias for the
    transform and the negated carry, ``[t, -z_c] = x [W_t, -W_c] + [b_t, -b_c]``, then ``k = σ(-z_c)`` (= 1 - g)
    and ``x <- k*x + (1-k)*relu(t)``. The product is a ``Linear`` on the ``(out, in)``-contiguous weight, as
    AllenNLP stores it: for one to three rows the BLAS sums the other layout in another order.
    """
    W = torch.cat([W_transform, -W_carry], dim=1).t().contiguous()  # (2F, F)
    z = F.linear(x, W, torch.cat([b_transform, -b_carry]))
    transform, neg_carry = z.chunk(2, dim=-1)
    keep = torch.sigmoid(neg_carry)
    return keep * x + (1.0 - keep) * torch.relu(transform)


class Highway(nn.Module):
    """Parameters of one highway layer, named as in the weight file (``CNN_high_k/*``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.W_carry = nn.Parameter(torch.empty(dim, dim))
        self.b_carry = nn.Parameter(torch.empty(dim))
        self.W_transform = nn.Parameter(torch.empty(dim, dim))
        self.b_transform = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return highway_reference(x, self.W_carry, self.b_carry, self.W_transform, self.b_transform)


class CharCNNTokenEncoder(nn.Module):
    """Token ids ``(..., L)`` -> token vectors ``(..., P)`` (reference path, float32).

    ``W_proj``/``b_proj`` are None when the model has no projection (F == P and the file omits it).

    Args:
        options: the char-CNN options (filters, char embedding size, highway layers, activation).
        projection_dim: P, the output size (must equal F without a projection).
        has_projection: whether ``CNN_proj`` exists.
        n_symbols: rows of the stored character table (bilm-tf: 261 symbols). Id ``k + 1`` reads row
            ``k`` and id 0 reads a fixed zero vector, whatever the table size; the number of characters
            per token ``L`` is the last axis of the ids (bilm-tf: 50). ELMoForManyLangs models use their
            own table size, ``max_characters_per_token`` and a stored padding-character row
            (:mod:`elmo_fast.efml`).
    """

    def __init__(self, options: CharCNNOptions, projection_dim: int, has_projection: bool = True,
                 n_symbols: int = NUM_SYMBOLS) -> None:
        super().__init__()
        self.options = options
        d, F_ = options.embedding_dim, options.n_filters
        if n_symbols < 1:
            raise ValueError(f"n_symbols: expected a positive number of character rows, found {n_symbols}")
        self.char_embed = nn.Parameter(torch.empty(n_symbols, d))
        self.conv_weights = nn.ParameterList([nn.Parameter(torch.empty(1, w, d, n)) for w, n in options.filters])
        self.conv_biases = nn.ParameterList([nn.Parameter(torch.empty(n)) for _, n in options.filters])
        self.highways = nn.ModuleList([Highway(F_) for _ in range(options.n_highway)])
        if not has_projection and F_ != projection_dim:
            raise ValueError(f"a projection is required when F ({F_}) != projection_dim ({projection_dim})")
        if has_projection:
            self.W_proj = nn.Parameter(torch.empty(F_, projection_dim))
            self.b_proj = nn.Parameter(torch.empty(projection_dim))
        else:
            self.register_parameter("W_proj", None)
            self.register_parameter("b_proj", None)
        self.output_dim = projection_dim

    def bilm_tf_parameters(self) -> dict[str, nn.Parameter]:
        """Weight-file dataset name -> parameter (same shape, same orientation)."""
        out: dict[str, nn.Parameter] = {"char_embed": self.char_embed}
        for i, (W, b) in enumerate(zip(self.conv_weights, self.conv_biases)):
            out[f"CNN/W_cnn_{i}"], out[f"CNN/b_cnn_{i}"] = W, b
        for k, hw in enumerate(self.highways):
            for name in ("W_carry", "b_carry", "W_transform", "b_transform"):
                out[f"CNN_high_{k}/{name}"] = getattr(hw, name)
        if self.W_proj is not None:
            out["CNN_proj/W_proj"], out["CNN_proj/b_proj"] = self.W_proj, self.b_proj
        return out

    def cnn_features(self, char_ids: torch.Tensor) -> torch.Tensor:
        """``(N, L)`` -> ``(N, F)`` (embedding, convolutions, max-pool, activation)."""
        return char_cnn_features(char_ids, self.char_embed, list(self.conv_weights), list(self.conv_biases),
                                 self.options.activation)

    def forward(self, char_ids: torch.Tensor) -> torch.Tensor:
        """``(..., L)`` int64 -> ``(..., P)`` float32."""
        lead = char_ids.shape[:-1]
        x = self.cnn_features(char_ids.reshape(-1, char_ids.shape[-1]))
        for hw in self.highways:
            x = hw(x)
        if self.W_proj is not None:
            # bias inside the product, (out, in) weight: as AllenNLP's Linear (see highway_reference)
            x = F.linear(x, self.W_proj.t().contiguous(), self.b_proj)
        return x.reshape(*lead, self.output_dim)
