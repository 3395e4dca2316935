"""The biLSTM's floating-point operation order is AllenNLP's.

The AllenNLP-style implementation of ``tests/oracles/allennlp_style.py`` (separate ``input_linearity`` /
``state_linearity`` ``Linear`` layers in AllenNLP's weight layout, the +1 forget bias folded into the state bias at
load time, a per-step loop over the rows still active) is the oracle: with the same token embeddings and one thread,
the reference path must give the *same bits*, so any change of the order (the forget bias added at run time, the
bias added to the input product, one product over ``[x; h]``, a fused ``f*c + i*g``) makes these tests fail.
"""
import argparse
import os

import pytest
import torch

from elmo_fast.nn.bilm import BiLM
from elmo_fast.nn.lstm import FORGET_BIAS, folded_bias
from elmo_fast.options import options_from_dict

from oracles.allennlp_style import AllenNlpStyleElmo


def _randomized(model: BiLM, seed: int) -> BiLM:
    """Every parameter drawn with a fixed seed at a scale that keeps the LSTM out of saturation; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p.shape[-2] if p.dim() >= 2 else 1
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.dim() == 1 else 1.5 / fan_in ** 0.5))
    return model.eval()


def _model(backend: str, seed: int = 0, dim: int = 48, projection_dim: int = 16, order: str | None = None) -> BiLM:
    opts = options_from_dict({
        "lstm": {"dim": dim, "projection_dim": projection_dim, "n_layers": 2, "cell_clip": 3.0, "proj_clip": 3.0,
                 "use_skip_connections": True},
        "char_cnn": {"embedding": {"dim": 4}, "filters": [[1, 8], [2, 8]], "n_highway": 1, "n_characters": 262,
                     "max_characters_per_token": 50, "activation": "relu"}})
    model = BiLM(opts, stateful=True, backend=backend, order=order)
    return _randomized(model, seed)


def _stateful_baseline_run(base: AllenNlpStyleElmo, emb: torch.Tensor, lengths: torch.Tensor,
                           state: tuple[torch.Tensor, torch.Tensor] | None):
    """AllenNLP's ElmoLstm semantics on top of the baseline's per-step cell: sort, run, unsort, carry states."""
    o = base.options.lstm
    P, C = o.projection_dim, o.dim
    batch = emb.shape[0]
    h_all = emb.new_zeros(o.n_layers, batch, 2 * P) if state is None else state[0]
    c_all = emb.new_zeros(o.n_layers, batch, 2 * C) if state is None else state[1]
    sorted_len, order = torch.sort(lengths, descending=True)
    inverse = torch.argsort(order)
    layers, new_h, new_c = [[], []], [[], []], [[], []]
    for d in (0, 1):
        inputs = emb[order]
        for layer, cell in enumerate(base.cells[d]):
            y, h, c = base._cell_forward(cell, inputs, sorted_len.tolist(), h_all[layer, order, d * P:(d + 1) * P],
                                         c_all[layer, order, d * C:(d + 1) * C], backward=d == 1)
            if layer > 0:
                y = y + inputs
            layers[d].append(y[inverse])
            new_h[d].append(h[inverse])
            new_c[d].append(c[inverse])
            inputs = y
    out = [torch.cat([f, b], -1) for f, b in zip(*layers)]
    h = torch.stack([torch.cat([f, b], -1) for f, b in zip(*new_h)])
    c = torch.stack([torch.cat([f, b], -1) for f, b in zip(*new_c)])
    return out, (h, c)


def test_forget_bias_is_folded_in_float32():
    B = torch.tensor([0.1, -2.0, 1e-8, 0.3, 5.0, -1.0, 0.7, 0.2])  # C = 2: blocks i, j, f, o
    b = folded_bias(B)
    assert torch.equal(b[:4], B[:4]) and torch.equal(b[6:], B[6:])
    assert torch.equal(b[4:6], B[4:6] + torch.tensor(FORGET_BIAS, dtype=torch.float32))
    assert b[4] == torch.tensor(6.0) and b[5] == torch.tensor(0.0)


@pytest.mark.parametrize("lengths", [[9, 9, 9, 9, 9], [23, 14, 9, 3, 1], [17]])
def test_reference_lstm_is_bitwise_allennlp_order(lengths):
    """Three stateful calls (states carried), unequal lengths incl. one-row tails: identical bits."""
    torch.set_num_threads(1)
    model = _model("reference")
    base = AllenNlpStyleElmo(model)
    gen = torch.Generator().manual_seed(1)
    state = None
    lens = torch.tensor(lengths)
    mask = torch.arange(max(lengths))[None, :] < lens[:, None]
    for call in range(3):
        emb = torch.randn(len(lengths), max(lengths), 16, generator=gen) * mask[..., None]
        with torch.no_grad():
            got = model.forward_embeddings(emb, mask)["activations"][1:]
            want, state = _stateful_baseline_run(base, emb, lens, state)
        for layer, (g, w) in enumerate(zip(got, want)):
            assert torch.equal(g, w), f"call {call} layer {layer + 1}: max diff {float((g - w).abs().max())}"
        assert torch.equal(model.states.h, state[0]) and torch.equal(model.states.c, state[1])


@pytest.mark.parametrize("blas_only,fused_cell", [(False, False), (True, False), (True, True), (False, True)])
def test_fast_lstm_is_bitwise_allennlp_order_on_full_rows(monkeypatch, blas_only, fused_cell):
    """The fast path's products are matrix products over all rows of a step; where AllenNLP's are too (every
    row active, four or more rows: the BLAS's small-row and one-row kernels sum in other orders) the bits are
    AllenNLP's, i.e. the bias placement and the cell update follow its order. (The ``small`` preset's LSTM
    sizes: tinier products go through torch's own small-matrix loops instead of the BLAS.)

    Order "fast" with the fused CPU cell (elmo_fast.fast.native, the default where a C compiler exists) computes
    sigmoid and tanh itself (a few ulp from torch's): there the result is AllenNLP's within float32 noise, not
    bit for bit. Order "allennlp" never uses the fused cell."""
    from elmo_fast.fast import native
    if fused_cell and native.library() is None:
        pytest.skip("no C compiler: the fused cell is off here")
    torch.set_num_threads(1)
    monkeypatch.setenv(native.ENABLE_ENV, "1" if fused_cell else "0")
    native.reset()
    try:
        _check_full_rows(blas_only, exact=blas_only or not fused_cell)
    finally:
        monkeypatch.delenv(native.ENABLE_ENV)
        native.reset()


def _check_full_rows(blas_only: bool, exact: bool) -> None:
    model = _model("fast", dim=1024, projection_dim=128, order="allennlp" if blas_only else None)
    base = AllenNlpStyleElmo(model)
    gen = torch.Generator().manual_seed(2)
    lens = torch.full((6,), 11)
    mask = torch.ones(6, 11, dtype=torch.bool)
    state = None
    for call in range(2):
        emb = torch.randn(6, 11, 128, generator=gen)
        with torch.no_grad():
            got = model.forward_embeddings(emb, mask)["activations"][1:]
            want, state = _stateful_baseline_run(base, emb, lens, state)
        for g, w in zip(got, want):
            if exact:
                assert torch.equal(g, w), f"call {call}: max diff {float((g - w).abs().max())}"
            else:
                assert not torch.equal(g, w), "the fused cell did not run (the bits are torch's)"
                torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("lengths", [[23, 14, 9, 3, 1], [11, 11, 11, 11, 7, 3, 1], [5, 2], [1]])
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_fast_lstm_allennlp_order_is_bitwise_with_short_tails(lengths, grad):
    """order="allennlp": steps with 1-3 active rows (the tails of the longest sentences, or a batch of one to
    three) are multiplied per step and per direction in Linear's layout, as AllenNLP does, so unequal lengths
    give AllenNLP's bits too (the AllenNLP-style baseline; states carried over two calls). Both the inference
    path and the training Function's forward."""
    torch.set_num_threads(1)
    model = _model("fast", dim=1024, projection_dim=128, order="allennlp")
    model.requires_grad_(grad)
    base = AllenNlpStyleElmo(model)
    gen = torch.Generator().manual_seed(4)
    T = max(lengths)
    lens = torch.tensor(lengths)
    mask = torch.arange(T)[None, :] < lens[:, None]
    state = None
    for call in range(2):
        emb = torch.randn(len(lengths), T, 128, generator=gen) * mask[..., None]
        with torch.set_grad_enabled(grad):
            got = model.forward_embeddings(emb, mask)["activations"][1:]
        with torch.no_grad():
            want, state = _stateful_baseline_run(base, emb, lens, state)
        for layer, (g, w) in enumerate(zip(got, want)):
            assert torch.equal(g.detach(), w), f"call {call} layer {layer + 1}: max diff {float((g - w).abs().max())}"


def test_reference_token_encoder_is_bitwise_allennlp_order():
    """Char-CNN, highway (one product over [W_t, -W_c] with its bias, gate σ(-z_c)) and projection in
    AllenNLP's order: the same bits as the AllenNLP-style encoder at one thread."""
    from elmo_fast.chars import batch_to_ids
    torch.set_num_threads(1)
    model = _model("reference", seed=3, dim=1024, projection_dim=128)
    ids = batch_to_ids([["The", "token", "encoder", "runs", "on", "every", "position", "."], ["Short", "one"],
                        ["ünïcödé", "x" * 60]])
    with torch.no_grad():
        got = model.encode_tokens(ids)
        want = AllenNlpStyleElmo(model).encode(ids)
    assert torch.equal(got, want), float((got - want).abs().max())


# ---------------------------------------------------------------------------------------------- token encoder
#: the public models' char-CNN (2048 filters of widths 1-7, 16-dim char embeddings) and a small one of awkward
#: sizes (widths 1, 2, 3, 5, 7 with non-power-of-two counts; tanh; three highways)
_PUBLIC_CNN = {"activation": "relu", "embedding": {"dim": 16}, "n_highway": 2, "n_characters": 262,
               "max_characters_per_token": 50,
               "filters": [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]]}
_AWKWARD_CNN = {"activation": "tanh", "embedding": {"dim": 6}, "n_highway": 3, "n_characters": 262,
                "max_characters_per_token": 50, "filters": [[1, 5], [2, 11], [3, 24], [5, 9], [7, 33]]}


def _encoder_model(char_cnn: dict, projection_dim: int, seed: int) -> BiLM:
    opts = options_from_dict({"lstm": {"dim": 32, "projection_dim": projection_dim, "n_layers": 1, "cell_clip": 3.0,
                                       "proj_clip": 3.0, "use_skip_connections": True}, "char_cnn": char_cnn})
    model = BiLM(opts, stateful=False, backend="reference")
    return _randomized(model, seed)


def _char_id_batches(model: BiLM) -> dict[str, torch.Tensor]:
    """Token-encoder inputs ``(N, 50)`` as the biLM builds them (BOS/EOS, padding rows) of every size class."""
    from elmo_fast.chars import batch_to_ids
    from elmo_fast.nn.bilm import add_sentence_boundaries, token_mask
    gen = torch.Generator().manual_seed(5)
    letters = "abcdefghijklmnopqrstuvwxyzäöüßé,.'"
    words = ["".join(letters[int(k)] for k in torch.randint(len(letters), (n,), generator=gen))
             for n in torch.randint(1, 14, (120,), generator=gen).tolist()]
    sentences = [words[k:k + n] for k, n in zip(range(0, 120, 9), [9, 1, 17, 4, 12, 2, 9, 15, 6, 3, 11, 7, 5, 8])]
    cases = {
        "many rows": sentences,                                        # N >> 16, many distinct tokens
        "few distinct": [["the", "the", "a"]] * 6,                      # N = 30 rows, 5 distinct: padded to 16
        "one token": [["x"]],                                           # N = 3: all rows, AllenNLP's small kernels
        "under 16 rows": [["Hello", "world", "!"], ["Hi"]],           # N = 10 with a padding row
        "long tokens": [["x" * 48, "y" * 60, "ab" * 30], ["z"] * 9],    # 48 bytes, truncated at 50: full width
        "empty sentence": [[], ["one", "two", "three", "four", "five", "six", "seven"]],
    }
    out = {}
    for name, batch in cases.items():
        ids = batch_to_ids(batch)
        ids, _ = add_sentence_boundaries(ids, token_mask(ids), model.bos_ids, model.eos_ids)
        out[name] = ids.reshape(-1, ids.shape[-1])
    return out


@pytest.mark.parametrize("cnn,projection_dim", [(_PUBLIC_CNN, 128), (_AWKWARD_CNN, 19)], ids=["public", "awkward"])
def test_fast_token_encoder_allennlp_order_is_bitwise_reference(cnn, projection_dim):
    """order="allennlp": the same bits as AllenNLP's modules (the baseline's ``Conv1d`` / ``Linear`` layers, in
    AllenNLP's weight layouts) at one thread, for every batch size class (each distinct token once, only the
    windows that can differ, padding to 16 rows, all rows under 16), and so as the reference token encoder at every
    size (one sentence of one token included: 3 positions, where the BLAS's small-row kernels depend on the
    operand layout); order="fast" stays within the fast path's float32 tolerance."""
    from elmo_fast import numerics
    from elmo_fast.fast.token_encoder import token_encoder_fast
    torch.set_num_threads(1)
    model = _encoder_model(cnn, projection_dim, seed=7)
    enc = model.token_encoder
    allennlp = AllenNlpStyleElmo(model)
    for name, ids in _char_id_batches(model).items():
        with torch.no_grad():
            want = allennlp.encode(ids)
            ref = enc(ids)
            with numerics.use(order="allennlp"):
                got = token_encoder_fast(enc, ids)
            with numerics.use(order="fast"):
                fast = token_encoder_fast(enc, ids)
        assert torch.equal(got, want), f"{name} ({ids.shape[0]} rows): max diff {float((got - want).abs().max())}"
        assert torch.equal(got, ref), f"{name}: max diff to the reference {float((got - ref).abs().max())}"
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=2e-5)  # tests/test_fast.py's F32_OUT


