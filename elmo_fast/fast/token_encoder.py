"""Fast CPU token encoder (docs/numerics.md#token-encoder): the same function as
:class:`elmo_fast.nn.token_encoder.CharCNNTokenEncoder`.

Where the time goes in the reference, and what this does instead:

* **Each distinct token once.** A batch repeats tokens (function words, padding rows, BOS/EOS); the
  char-CNN, highway and projection run on the distinct ``(50,)`` id rows only and are gathered back.
* **Only the windows that can differ.** Every token ends in a run of identical ids (PAD after EOW); all
  convolution windows lying entirely inside that run give the same value. A token whose run starts at ``s``
  needs windows ``0..s`` only. Tokens are grouped by ``s`` (at most four groups, chosen to minimise the
  windows, :func:`_window_groups`) and each group convolves up to its largest ``s``: typically 3x fewer
  windows than 50, and about half of what one group for the longest token in the batch needs.
* **All filters in one matmul.** The windows of width ``w_max`` are unfolded to ``(windows, w_max * d)``
  and multiplied by all filters at once (narrower filters zero-padded to ``w_max``; ~16% extra FLOPs for
  one large, efficient matmul instead of seven convolutions), the windows of all groups in one product.
  Weights are packed once for inference.
* **A backward without the windows' gradient** (:class:`_CharConvMax`): the weight and char-table gradients
  are accumulated per (offset, character, filter) from the max's gradient and arg-max, instead of two
  products over all windows.
* **Highway fused**: transform and carry matrices in one ``(F, 2F)`` matmul.
* **Optional token cache** (:func:`enable_token_cache`, like AllenNLP's ``vocab_to_cache``): token vectors
  kept across calls in an LRU keyed by the char ids, for inference; cleared when the weights change.

**Order** (:mod:`elmo_fast.numerics`, read inside the op): with ``order="fast"`` (the process default) the
above; differences to the reference are float32 rounding only (summation order: 4.3e-6 on the original model's
token vectors, which the biLSTM amplifies on long sentences). With ``order="allennlp"`` the per-token arithmetic
is AllenNLP's: one ``conv1d`` per filter with its bias, max over time, activation; each highway as one
``F.linear`` over ``[W_t, -W_c]`` with its bias, gate ``σ(-z_c)``, ``k*x + (1-k)*relu(t)``; the projection as one
``F.linear`` with its bias; the weights laid out as in AllenNLP's ``Conv1d`` / ``Linear`` modules. What is kept
is what does not change a token's bits: each distinct token once, only the windows that can differ, the token
cache. At one thread the result is AllenNLP's bit for bit
(``tests/test_compat_numerics.py`` against the AllenNLP-module baseline, given the guard of
:data:`ALLENNLP_MIN_ROWS`; on 320 WikiText-2 lines with the original model against AllenNLP 2.10.1 itself,
``benchmarks/allennlp_parity.py``), and the reference's from 4 positions per call on (with 1-3, the BLAS sums the
reference's ``(in, out)`` operands in another order than AllenNLP's ``(out, in)`` ones).
These products are torch's ``conv1d`` and ``F.linear`` on purpose, not :class:`~elmo_fast.fast.packing.PackedLinear`:
its oneDNN-packed product sums in another order, and ``x @ W + b`` (as ``packing.matmul`` would give) rounds
differently from the BLAS adding the bias inside the product (1.4e-6 on a 2048 x 4096 highway). So this order is
float32 whatever the ``precision`` setting. With several threads the BLAS splits the rows among them, so a
token's bits depend on the row count (distinct tokens here, all positions in AllenNLP): equal to AllenNLP's within
its own thread-to-thread noise, not bit for bit. Cost at one thread (``benchmarks/order_cost.py``, three runs on a
shared machine): the token encoder runs at 0.45-0.6x the fast order's speed at batch 1 (the BLAS repacks the
2048 x 4096 highway weight on every call), 0.7-0.9x at batch 32.

Nothing here assumes 50 characters per token or 261 table rows: ELMoForManyLangs models (:mod:`elmo_fast.efml`)
run through the same code with their own ``max_characters_per_token`` and character table.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import numerics
from ..nn.token_encoder import CharCNNTokenEncoder
from . import native
from .packing import PackedLinear, _stamp, bf16_products, cached, matmul, operand

__all__ = ["ALLENNLP_MIN_ROWS", "TokenCache", "distinct_rows", "enable_token_cache", "token_encoder_fast"]

#: with ``order="allennlp"``, the fewest rows the convolutions and products run on. torch picks the kernel by
#: the row count: at one thread a width-1 ``conv1d`` runs as im2col + GEMM below 16 rows and through oneDNN from
#: 16 on, a one-row ``conv1d`` never uses oneDNN, and the BLAS sums 1-3-row products in other orders than 4+.
#: Each gives a token other bits. AllenNLP runs on all ``N = B * (T + 2)`` positions; the distinct rows
#: (``U <= N``) are padded up to this many (so both counts are in the same kernel regime), and a call with
#: ``N`` below it runs on all ``N`` rows, as the reference.
ALLENNLP_MIN_ROWS = 16


def distinct_rows(char_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 50)`` -> (distinct rows ``(U, 50)``, inverse ``(N,)`` with ``rows[inverse] == char_ids``)."""
    return torch.unique(char_ids, dim=0, return_inverse=True)


