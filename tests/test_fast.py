"""The fast CPU path (backend "fast") against the reference, forward and backward, on awkward shapes.

Tolerances: float64 runs check that the fast path computes the same *function* (only summation order
differs), so they use atol/rtol 1e-9. float32 runs use rtol 1e-5 / atol 2e-5 on outputs (values up to
~50 with the random weights used here) and rtol 1e-4 / atol 1e-4 x (largest gradient) on gradients, where
different summation orders over whole batches accumulate more rounding.
"""
from __future__ import annotations


import importlib

import pytest
import torch

from elmo_fast import backend as backends
from elmo_fast import numerics
from elmo_fast.chars import batch_to_ids
from elmo_fast.nn.bilm import BiLM
from elmo_fast.nn.lstm import BiLSTM
from elmo_fast.options import options_from_dict

import elmo_fast.fast as fast  # noqa: F401  (registers the "fast" ops)
from elmo_fast.fast.lstm import make_plan
from elmo_fast.fast.token_encoder import token_encoder_fast

from helpers import random_weights, tiny_options
from test_reference_fixtures import CASES, load_case, run_protocol, top_layer_embedder

F32_OUT = dict(rtol=1e-5, atol=2e-5)
F64 = dict(rtol=1e-9, atol=1e-9)


def make_bilm(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> BiLM:
    d = tiny_options(**overrides)
    model = BiLM(options_from_dict(d), stateful=False, backend="reference")
    model.load_bilm_tf_weights(random_weights(d, seed=seed))
    return model.to(dtype)


def random_char_ids(gen: torch.Generator, lengths: list[int], steps: int | None = None,
                    vocab: int = 7) -> torch.Tensor:
    """``(B, T, 50)`` ids of words drawn from a small vocabulary (so tokens repeat), right-padded."""
    steps = max(lengths) if steps is None else steps
    words = []
    for k in range(vocab):
        n = 1 + int(torch.randint(0, 9, (1,), generator=gen)) if k else 48  # one 48-byte word: no PAD run
        words.append("".join(chr(97 + int(c)) for c in torch.randint(0, 26, (n,), generator=gen)))
    sentences = [[words[int(torch.randint(0, vocab, (1,), generator=gen))] for _ in range(n)] for n in lengths]
    ids = batch_to_ids(sentences)
    if ids.shape[1] < steps:
        ids = torch.cat([ids, ids.new_zeros(ids.shape[0], steps - ids.shape[1], 50)], dim=1)
    return ids


def grads_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(got: dict, want: dict, rtol: float, atol_rel: float) -> None:
    assert got.keys() == want.keys() and want
    for name in want:
        scale = float(want[name].abs().max()) or 1.0
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol_rel * scale, msg=name)


# ---------------------------------------------------------------------------------------------- registration
def test_fast_is_the_cpu_default_and_registered():
    assert backends.resolve(None, "cpu", "bilstm") == "fast"
    assert backends.resolve(None, "cpu", "token_encoder") == "fast"
    assert backends.get_op("fast", "bilstm") is fast.bilstm
    assert backends.get_op("fast", "token_encoder") is fast.token_encoder
    assert backends.get_op("fast", "bilstm_streams") is fast.bilstm_streams


def test_plan_layout():
    plan = make_plan(torch.tensor([2, 0, 3, 1]), steps=5)
    assert plan.order.tolist() == [2, 0, 3, 1]
    assert plan.batch_sizes == [3, 2, 1]
    assert plan.offsets == [0, 3, 5, 6]
    # forward: (s, k) -> row order[k], position s; backward: position L - 1 - s
    assert plan.src_fw.tolist() == [10, 0, 15, 11, 1, 12]
    assert plan.src_bw.tolist() == [12, 1, 15, 11, 0, 10]
    # last packed row per sorted row; the empty row points past the packed rows
    assert plan.last.tolist() == [5, 4, 2, 6 + 3]