def test_fast_token_encoder_allennlp_order_reads_the_model_setting():
    """BiLM(order=...) reaches the token encoder: the model's own setting, not only numerics.use."""
    torch.set_num_threads(1)
    model = _encoder_model(_PUBLIC_CNN, 128, seed=8)
    ids = _char_id_batches(model)["many rows"]
    with torch.no_grad():
        want = model.token_encoder(ids)
        model.backend, model.order = "fast", "allennlp"
        assert torch.equal(model.encode_tokens(ids), want)
        model.order = "fast"
        fast = model.encode_tokens(ids)
    assert not torch.equal(fast, want)  # the public char-CNN's fast order sums differently (4e-6 here)
    torch.testing.assert_close(fast, want, rtol=1e-5, atol=2e-5)


def test_fast_token_encoder_allennlp_order_training():
    """With gradients: forward bits as the reference; gradients within float32 tolerance (duplicates' gradients
    are summed in another order, as in the fast order)."""
    from elmo_fast import numerics
    from elmo_fast.fast.token_encoder import token_encoder_fast
    torch.set_num_threads(1)
    model = _encoder_model(_AWKWARD_CNN, 19, seed=9).train()
    enc = model.token_encoder
    gen = torch.Generator().manual_seed(10)
    for name in ("many rows", "few distinct", "under 16 rows"):
        ids = _char_id_batches(model)[name]
        cot = torch.randn(ids.shape[0], enc.output_dim, generator=gen)
        enc.zero_grad()
        want = enc(ids)
        (want * cot).sum().backward()
        want_grads = [p.grad.clone() for p in enc.parameters()]
        enc.zero_grad()
        with numerics.use(order="allennlp"):
            got = token_encoder_fast(enc, ids)
        (got * cot).sum().backward()
        assert torch.equal(got.detach(), want.detach()), name
        for (pname, p), g in zip(enc.named_parameters(), want_grads):
            torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-4, msg=f"{name}: {pname}")