def _run_starts(ids: torch.Tensor) -> torch.Tensor:
    """``(U, L)`` ids -> ``(U,)`` int64: per row, the start of its trailing run of equal ids (0 if one run)."""
    same = ids == ids[:, -1:]
    return ids.shape[1] - same.flip(1).to(torch.int32).cumprod(1).sum(1).to(torch.int64)


def _run_start(ids: torch.Tensor) -> int:
    """Largest start of the trailing run of equal ids over all rows (0 if every row is one run)."""
    return int(_run_starts(ids).max())


#: :func:`_window_groups`: at most this many groups, each costing as much as this many extra windows
MAX_WINDOW_GROUPS = 4
GROUP_OVERHEAD_WINDOWS = 64


def _window_groups(starts: torch.Tensor) -> list[tuple[torch.Tensor | None, int]]:
    """Split rows into groups that each convolve windows ``0..start_g`` (``start_g`` = the group's largest run
    start), choosing the groups that minimise the total number of windows (plus a fixed cost per group).

    Returns ``[(rows or None, start_g)]``; ``None`` = all rows in one group. Short words then no longer pay for
    the batch's longest one (``make_words``-like text: ~half the windows of one group).
    """
    if starts.numel() <= GROUP_OVERHEAD_WINDOWS:  # too few rows to gain what a group costs (batch-1 inference)
        return [(None, int(starts.max()) if starts.numel() else 0)]
    values, counts = torch.unique(starts, return_counts=True)
    vals, cnts = values.tolist(), counts.tolist()
    m = len(vals)
    if m == 1:
        return [(None, vals[0])]
    prefix = [0]
    for c in cnts:
        prefix.append(prefix[-1] + c)
    # best[g][j]: least cost of covering the j smallest values with g groups; cut[g][j]: where the last one starts
    inf = float("inf")
    best = [[inf] * (m + 1) for _ in range(MAX_WINDOW_GROUPS + 1)]
    cut = [[0] * (m + 1) for _ in range(MAX_WINDOW_GROUPS + 1)]
    best[0][0] = 0.0
    for g in range(1, MAX_WINDOW_GROUPS + 1):
        for j in range(1, m + 1):
            for i in range(j):
                if best[g - 1][i] < inf:
                    c = best[g - 1][i] + (prefix[j] - prefix[i]) * (vals[j - 1] + 1) + GROUP_OVERHEAD_WINDOWS
                    if c < best[g][j]:
                        best[g][j], cut[g][j] = c, i
    g = min(range(1, MAX_WINDOW_GROUPS + 1), key=lambda k: best[k][m])
    if g == 1:
        return [(None, vals[-1])]
    bounds, j = [], m
    while g:
        i = cut[g][j]
        bounds.append((i, j))
        j, g = i, g - 1
    groups = []
    for i, j in reversed(bounds):
        lo = vals[i - 1] if i else -1
        rows = torch.nonzero((starts > lo) & (starts <= vals[j - 1])).squeeze(1)
        groups.append((rows, vals[j - 1]))
    return groups


