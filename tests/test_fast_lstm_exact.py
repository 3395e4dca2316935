"""order="allennlp" in the fast biLSTM: the tail positions (fewer than four active rows) and their products.

The whole layer's bits against the AllenNLP-style oracle are checked in ``tests/test_compat_numerics.py``
(``test_fast_lstm_allennlp_order_is_bitwise_with_short_tails``); here the two pieces it is built from: the column
blocked products give ``F.linear``'s bits for every row count, and the AllenNLP layout puts each tail position's
rows on one step.
"""
import pytest
import torch
import torch.nn.functional as F

from elmo_fast.fast import lstm as fast_lstm


@pytest.mark.parametrize("out_features,in_features", [(4096, 128), (128, 1024), (16384, 512), (192, 16)],
                         ids=["recurrent", "projection", "original", "unblocked"])
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_rows_have_linear_bits(out_features, in_features, groups, bias):
    """Every group of m rows gets exactly ``F.linear``'s result for those m rows (the BLAS's small-row kernels
    included), whether the weight is multiplied in column blocks or whole."""
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(out_features + in_features + groups)
    weight = torch.randn(out_features, in_features, generator=gen) / in_features ** 0.5
    b = torch.randn(out_features, generator=gen) if bias else None
    blocked = out_features * in_features >= fast_lstm.TAIL_BLOCK_MIN_WEIGHT and out_features % fast_lstm.TAIL_BLOCK == 0
    assert blocked == (out_features != 192)
    for m in (1, 2, 3, 5):
        x = torch.randn(groups, m, in_features, generator=gen)
        got = fast_lstm._linear_rows(x, weight, b)
        for g in range(groups):
            want = F.linear(x[g], weight, b)
            assert torch.equal(got[g], want), f"m={m} group {g}: max diff {float((got[g] - want).abs().max())}"


@pytest.mark.parametrize("lengths", [[23, 14, 9, 3, 1], [11, 11, 11, 11, 7, 3, 1], [5, 2], [1], [6, 6, 6, 6, 6],
                                     [9, 0, 4, 9, 2]])
def test_allennlp_layout_groups_each_tail_position(lengths):
    """In the AllenNLP layout every backward step from ``main_steps`` on holds one position (the step's index) with
    AllenNLP's active rows for it, the steps before hold positions below ``main_steps``, and the moved slots are a
    permutation of each moved row's own slots."""
    steps = max(lengths)
    plan = fast_lstm.make_plan(torch.tensor(lengths), steps)
    tails = fast_lstm.allennlp_tails(plan)
    sorted_len = sorted(lengths, reverse=True)
    assert tails.main_steps == (sorted_len[3] if len(lengths) >= 4 else 0)
    assert tails.carried == sum(1 for n in sorted_len if n > tails.main_steps)
    assert sorted(tails.plan_slots.tolist()) == sorted(tails.tail_slots.tolist())
    # (sorted row, position) of each backward slot in the plan's layout, then after the move
    row_of = {int(r): k for k, r in enumerate(plan.order)}
    src = plan.src_bw.clone()
    moved = src.clone()
    moved[tails.tail_slots] = src[tails.plan_slots]
    for s, n in enumerate(plan.batch_sizes):
        for j in range(n):
            flat = int(moved[plan.offsets[s] + j])
            row, position = row_of[flat // steps], flat % steps
            assert row == j
            if s >= tails.main_steps:
                assert position == s, (s, j, position)
            else:
                assert position == min(sorted_len[j], tails.main_steps) - 1 - s, (s, j, position)
    # AllenNLP's row count at a tail position is the step's row count
    for s in range(tails.main_steps, len(plan.batch_sizes)):
        assert plan.batch_sizes[s] == sum(1 for n in sorted_len if n > s) < fast_lstm.ALLENNLP_MIN_ROWS


@pytest.mark.parametrize("lengths", [[23, 14, 9, 3, 1], [5, 2], [11, 11, 11, 11, 7, 3, 1]])
def test_allennlp_order_gradients_with_tails(lengths):
    """Training with order="allennlp" and tail positions: the backward reads the saved tensors in the plan's layout
    (moved back after the tails ran), so its gradients match the reference's within float32 tolerance, for the
    inputs, the initial state and every parameter."""
    from elmo_fast.nn.bilm import BiLM
    from elmo_fast.options import options_from_dict
    torch.set_num_threads(1)
    opts = options_from_dict({
        "lstm": {"dim": 256, "projection_dim": 32, "n_layers": 2, "cell_clip": 3.0, "proj_clip": 3.0,
                 "use_skip_connections": True},
        "char_cnn": {"embedding": {"dim": 4}, "filters": [[1, 8], [2, 8]], "n_highway": 1, "n_characters": 262,
                     "max_characters_per_token": 50, "activation": "relu"}})
    gen = torch.Generator().manual_seed(21)
    ref = BiLM(opts, stateful=False, backend="reference")
    with torch.no_grad():
        for p in ref.parameters():
            fan_in = p.shape[-2] if p.dim() >= 2 else 1
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.dim() == 1 else 1.5 / fan_in ** 0.5))
    fast = BiLM(opts, stateful=False, backend="fast", order="allennlp")
    fast.load_state_dict(ref.state_dict())
    T = max(lengths)
    lens = torch.tensor(lengths)
    mask = torch.arange(T)[None, :] < lens[:, None]
    emb = torch.randn(len(lengths), T, 32, generator=gen) * mask[..., None]
    cot = [torch.randn(len(lengths), T, 64, generator=gen) for _ in range(2)]
    grads = []
    for model in (ref, fast):
        x = emb.clone().requires_grad_(True)
        model.zero_grad()
        out = model.forward_embeddings(x, mask)["activations"][1:]
        sum((o * c).sum() for o, c in zip(out, cot)).backward()
        grads.append([x.grad] + [p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 1
    for k, (g, w) in enumerate(zip(grads[1], grads[0])):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4, msg=f"gradient {k}")