def test_token_cache_keeps_the_orders_apart():
    """A token cache filled in one order is not served in the other: allennlp stays bitwise, fast stays fast."""
    from elmo_fast import numerics
    from elmo_fast.fast.token_encoder import enable_token_cache, token_encoder_fast
    torch.set_num_threads(1)
    model = _encoder_model(_PUBLIC_CNN, 128, seed=11)
    enc = model.token_encoder
    ids = _char_id_batches(model)["many rows"]
    with torch.no_grad():
        want = enc(ids)
        with numerics.use(order="fast"):
            fast = token_encoder_fast(enc, ids)
        cache = enable_token_cache(model)
        try:
            for order, expected in (("fast", fast), ("allennlp", want), ("allennlp", want), ("fast", fast)):
                with numerics.use(order=order):
                    got = token_encoder_fast(enc, ids[: ids.shape[0] // 2])   # fills part of the cache
                    got = token_encoder_fast(enc, ids)                          # hits and misses
                assert torch.equal(got, expected), order
            assert cache.hits > 0
        finally:
            enable_token_cache(model, None)


def test_whole_fast_pipeline_allennlp_order_is_bitwise_reference_on_full_rows():
    """Char ids to the three layers, fast backend with order="allennlp" vs the reference: identical bits where
    every row is active at every step (the biLSTM's condition above), two calls with states carried."""
    from elmo_fast.chars import batch_to_ids
    torch.set_num_threads(1)
    opts = options_from_dict({"lstm": {"dim": 1024, "projection_dim": 128, "n_layers": 2, "cell_clip": 3.0,
                                       "proj_clip": 3.0, "use_skip_connections": True}, "char_cnn": _PUBLIC_CNN})
    ref = BiLM(opts, stateful=True, backend="reference")
    gen = torch.Generator().manual_seed(12)
    with torch.no_grad():
        for p in ref.parameters():
            fan_in = p.shape[-2] if p.dim() >= 2 else 1
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.dim() == 1 else 1.5 / fan_in ** 0.5))
    fast = BiLM(opts, stateful=True, backend="fast", order="allennlp")
    fast.load_state_dict(ref.state_dict())
    words = "the quick brown fox jumps over a lazy dog while seven tired otters watch quietly".split()
    for call in range(2):
        ids = batch_to_ids([[words[(k * 5 + j + call) % len(words)] for j in range(7)] for k in range(6)])
        with torch.no_grad():
            got, want = fast(ids)["activations"], ref(ids)["activations"]
        for layer, (g, w) in enumerate(zip(got, want)):
            assert torch.equal(g, w), f"call {call} layer {layer}: max diff {float((g - w).abs().max())}"