def _conv_weights(encoder: CharCNNTokenEncoder, differentiable: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """All filters as one ``(w_max * d, F)`` matrix (rows ordered offset-major, then channel) and ``(F,)`` bias."""
    w_max = max(w for w, _ in encoder.options.filters)
    d = encoder.options.embedding_dim
    mats = []
    for W in encoder.conv_weights:
        w = W.shape[1]
        Wk = W[0] if differentiable else W[0].detach()  # (w, d, n)
        if w < w_max:
            Wk = torch.cat([Wk, Wk.new_zeros(w_max - w, d, Wk.shape[2])], dim=0)
        mats.append(Wk.reshape(w_max * d, -1))
    bias = torch.cat(list(encoder.conv_biases), dim=0)
    return torch.cat(mats, dim=1), (bias if differentiable else bias.detach())


def _highway_weights(hw, differentiable: bool) -> tuple[torch.Tensor, torch.Tensor]:
    W = torch.cat([hw.W_transform, hw.W_carry], dim=1)
    b = torch.cat([hw.b_transform, hw.b_carry], dim=0)
    return (W, b) if differentiable else (W.detach(), b.detach())


def _prepared(encoder: CharCNNTokenEncoder):
    """Packed inference weights, rebuilt when any parameter changes."""
    params = list(encoder.parameters())

    def build():
        with torch.no_grad():
            Wc, bc = _conv_weights(encoder, differentiable=False)
            conv = PackedLinear(Wc, None, batch_hint=1024)  # the bias is added after the max (see _cnn_features)
            highways = [PackedLinear(*_highway_weights(hw, False), batch_hint=256) for hw in encoder.highways]
            proj = None if encoder.W_proj is None else PackedLinear(encoder.W_proj, encoder.b_proj, batch_hint=256)
            return conv, highways, proj, bc
    return cached("fast_token_encoder", params, build)


def _cnn_features(encoder: CharCNNTokenEncoder, ids: torch.Tensor, grad: bool) -> torch.Tensor:
    """``(U, L)`` distinct ids -> ``(U, F)`` char-CNN features (max-pooled, activated).

    Rows are grouped by how many windows they need (:func:`_window_groups`); a group convolves windows
    ``0..start`` (every later window of its rows equals the one at ``start``). A group whose windows would reach
    past the last character (a token of ``L - w_max`` bytes or more) convolves all ``L`` window starts over the
    ids padded with ``w_max - 1`` zero embeddings, and the windows a filter does not have (``j > L - w``) are
    masked out of its max. All groups go through one product.
    """
    opts = encoder.options
    w_max = max(w for w, _ in opts.filters)
    n_chars = ids.shape[1]
    groups = _window_groups(_run_starts(ids))
    table = torch.cat([encoder.char_embed.new_zeros(1, encoder.char_embed.shape[1]), encoder.char_embed], 0)
    group_ids = []
    for rows, start in groups:
        g = ids if rows is None else ids.index_select(0, rows)
        if start + w_max <= n_chars:
            group_ids.append(g[:, :start + w_max].contiguous())
        else:
            group_ids.append(torch.cat([g, g.new_zeros(g.shape[0], w_max - 1)], 1))
    widths = _filter_widths(opts.filters) if any(g.shape[1] > n_chars for g in group_ids) else None
    if grad:
        Wc, bc = _conv_weights(encoder, differentiable=True)
        x = _CharConvMax.apply(table, Wc, bc, w_max, n_chars, widths, group_ids)
    else:
        conv, _, _, bc = _prepared(encoder)
        # in bf16 the product's bf16 result is max-pooled before it is widened (the max of bf16 values is exact)
        product = conv.bf16 if bf16_products() else conv
        ys = _window_products(group_ids, table.detach(), w_max, n_chars, widths, product)
        x = (ys[0].amax(dim=1) if len(ys) == 1 else torch.cat([y.amax(dim=1) for y in ys])).to(bc.dtype).add_(bc)
    if opts.activation == "relu":
        x = torch.relu(x)
    else:  # (training keeps autograd's tanh: its backward needs the op recorded)
        x = torch.tanh(x) if grad else _activate_(x.contiguous(), "tanh")
    if len(groups) == 1:
        return x
    perm = torch.cat([rows for rows, _ in groups])
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.shape[0])
    return x.index_select(0, inverse)