# ---------------------------------------------------------------------------------------------- token encoder
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("overrides", [{}, {"char_cnn__activation": "tanh", "char_cnn__n_highway": 1}])
def test_token_encoder_forward_backward(dtype, overrides):
    gen = torch.Generator().manual_seed(1)
    model = make_bilm(seed=3, dtype=dtype, **overrides)
    ids = random_char_ids(gen, [0, 1, 2, 13, 5], steps=15).view(-1, 50)  # zero rows, repeats, a 48-byte word
    short = ids[(ids[:, 40] == 0) | (ids[:, 40] == 261)]                   # a batch that takes the short path
    enc = model.token_encoder
    for batch in (ids, short, ids[:0]):
        want = enc(batch)
        got = token_encoder_fast(enc, batch)
        torch.testing.assert_close(got, want, **(F64 if dtype == torch.float64 else F32_OUT))
    cot = torch.randn(ids.shape[0], enc.output_dim, generator=gen, dtype=dtype)
    enc.zero_grad()
    (enc(short) * cot[:short.shape[0]]).sum().backward()
    want = grads_of(enc)
    enc.zero_grad()
    (token_encoder_fast(enc, short) * cot[:short.shape[0]]).sum().backward()
    tol = (1e-9, 1e-9) if dtype == torch.float64 else (1e-4, 1e-4)
    assert_grads_close(grads_of(enc), want, *tol)


def _words_of_lengths(gen: torch.Generator, lengths: list[int]) -> list[str]:
    return ["".join(chr(97 + int(c)) for c in torch.randint(0, 26, (n,), generator=gen)) for n in lengths]