# ---------------------------------------------------------------------------------------------- compat defaults
@pytest.fixture
def public_cnn_files(tmp_path):
    """A model with the public char-CNN (where the fast order's token vectors differ from AllenNLP's)."""
    from helpers import write_model
    opts = {"lstm": {"dim": 48, "projection_dim": 24, "n_layers": 2, "cell_clip": 3, "proj_clip": 3,
                     "use_skip_connections": True}, "char_cnn": _PUBLIC_CNN}
    return tuple(str(p) for p in write_model(tmp_path / "public", opts, seed=13))


def test_compat_classes_default_to_allennlp_order(public_cnn_files):
    import elmo_fast
    from elmo_fast.compat import allennlp as A
    o, w = public_cnn_files
    assert A._ElmoBiLm(o, w).order == "allennlp"
    elmo = A.Elmo(o, w, 1)
    assert isinstance(elmo._elmo_lstm, A._ElmoBiLm) and elmo._elmo_lstm.order == "allennlp"
    assert elmo._elmo_lstm._token_embedder.order == "allennlp" and elmo._elmo_lstm._elmo_lstm.order == "allennlp"
    assert A.ElmoEmbedder(o, w).elmo_bilm.order == "allennlp"
    assert A.ElmoTokenEmbedder(o, w)._elmo._elmo_lstm.order == "allennlp"
    assert A._ElmoCharacterEncoder(o, w).order == "allennlp"
    assert A.ElmoLstm(24, 24, 48, 2).order == "allennlp"
    # the user's order= wins (None: the caller's / process setting)
    assert A._ElmoBiLm(o, w, order="fast").order == "fast"
    assert A.Elmo(o, w, 1, order="fast")._elmo_lstm.order == "fast"
    assert A.Elmo(o, w, 1, order=None)._elmo_lstm.order is None
    assert A.ElmoEmbedder(o, w, order="fast").elmo_bilm.order == "fast"
    assert A.ElmoTokenEmbedder(o, w, order="fast")._elmo._elmo_lstm.order == "fast"
    assert A._ElmoCharacterEncoder(o, w, order="fast").order == "fast"
    assert A.ElmoLstm(24, 24, 48, 2, order="fast").order == "fast"
    view = A.Elmo(o, w, 1)._elmo_lstm
    view._token_embedder.order = "fast"  # a view sets the biLM's order
    assert view.order == "fast"
    with pytest.raises(ValueError, match="order"):
        A.Elmo(o, w, 1, order="tf")
    # the native API keeps the process default (order None: "fast" unless ELMO_FAST_ONEDNN=0)
    assert elmo_fast.Elmo(o, w, 1)._elmo_lstm.order is None
    assert elmo_fast.ElmoEmbedder(o, w).elmo_bilm.order is None