def _filter_widths(filters) -> torch.Tensor:
    """``(F,)`` int64: the width of the filter behind each output column of the all-filters product."""
    return torch.cat([torch.full((n,), w, dtype=torch.int64) for w, n in filters])


def _window_products(group_ids: list[torch.Tensor], table: torch.Tensor, w_max: int, n_chars: int,
                     widths: torch.Tensor | None, product) -> list[torch.Tensor]:
    """Per group, ``(U_g, width_g)`` ids -> ``product(windows)`` as ``(U_g, width_g - w_max + 1, F)``.

    Every window of ``w_max`` embedded characters is unfolded to a ``w_max * d`` row; the rows of all groups go
    through one ``product`` call (one large product, and the same kernels whatever the grouping). In a group
    wider than ``n_chars`` (padded), window ``j`` of a filter of width ``w`` exists only for ``j + w <= n_chars``
    (``widths``: ``(F,)`` filter width per output column); the others are set to ``-inf``.
    """
    d = table.shape[1]
    wins = [F.embedding(ids, table).unfold(1, w_max, 1).transpose(2, 3).reshape(-1, w_max * d) for ids in group_ids]
    out = product(wins[0].contiguous() if len(wins) == 1 else torch.cat(wins))
    views, row = [], 0
    for ids, w in zip(group_ids, wins):
        y = out[row:row + w.shape[0]].view(ids.shape[0], ids.shape[1] - w_max + 1, -1)
        row += w.shape[0]
        if ids.shape[1] > n_chars:
            starts = torch.arange(y.shape[1]).unsqueeze(1)
            y.masked_fill_(starts + widths.unsqueeze(0) > n_chars, float("-inf"))
        views.append(y)
    return views