def _brute_force_groups(starts: list[int], max_groups: int, overhead: int) -> float:
    """Least cost over every split of the sorted distinct starts into at most ``max_groups`` consecutive groups."""
    import itertools
    vals = sorted(set(starts))
    count = {v: starts.count(v) for v in vals}
    best = float("inf")
    for g in range(1, min(max_groups, len(vals)) + 1):
        for cuts in itertools.combinations(range(1, len(vals)), g - 1):
            edges = [0, *cuts, len(vals)]
            cost = sum(sum(count[v] for v in vals[a:b]) * (vals[b - 1] + 1) + overhead
                       for a, b in zip(edges, edges[1:]))
            best = min(best, cost)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_window_groups_are_optimal_and_cover_every_row(seed):
    te = importlib.import_module("elmo_fast.fast.token_encoder")  # the package's attribute is the op
    gen = torch.Generator().manual_seed(seed)
    starts = (torch.randint(1, 40, (700,), generator=gen) ** 2 // 40).tolist()  # skewed: many short, few long
    groups = te._window_groups(torch.tensor(starts))
    rows = torch.cat([r if r is not None else torch.arange(len(starts)) for r, _ in groups])
    assert sorted(rows.tolist()) == list(range(len(starts)))  # a partition of the rows
    for r, start in groups:  # each group convolves enough windows for its rows
        members = range(len(starts)) if r is None else r.tolist()
        assert max(starts[i] for i in members) == start
    cost = sum((len(starts) if r is None else len(r)) * (s + 1) + te.GROUP_OVERHEAD_WINDOWS for r, s in groups)
    assert cost == _brute_force_groups(starts, te.MAX_WINDOW_GROUPS, te.GROUP_OVERHEAD_WINDOWS)
    assert len(groups) > 1
    assert te._window_groups(torch.tensor([5, 5, 5])) == [(None, 5)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_token_encoder_grouped_windows_forward_backward(dtype, monkeypatch):
    """Words of 1-45 bytes (several window groups, one on the general path) plus padding rows: values and every
    parameter's gradient (char table, filters, biases, highway, projection) against the reference."""
    te = importlib.import_module("elmo_fast.fast.token_encoder")  # the package's attribute is the op
    gen = torch.Generator().manual_seed(5)
    lengths = [1, 1, 2, 3, 3, 4, 4, 5, 5, 6, 7, 9, 11, 14, 18, 23, 31, 45, 44]
    words = _words_of_lengths(gen, lengths)
    ids = batch_to_ids([words, words[::-1][:7], []]).view(-1, 50)
    monkeypatch.setattr(te, "GROUP_OVERHEAD_WINDOWS", 1)  # so that these few rows split into several groups
    assert len(te._window_groups(te._run_starts(te.distinct_rows(ids)[0]))) > 1
    model = make_bilm(seed=4, dtype=dtype)
    enc = model.token_encoder
    tol = F64 if dtype == torch.float64 else F32_OUT
    torch.testing.assert_close(token_encoder_fast(enc, ids), enc(ids), **tol)
    cot = torch.randn(ids.shape[0], enc.output_dim, generator=gen, dtype=dtype)
    enc.zero_grad()
    (enc(ids) * cot).sum().backward()
    want = grads_of(enc)
    assert "char_embed" in want
    enc.zero_grad()
    (token_encoder_fast(enc, ids) * cot).sum().backward()
    assert_grads_close(grads_of(enc), want, *((1e-9, 1e-9) if dtype == torch.float64 else (1e-4, 1e-4)))


def test_token_encoder_without_projection():
    d = tiny_options(lstm__projection_dim=124)  # F = 124 = P: the file may omit CNN_proj
    model = BiLM(options_from_dict(d), stateful=False, has_projection=False, backend="reference")
    model.load_bilm_tf_weights(random_weights(d, seed=2, with_projection=False))
    ids = random_char_ids(torch.Generator().manual_seed(2), [3, 4]).view(-1, 50)
    torch.testing.assert_close(token_encoder_fast(model.token_encoder, ids), model.token_encoder(ids), **F32_OUT)


def test_packed_weights_follow_parameter_updates():
    model = make_bilm(seed=4)
    ids = random_char_ids(torch.Generator().manual_seed(4), [4, 2]).view(-1, 50)
    with torch.no_grad():
        before = token_encoder_fast(model.token_encoder, ids)
        model.token_encoder.highways[0].W_carry.mul_(-1.0)  # in-place update: cached packing must be rebuilt
        after = token_encoder_fast(model.token_encoder, ids)
        torch.testing.assert_close(after, model.token_encoder(ids), **F32_OUT)
    assert not torch.allclose(before, after)


# ---------------------------------------------------------------------------------------------- biLSTM
def _random_state(lstm: BiLSTM, batch: int, gen: torch.Generator, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    o = lstm.options
    h = torch.randn(o.n_layers, batch, 2 * o.projection_dim, generator=gen, dtype=dtype)
    c = torch.randn(o.n_layers, batch, 2 * o.dim, generator=gen, dtype=dtype) * 2
    return h, c


def _run_op(op, lstm, x, lengths, state, cots, dropout=0.0):
    """Forward, then backward of sum(cotangent * output) over outputs and final states."""
    x = x.clone().requires_grad_(True)
    h0, c0 = (s.clone().requires_grad_(True) for s in state)
    lstm.zero_grad()
    outputs, (h, c) = op(lstm, x, lengths, (h0, c0), dropout)
    loss = sum((y * w).sum() for y, w in zip(outputs + [h, c], cots))
    loss.backward()
    grads = grads_of(lstm)
    grads.update(x=x.grad, h0=h0.grad, c0=c0.grad)
    return [y.detach() for y in outputs] + [h.detach(), c.detach()], grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("overrides", [
    {},
    {"lstm__use_skip_connections": False, "lstm__n_layers": 3},
    {"lstm__cell_clip": None, "lstm__proj_clip": None},
])
def test_bilstm_forward_backward(dtype, overrides):
    gen = torch.Generator().manual_seed(5)
    lstm = make_bilm(seed=6, dtype=dtype, **overrides).lstm
    o = lstm.options
    lengths = torch.tensor([3, 0, 1, 2, 11, 7, 2])          # empty, length 1/2, unsorted, ties
    batch, steps = len(lengths), 13                         # extra padding beyond the longest row
    x = torch.randn(batch, steps, o.projection_dim, generator=gen, dtype=dtype)
    x = x * (torch.arange(steps)[None, :, None] < lengths[:, None, None])
    state = _random_state(lstm, batch, gen, dtype)
    cots = [torch.randn(batch, steps, 2 * o.projection_dim, generator=gen, dtype=dtype) for _ in range(o.n_layers)]
    cots += [torch.randn_like(s) for s in state]
    want_out, want_grad = _run_op(backends.get_op("reference", "bilstm"), lstm, x, lengths, state, cots)
    got_out, got_grad = _run_op(fast.bilstm, lstm, x, lengths, state, cots)
    tol_out = F64 if dtype == torch.float64 else F32_OUT
    for g, w in zip(got_out, want_out):
        torch.testing.assert_close(g, w, **tol_out)
    tol = (1e-9, 1e-9) if dtype == torch.float64 else (1e-4, 1e-4)
    assert_grads_close(got_grad, want_grad, *tol)
    # inference path (no autograd, packed weights, in-place buffers) gives the same numbers
    with torch.no_grad():
        outputs, (h, c) = fast.bilstm(lstm, x, lengths, state, 0.0)
    for g, w in zip(outputs + [h, c], want_out):
        torch.testing.assert_close(g, w, **tol_out)


@pytest.mark.parametrize("path", ["packed", "bmm"])
def test_bilstm_product_paths_match_reference(monkeypatch, path):
    """Both ways PairLinear multiplies (oneDNN-packed weight per direction; one bmm over the pair) give the
    reference's numbers, inference and training. Tiny weights normally always take the bmm path, so the
    thresholds are forced here; PackedLinear's own small-product fallback is switched off too."""
    from elmo_fast.fast.lstm import PairLinear
    from elmo_fast.fast.packing import PackedLinear
    if path == "packed":  # without oneDNN in the torch build this is PackedLinear's addmm per direction
        monkeypatch.setattr(PairLinear, "BMM_MAX_WEIGHT", 0)
        monkeypatch.setattr(PackedLinear, "MIN_PACKED_MACS", 0)
    else:
        monkeypatch.setattr(PairLinear, "BMM_MAX_WEIGHT", 1 << 40)
    gen = torch.Generator().manual_seed(15)
    lstm = make_bilm(seed=15).lstm
    o = lstm.options
    lengths = torch.tensor([6, 1, 0, 9, 4])                 # shrinking row counts: 4, 3, 3, 3, 2, 2, 1, 1, 1
    x = torch.randn(len(lengths), 10, o.projection_dim, generator=gen)
    x = x * (torch.arange(10)[None, :, None] < lengths[:, None, None])
    state = _random_state(lstm, len(lengths), gen, torch.float32)
    cots = [torch.randn(len(lengths), 10, 2 * o.projection_dim, generator=gen) for _ in range(o.n_layers)]
    cots += [torch.randn_like(t) for t in state]
    want_out, want_grad = _run_op(backends.get_op("reference", "bilstm"), lstm, x, lengths, state, cots)
    got_out, got_grad = _run_op(fast.bilstm, lstm, x, lengths, state, cots)
    for g, w in zip(got_out, want_out):
        torch.testing.assert_close(g, w, **F32_OUT)
    assert_grads_close(got_grad, want_grad, 1e-4, 1e-4)
    with torch.no_grad():
        outputs, (h, c) = fast.bilstm(lstm, x, lengths, state, 0.0)
    for g, w in zip(outputs + [h, c], want_out):
        torch.testing.assert_close(g, w, **F32_OUT)


def test_bilstm_empty_batch_and_all_empty_rows():
    lstm = make_bilm(seed=7).lstm
    o = lstm.options
    x = torch.zeros(3, 2, o.projection_dim)
    state = _random_state(lstm, 3, torch.Generator().manual_seed(7), torch.float32)
    outputs, (h, c) = fast.bilstm(lstm, x, torch.zeros(3, dtype=torch.long), state, 0.0)
    assert all(float(y.detach().abs().max()) == 0.0 for y in outputs)
    torch.testing.assert_close(h, state[0], rtol=0, atol=0)  # nothing ran: states untouched
    torch.testing.assert_close(c, state[1], rtol=0, atol=0)


def test_row_reordering_keeps_state_slots():
    """Permuting rows together with their initial states permutes outputs and final states the same way."""
    gen = torch.Generator().manual_seed(8)
    lstm = make_bilm(seed=8).lstm
    lengths = torch.tensor([5, 1, 9, 0, 5, 2])
    x = torch.randn(6, 9, lstm.options.projection_dim, generator=gen)
    h, c = _random_state(lstm, 6, gen, torch.float32)
    perm = torch.tensor([3, 0, 5, 2, 1, 4])
    with torch.no_grad():
        out, (h1, c1) = fast.bilstm(lstm, x, lengths, (h, c), 0.0)
        out_p, (h2, c2) = fast.bilstm(lstm, x[perm], lengths[perm], (h[:, perm], c[:, perm]), 0.0)
    for a, b in zip(out, out_p):
        torch.testing.assert_close(b, a[perm], rtol=0, atol=1e-6)
    torch.testing.assert_close(h2, h1[:, perm], rtol=0, atol=1e-6)
    torch.testing.assert_close(c2, c1[:, perm], rtol=0, atol=1e-6)


def test_dropout_applies_to_every_layer_input():
    """dropout=1 zeroes every layer input (both implementations, deterministically); 0 < p < 1 is random
    but scales kept inputs by 1/(1-p) like the reference."""
    gen = torch.Generator().manual_seed(9)
    lstm = make_bilm(seed=9).lstm
    lengths = torch.tensor([4, 2, 6])
    x = torch.randn(3, 6, lstm.options.projection_dim, generator=gen)
    state = _random_state(lstm, 3, gen, torch.float32)
    with torch.no_grad():
        want, (wh, wc) = backends.get_op("reference", "bilstm")(lstm, x, lengths, state, 1.0)
        got, (gh, gc) = fast.bilstm(lstm, x, lengths, state, 1.0)
        plain, _ = fast.bilstm(lstm, x, lengths, state, 0.0)
        torch.manual_seed(0)
        dropped, _ = fast.bilstm(lstm, x, lengths, state, 0.5)
    for g, w in zip(got + [gh, gc], want + [wh, wc]):
        torch.testing.assert_close(g, w, **F32_OUT)
    assert not torch.allclose(got[0], plain[0])
    assert not torch.allclose(dropped[0], plain[0]) and not torch.allclose(dropped[0], got[0])


@pytest.mark.parametrize("onednn_backward", [False, True])
def test_bilstm_streams_matches_reference(monkeypatch, onednn_backward):
    """``onednn_backward``: the backward's large products through oneDNN's GEMM (packing.pair_matmul; the threshold
    lowered to 0 so these small shapes take the path the original model's take)."""
    from elmo_fast.fast import packing
    if onednn_backward:
        if not packing.MKLDNN:
            pytest.skip("no oneDNN in this torch build: pair_matmul always uses the BLAS")
        monkeypatch.setattr(packing, "ONEDNN_MM_MIN_MACS", 0)
    gen = torch.Generator().manual_seed(10)
    lstm = make_bilm(seed=10).lstm
    o = lstm.options
    fw = torch.randn(5, 7, o.projection_dim, generator=gen, requires_grad=True)
    bw = torch.randn(5, 7, o.projection_dim, generator=gen, requires_grad=True)
    state = _random_state(lstm, 5, gen, torch.float32)
    results = []
    for op in (backends.get_op("reference", "bilstm_streams"), fast.bilstm_streams):
        lstm.zero_grad()
        fw.grad = bw.grad = None
        f_out, b_out, (h, c) = op(lstm, fw, bw, state, 0.0)
        torch.manual_seed(1)
        loss = sum((y * torch.randn(y.shape)).sum() for y in f_out + b_out + [h, c])
        loss.backward()
        grads = grads_of(lstm)
        grads.update(fw=fw.grad.clone(), bw=bw.grad.clone())
        results.append(([y.detach() for y in f_out + b_out + [h, c]], grads))
    (want, want_g), (got, got_g) = results
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **F32_OUT)
    assert_grads_close(got_g, want_g, 1e-4, 1e-4)


# ---------------------------------------------------------------------------------------------- whole model
def test_stateful_bilm_fast_equals_reference_across_calls():
    """Two stateful models (fast, reference) fed the same sequence of batches of changing size agree."""
    gen = torch.Generator().manual_seed(11)
    ref = make_bilm(seed=11)
    ref.stateful = True
    fst = make_bilm(seed=11)
    fst.stateful, fst.backend = True, "fast"
    for lengths in ([3, 1, 5], [2, 6, 0, 4], [1], [7, 2, 2, 3, 1]):
        ids = random_char_ids(gen, lengths)
        with torch.no_grad():
            want, got = ref(ids), fst(ids)
        for g, w in zip(got["activations"], want["activations"]):
            torch.testing.assert_close(g, w, **F32_OUT)
    torch.testing.assert_close(fst.states.h, ref.states.h, **F32_OUT)
    torch.testing.assert_close(fst.states.c, ref.states.c, **F32_OUT)


@pytest.mark.parametrize("name,sentence_file", CASES)
def test_fast_backend_reproduces_tensorflow(fixtures_dir, name, sentence_file):
    d, sentences, expected = load_case(fixtures_dir, name, sentence_file)
    model = BiLM.from_files(d / "options.json", d / "lm_weights.hdf5", backend="fast")
    assert run_protocol(top_layer_embedder(model), sentences, expected) < 1e-5


def test_allennlp_style_oracle_is_the_same_function():
    """The AllenNLP-style oracle (tests/oracles/, also the baseline that benchmarks/ time against the fast path)
    computes the reference's function, so the speed comparison is like for like."""
    from oracles.allennlp_style import AllenNlpStyleElmo

    model = make_bilm(seed=12)
    ids = random_char_ids(torch.Generator().manual_seed(12), [0, 1, 2, 9, 4], steps=11)
    with torch.no_grad():
        want = model(ids)["activations"]
        got = AllenNlpStyleElmo(model)(ids)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **F32_OUT)


def test_token_cache_reuses_vectors_and_follows_weights():
    from elmo_fast.fast import enable_token_cache

    model = make_bilm(seed=13)
    gen = torch.Generator().manual_seed(13)
    a = random_char_ids(gen, [4, 2, 6]).view(-1, 50)
    b = random_char_ids(gen, [3, 5]).view(-1, 50)
    cache = enable_token_cache(model, max_tokens=1000)
    with torch.no_grad():
        for ids in (a, b, a):
            torch.testing.assert_close(token_encoder_fast(model.token_encoder, ids), model.token_encoder(ids),
                                       **F32_OUT)
        assert cache.hits > 0 and cache.misses == len(cache.entries)
        model.token_encoder.b_proj.add_(1.0)  # weights changed: cached vectors must not be reused
        torch.testing.assert_close(token_encoder_fast(model.token_encoder, a), model.token_encoder(a), **F32_OUT)
    small = enable_token_cache(model, max_tokens=2)
    with torch.no_grad():
        token_encoder_fast(model.token_encoder, b)
    assert len(small.entries) == 2
    assert enable_token_cache(model, None) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_max_argmax_windows_matches_max(dtype):
    """The char-CNN's pooled max and its window index: the values are ``max``'s, the index holds the max (ties,
    frequent in bf16, may pick another tied window: any is a valid subgradient), -inf windows never win, NaN
    propagates; the index is uint8 and fits the 50 windows of a full-width token."""
    te = importlib.import_module("elmo_fast.fast.token_encoder")
    gen = torch.Generator().manual_seed(5)
    for U, W, F_ in [(1, 1, 1), (3, 50, 7), (17, 9, 130)]:
        y = torch.randn(U, W, F_, generator=gen).to(dtype)
        if W > 2:
            y[:, -2:, ::2] = float("-inf")        # masked windows (filters wider than the token's room)
            y[0, 1, 1] = y[0, 0, 1] = 5.0         # a tie
        v, j = te._max_argmax_windows(y)
        assert j.dtype == torch.uint8
        assert torch.equal(v, y.max(dim=1).values)
        assert torch.equal(y.gather(1, j.long().unsqueeze(1)).squeeze(1), v)
    y = torch.zeros(2, 4, 3)
    y[1, 2, 0] = float("nan")
    v, _ = te._max_argmax_windows(y)
    assert torch.isnan(v[1, 0]) and not torch.isnan(v[0]).any()


@pytest.mark.parametrize("stack", [True, False])
def test_pair_matmul_onednn_path(monkeypatch, stack):
    """pair_matmul through oneDNN's GEMM (threshold lowered to 0): the products of a@b within float32 rounding,
    transposed operands included, and the same bits at 1 and 2 threads."""
    from elmo_fast.fast import packing
    if not packing.MKLDNN:
        pytest.skip("no oneDNN in this torch build: pair_matmul always uses the BLAS")
    monkeypatch.setattr(packing, "ONEDNN_MM_MIN_MACS", 0)
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(2, 301, 97, generator=gen).transpose(1, 2)     # (2, 97, 301), a view
    b = torch.randn(2, 301, 517, generator=gen)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            y = packing.pair_matmul(a, b, stack=stack)
            results.append(y if stack else torch.stack(y))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0], results[1])
    torch.testing.assert_close(results[0], a @ b, rtol=1e-5, atol=1e-4)
    with numerics.use(order="allennlp"):      # BLAS order: exactly torch's product
        assert torch.equal(packing.pair_matmul(a, b), a @ b)
    # shapes that vary call to call would grow oneDNN's memory: those callers get the BLAS
    assert torch.equal(packing.pair_matmul(a, b, fixed_shapes=False), a @ b)


def test_bilstm_backward_uses_onednn_gemm_only_for_fixed_shapes(monkeypatch):
    """Training streams (all rows every step) may take oneDNN's GEMM; sentences of varying lengths may not."""
    import elmo_fast.fast.lstm as fast_lstm
    seen = []
    real = fast_lstm.pair_matmul
    monkeypatch.setattr(fast_lstm, "pair_matmul", lambda *a, **k: (seen.append(k["fixed_shapes"]), real(*a, **k))[1])
    gen = torch.Generator().manual_seed(4)
    lstm = make_bilm(seed=4).lstm
    P = lstm.options.projection_dim
    x = torch.randn(3, 6, P, generator=gen, requires_grad=True)
    state = _random_state(lstm, 3, gen, torch.float32)
    outs, _ = fast.bilstm(lstm, x, torch.tensor([6, 2, 4]), state, 0.0)
    outs[-1].sum().backward()
    assert seen and not any(seen)
    seen.clear()
    f_out, b_out, _ = fast.bilstm_streams(lstm, x, x.detach().flip(1).requires_grad_(True), state, 0.0)
    (f_out[-1].sum() + b_out[-1].sum()).backward()
    assert seen and all(seen)