def test_compat_numbers_are_allennlp_order(public_cnn_files):
    """Token vectors of the compat classes on the fast backend are the reference's bits (AllenNLP's order),
    including the vectors cached for vocab_to_cache; the same classes with order="fast" are not."""
    from elmo_fast.chars import batch_to_ids
    from elmo_fast.compat import allennlp as A
    torch.set_num_threads(1)
    o, w = public_cnn_files
    ref = BiLM.from_files(o, w, backend="reference")
    words = ["Tokens", "of", "every", "length", "internationalization", "x", ".", "ünïcödé", "the"] * 3
    ids = batch_to_ids([words[:7], words[7:20], words[3:5]])
    with torch.no_grad():
        want, mask = ref.embed_tokens(ids)
        got = A._ElmoCharacterEncoder(o, w, backend="fast")(ids)
        assert torch.equal(got["token_embedding"], want) and torch.equal(got["mask"], mask)
        fast = A._ElmoCharacterEncoder(o, w, backend="fast", order="fast")(ids)["token_embedding"]
        assert not torch.equal(fast, want)
        assert torch.equal(A._ElmoBiLm(o, w, backend="fast").embed_tokens(ids)[0], want)
        vocab = ["<pad>"] + sorted(set(words))
        cached = A.Elmo(o, w, 1, vocab_to_cache=vocab, backend="fast")._elmo_lstm._word_embedding.weight
        one_each = ref.encode_tokens(batch_to_ids([[t] for t in vocab]))[:, 0]
        assert torch.equal(cached, one_each)
        module = A._ElmoBiLm(o, w, backend="fast", order="fast")  # Elmo's order applies before caching
        cached = A.Elmo(None, None, 1, vocab_to_cache=vocab, module=module)._elmo_lstm._word_embedding.weight
        assert module.order == "allennlp" and torch.equal(cached, one_each)