def _affine(b: torch.Tensor, x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``x @ W + b`` for the differentiable (training) path: ``addmm`` in float32; in the bf16 setting the
    product goes through :func:`elmo_fast.fast.packing.matmul` (bf16 inputs, float32 accumulation; ``x`` or ``W``
    may already be :func:`~elmo_fast.fast.packing.operand` copies)."""
    if bf16_products():
        return matmul(x, W).add_(b)
    return torch.addmm(b, x, W)


def _activate_(x: torch.Tensor, kind: str) -> torch.Tensor:
    """``x.sigmoid_()`` / ``x.tanh_()`` in place, the same bits at any thread count where the native kernels are
    built (torch's own depend on how the threads split the tensor: :func:`elmo_fast.fast.native.activation_`)."""
    if native.library() is not None and x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 2 \
            and (x.shape[1] <= 1 or x.stride(1) == 1):
        return native.activation_(x, kind)
    return x.sigmoid_() if kind == "sigmoid" else x.tanh_()


def _max_argmax_windows(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``y`` ``(U, W, F)`` -> the max over the windows ``(U, F)`` and the (last) window holding it, uint8.

    ``Tensor.max(dim=1)`` with indices reduces over the middle axis element by element: ~10 ms for a
    ``(197, 9, 2048)`` group at one thread, against ~0.3 ms for ``amax``. Here: ``amax``, then the window index as
    the ``amax`` of ``(y == max) * w`` over uint8 (two more vectorised passes). Any window holding the max is a
    valid subgradient (see :class:`_CharConvMax`). W <= 50 (``max_characters_per_token``) fits uint8.
    """
    v = y.amax(dim=1)
    windows = torch.arange(y.shape[1], dtype=torch.uint8, device=y.device).view(1, -1, 1)
    return v, ((y == v.unsqueeze(1)) * windows).amax(dim=1)


class _Highway(torch.autograd.Function):
    """One highway layer for training: ``x (U, F)`` -> ``x + g * (t - x)`` with ``t = relu(x W_t + b_t)``,
    ``g = sigmoid(x W_c + b_c)`` (docs/numerics.md#highway: ``g * t + (1 - g) * x``; the inference path's form), with a
    hand-written backward.

    Through autograd the layer cost, besides its products: a copy of ``[W_t, W_c]`` (2 x F x F) per step for one
    ``(F, 2F)`` product, two zero-filled ``(U, 2F)`` gradients for the two column slices of ``z`` and their sum,
    copies of the weight-gradient slices into ``.grad``, and five elementwise ops each way. Here the transform and
    carry products run on their own weights (same FLOPs), their gradients are formed directly, and each weight
    gradient is one product. Products go through :func:`_affine` / :func:`~elmo_fast.fast.packing.matmul`, so the
    bf16 setting applies to all of them, backward included (the forward's setting is kept for the backward).
    """

    @staticmethod
    def forward(ctx, x, W_t, W_c, b_t, b_c):  # type: ignore[override]
        # bf16: each operand converted once and kept for the backward's products (x, W_t, W_c appear in two each)
        x16, W_t16, W_c16 = operand(x), operand(W_t), operand(W_c)
        t = _affine(b_t, x16, W_t16).relu_()
        g = _activate_(_affine(b_c, x16, W_c16), "sigmoid")
        ctx.save_for_backward(x, x16, W_t16, W_c16, t, g)
        ctx.numerics = numerics.current()
        return torch.sub(t, x).mul_(g).add_(x)

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, x16, W_t, W_c, t, g = ctx.saved_tensors
        with numerics.use(ctx.numerics.precision, ctx.numerics.order):
            dz_t = dy * g                                   # d t, then through relu (t > 0 where z > 0)
            dx = dy - dz_t                                  # dy * (1 - g): the carry path
            dz_c = torch.sub(t, x).mul_(dy)                 # d g, then through sigmoid: g (1 - g)
            dz_t.masked_fill_(t <= 0, 0.0)
            dz_c.mul_(g).addcmul_(dz_c, g, value=-1.0)
            dz_t16, dz_c16 = operand(dz_t), operand(dz_c)   # each used in two products
            dx.add_(matmul(dz_t16, W_t.t())).add_(matmul(dz_c16, W_c.t()))
            return (dx, matmul(x16.t(), dz_t16), matmul(x16.t(), dz_c16), dz_t.sum(0), dz_c.sum(0))


class _CharConvMax(torch.autograd.Function):
    """Char embedding, all filters as one product over the windows, max over the windows, then the bias (no
    activation), for groups of rows: ``table (S, d)``, ``Wc (w_max * d, F)``, ``bc (F,)``, ``group_ids`` (list of
    ``(U_g, width_g)`` id tensors; see :func:`_window_products` for ``n_chars`` and ``widths``) ->
    ``(sum U_g, F)``, the groups' rows one after the other.

    The backward never forms the ``(U, windows, F)`` gradient of the convolution, which is zero except at one
    arg-max window per value. With ``g`` the ``(U, F)`` gradient and ``j(u, f)`` the arg-max window, the
    convolution input at offset ``k`` is the embedding of character ``ids[u, j(u, f) + k]``, so both gradients go
    through ``A[k, s, f] = sum of g[u, f] over u with ids[u, j(u, f) + k] = s`` (``w_max`` scatter-adds of
    ``U * F`` values, accumulated over the groups):

    * ``dWc[k * d + c, f] = sum_s table[s, c] * A[k, s, f]`` (``w_max`` products of ``d x S x F``);
    * ``dtable[s, c] = sum_{k, f} A[k, s, f] * Wc[k * d + c, f]`` (``w_max`` products of ``S x F x d``);
    * ``dbc = sum_u g``.

    That replaces two ``(U * windows) x (w_max * d) x F`` products per group (the weight gradient and the
    windows' gradient, which only fed the table) and the zero-filled ``(U, windows, F)`` scatter: on the small
    preset's training step ~8 GFLOP become ~0.1 GFLOP and 8 M scatter-adds. Ties in the max are harmless: tied
    windows hold the same characters, so every parameter receives the same total whichever window is chosen.
    The backward is float32 in every precision setting (its products are small). The scatter into ``A`` runs in
    the native kernel (:func:`elmo_fast.fast.native.char_scatter`: all offsets in one pass, the same sums in the
    same order) where it is built, else as one ``scatter_add_`` per offset.
    """

    @staticmethod
    def forward(ctx, table, Wc, bc, w_max, n_chars, widths, group_ids):  # type: ignore[override]
        values, ctx.argmax = [], []
        for y in _window_products(group_ids, table, w_max, n_chars, widths, lambda x: matmul(x, Wc, widen=False)):
            v, j = _max_argmax_windows(y)
            values.append(v)
            ctx.argmax.append(j)
        ctx.group_ids, ctx.w_max = group_ids, w_max
        ctx.save_for_backward(table, Wc)
        # the bias after the max: max_j(a_j) + b is max_j(a_j + b) exactly (rounding is monotone)
        return (values[0] if len(values) == 1 else torch.cat(values)).to(bc.dtype).add_(bc)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        table, Wc = ctx.saved_tensors
        w_max = ctx.w_max
        n_sym, d = table.shape
        F_ = grad.shape[1]
        grad = grad.contiguous()
        A = grad.new_zeros(w_max, n_sym, F_)
        row = 0
        fused = native.library() is not None and grad.dtype == torch.float32 and grad.device.type == "cpu"
        for ids, j in zip(ctx.group_ids, ctx.argmax):
            g = grad[row:row + ids.shape[0]]
            row += ids.shape[0]
            if fused:  # all offsets in one pass (elmo_fast.fast.native; the same sums in the same order)
                native.char_scatter(A, ids.contiguous(), j.contiguous(), g)
                continue
            j = j.long()
            for k in range(w_max):
                A[k].scatter_add_(0, ids.gather(1, j + k), g)
        dtable = dWc = dbc = None
        if ctx.needs_input_grad[0]:
            dtable = torch.bmm(A, Wc.view(w_max, d, F_).transpose(1, 2)).sum(0)
        if ctx.needs_input_grad[1]:
            dWc = torch.bmm(table.t().unsqueeze(0).expand(w_max, d, n_sym), A).reshape(w_max * d, F_)
        if ctx.needs_input_grad[2]:
            dbc = grad.sum(0)
        return dtable, dWc, dbc, None, None, None, None


def _allennlp_order() -> bool:
    return numerics.current().order == "allennlp"


def _allennlp_weights(encoder: CharCNNTokenEncoder, differentiable: bool) -> tuple[list, list, object]:
    """The products of AllenNLP's order, in the layouts of AllenNLP's modules (``Conv1d``, ``Linear``): per filter
    (``(n, d, w)`` conv weight, ``(n,)`` bias); per highway (``(2F, F)`` = ``[W_t, -W_c]ᵀ``, ``(2F,)`` =
    ``[b_t, -b_c]``); projection (``(P, F)``, ``(P,)``) or None. (The layout matters for products of 1-3 rows,
    where the BLAS sums a transposed operand in another order.)"""
    def own(t: torch.Tensor | None) -> torch.Tensor | None:
        return t if t is None or differentiable else t.detach()

    convs = [(own(W)[0].permute(2, 1, 0).contiguous(), own(b))
             for W, b in zip(encoder.conv_weights, encoder.conv_biases)]
    highways = [(torch.cat([own(hw.W_transform), -own(hw.W_carry)], dim=1).t().contiguous(),
                 torch.cat([own(hw.b_transform), -own(hw.b_carry)])) for hw in encoder.highways]
    proj = None if encoder.W_proj is None else (own(encoder.W_proj).t().contiguous(), own(encoder.b_proj))
    return convs, highways, proj


def _prepared_allennlp(encoder: CharCNNTokenEncoder):
    """:func:`_allennlp_weights` for inference, built once per state of the parameters."""
    params = list(encoder.parameters())

    def build():
        with torch.no_grad():
            return _allennlp_weights(encoder, differentiable=False)
    return cached("fast_token_encoder_allennlp", params, build)


def _encode_allennlp(encoder: CharCNNTokenEncoder, ids: torch.Tensor, grad: bool, windows: bool = True) -> torch.Tensor:
    """``(M, L)`` id rows -> ``(M, P)`` in AllenNLP's order (its ops and weight layouts: per token its bits).

    With ``windows``, only the windows that can differ are convolved (see :func:`_run_start`): windows lying
    inside a token's trailing run of equal ids all give the value of the first one, so the max over time is
    unchanged. (Measured bit-identical with oneDNN's convolution, i.e. from :data:`ALLENNLP_MIN_ROWS` rows on;
    torch's im2col convolution for fewer rows sums a shorter row differently, so calls below that run on all
    ``L`` characters.)
    """
    convs, highways, proj = (_allennlp_weights(encoder, True) if grad else _prepared_allennlp(encoder))
    opts = encoder.options
    w_max = max(w for w, _ in opts.filters)
    width = min(_run_start(ids) + w_max, ids.shape[1]) if windows else ids.shape[1]
    table = torch.cat([encoder.char_embed.new_zeros(1, encoder.char_embed.shape[1]), encoder.char_embed], 0)
    if not grad:
        table = table.detach()
    x = F.embedding(ids[:, :width], table).transpose(1, 2)  # (M, d, width)
    act = torch.relu if opts.activation == "relu" else torch.tanh
    # max is exact, so amax (2x faster, no indices) gives the same values; training keeps max's gradient
    pool = (lambda c: c.max(dim=-1).values) if grad else (lambda c: c.amax(dim=-1))
    x = torch.cat([act(pool(F.conv1d(x, W, b))) for W, b in convs], dim=-1)  # (M, F)
    for W, b in highways:
        transform, neg_carry = F.linear(x, W, b).chunk(2, dim=-1)
        keep = torch.sigmoid(neg_carry)  # 1 - g
        if grad:
            x = keep * x + (1.0 - keep) * torch.relu(transform)
        else:  # the same roundings in place: keep*x + ((1 - keep) * relu(t))
            kept = keep * x
            x = kept.add_(keep.neg_().add_(1.0).mul_(transform.relu_()))
    if proj is not None:
        x = F.linear(x, proj[0], proj[1])  # bias inside the product, as AllenNLP's Linear
    return x


class TokenCache:
    """LRU of token vectors ``(P,)`` keyed by a token's 50 char ids; inference only (no autograd).

    Entries are dropped when any encoder parameter changes (storage or version counter) or the
    :mod:`elmo_fast.numerics` setting differs from the one they were computed in.
    """

    def __init__(self, max_tokens: int = 100_000) -> None:
        from collections import OrderedDict
        if max_tokens < 1:
            raise ValueError(f"max_tokens: expected a positive integer, found {max_tokens}")
        self.max_tokens = max_tokens
        self.entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.stamp: tuple = ()
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self.entries.clear()

    def lookup(self, encoder: CharCNNTokenEncoder, ids: torch.Tensor) -> torch.Tensor:
        """``(U, 50)`` distinct ids -> ``(U, P)``, encoding only the rows not cached."""
        stamp = (_stamp(list(encoder.parameters())), numerics.current())  # vectors of another order: dropped
        if stamp != self.stamp:
            self.entries.clear()
            self.stamp = stamp
        keys = [row.tobytes() for row in ids.cpu().numpy()]
        missing = [k for k, key in enumerate(keys) if key not in self.entries]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = _encode_distinct(encoder, ids[missing], grad=False)
            for k, row in zip(missing, fresh):
                self.entries[keys[k]] = row.clone()
        out = torch.stack([self.entries[key] for key in keys])
        for key in keys:  # most recently used last
            self.entries.move_to_end(key)
        while len(self.entries) > self.max_tokens:
            self.entries.popitem(last=False)
        return out


def enable_token_cache(model: torch.nn.Module, max_tokens: int | None = 100_000) -> TokenCache | None:
    """Keep token vectors across calls of the fast token encoder of ``model`` (a ``BiLM`` or its
    ``CharCNNTokenEncoder``); ``max_tokens=None`` or 0 switches the cache off. Returns the cache."""
    encoder = getattr(model, "token_encoder", model)
    if not isinstance(encoder, CharCNNTokenEncoder):
        raise TypeError(f"expected a BiLM or CharCNNTokenEncoder, found {type(model).__name__}")
    cache = TokenCache(max_tokens) if max_tokens else None
    encoder.__dict__["_fast_token_cache"] = cache  # plain attribute: not a parameter, not saved
    return cache


def _encode_distinct(encoder: CharCNNTokenEncoder, ids: torch.Tensor, grad: bool) -> torch.Tensor:
    """Char-CNN, highway and projection of distinct id rows ``(U, 50)`` -> ``(U, P)`` in the current order.

    With ``order="allennlp"`` fewer than :data:`ALLENNLP_MIN_ROWS` rows are padded with copies of the first
    (and the padding dropped), so that torch picks the same kernels as on a whole batch.
    """
    if _allennlp_order():
        n = ids.shape[0]
        if n == 0 or n >= ALLENNLP_MIN_ROWS:
            return _encode_allennlp(encoder, ids, grad)
        padded = torch.cat([ids, ids[:1].expand(ALLENNLP_MIN_ROWS - n, -1)])
        return _encode_allennlp(encoder, padded, grad)[:n]
    x = _cnn_features(encoder, ids, grad)
    if grad:
        for hw in encoder.highways:
            x = _Highway.apply(x, hw.W_transform, hw.W_carry, hw.b_transform, hw.b_carry)
        if encoder.W_proj is not None:
            x = _affine(encoder.b_proj, x, encoder.W_proj)
        return x
    _, highways, proj, _ = _prepared(encoder)
    for hw in highways:
        z = hw(x)
        F_ = x.shape[1]
        t = z[:, :F_].relu_()
        g = _activate_(z[:, F_:], "sigmoid")
        t.sub_(x).mul_(g).add_(x)  # g * t + (1 - g) * x as x + g * (t - x)
        x = t
    if proj is not None:
        x = proj(x.contiguous())
    return x


def token_encoder_fast(encoder: CharCNNTokenEncoder, char_ids: torch.Tensor) -> torch.Tensor:
    """``(N, L)`` int64 char ids (bilm-tf: L = 50) -> ``(N, P)`` token vectors; same signature as the reference op."""
    if char_ids.dim() != 2:
        raise ValueError(f"char_ids: expected shape (N, L), found {tuple(char_ids.shape)}")
    if char_ids.shape[0] == 0:
        return encoder.char_embed.new_zeros(0, encoder.output_dim)
    grad = torch.is_grad_enabled() and any(p.requires_grad for p in encoder.parameters())
    if char_ids.shape[0] < ALLENNLP_MIN_ROWS and _allennlp_order():  # AllenNLP's kernels for so few rows
        return _encode_allennlp(encoder, char_ids, grad, windows=False)
    ids, inverse = distinct_rows(char_ids)
    cache = encoder.__dict__.get("_fast_token_cache")
    if cache is not None and not grad:
        x = cache.lookup(encoder, ids)
    else:
        x = _encode_distinct(encoder, ids, grad)
    return x.index_select(0, inverse)