def test_elmo_command_runs_in_allennlp_order(monkeypatch, tmp_path):
    """elmo_command calls the embed job directly (no command line), in AllenNLP's order unless the namespace says
    otherwise, with the command's settings (stateful, output replaced, the model files hashed)."""
    from elmo_fast import numerics
    from elmo_fast.compat import allennlp as A
    seen = []

    def job(load, input_file, output_file, **kw):
        seen.append((numerics.current().order, os.path.basename(input_file), os.path.basename(output_file), kw))

    monkeypatch.setattr(A, "embed_to_hdf5", job)
    monkeypatch.chdir(tmp_path)
    for name in ("o.json", "w.hdf5"):
        (tmp_path / name).write_text("")
    args = dict(input_file="in.txt", output_file="out.hdf5", top=True, options_file="o.json", weight_file="w.hdf5")
    assert A.elmo_command(argparse.Namespace(**args)) == 0
    assert A.elmo_command(argparse.Namespace(**args, order="fast", batch_size="8")) == 0
    assert [s[0] for s in seen] == ["allennlp", "fast"]
    assert seen[0][1:3] == ("in.txt", "out.hdf5")
    kw = seen[0][3]
    assert (kw["output_format"], kw["batch_size"], kw["stateful"], kw["overwrite"]) == ("top", 64, True, True)
    assert [os.path.basename(p) for p in kw["model_files"]] == ["o.json", "w.hdf5"]
    assert seen[1][3]["batch_size"] == 8
    with pytest.raises(ValueError, match="order"):
        A.elmo_command(argparse.Namespace(**args, order="tf"))
    for bad in (0, 2.5, "x"):
        with pytest.raises(ValueError, match="batch_size"):
            A.elmo_command(argparse.Namespace(**args, batch_size=bad))
    with pytest.raises(FileNotFoundError, match="weight_file"):
        A.elmo_command(argparse.Namespace(**{**args, "weight_file": "missing.hdf5"}))
    assert len(seen) == 2
