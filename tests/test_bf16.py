"""bf16 products on the fast CPU path (``numerics`` precision ``"bf16"``): the arithmetic, the tolerances against
the float32 reference, what stays float32, the resume fingerprint and the CLI flag.

Tolerances (stated once, used below):

* one product: bfloat16 inputs, float32 accumulation, result rounded once to bfloat16 (oneDNN writes bf16) ->
  ``|y - exact(bf16(x) @ bf16(W))| <= 2^-8 |exact| + 1e-6`` (2^-9 rounding bound, doubled);
* model outputs vs the float32 reference (tiny model, clipped states, weights scaled so the clips are active):
  per layer ``mean |diff| <= 2% of mean |ref|``, ``max |diff| <= 8% of max |ref|``, cosine of every token vector
  ``>= 0.995``. Measured on these shapes: mean 0.3-0.9%, max 0.4-3%. The float32 fast path is ~1e-7 here; the
  bf16 mean difference must exceed ``1e-4 * mean |ref|`` (the setting really changes the arithmetic);
* training gradients vs the reference: ``max |diff| <= 5%`` and ``mean |diff| <= 1.5%`` of the gradient's
  max |value| per parameter.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from elmo_fast import numerics
from elmo_fast.errors import UserError
from elmo_fast.fast import packing
from elmo_fast.fast import lstm as fast_lstm
from elmo_fast.fast.packing import PackedLinear, PairLinear
from elmo_fast.nn.bilm import BiLM
from elmo_fast.options import options_from_dict
from elmo_fast import backend as backends

from helpers import random_weights, tiny_options

BF16_REL = 2.0 ** -8
LAYER_MEAN_REL, LAYER_MAX_REL, MIN_COS = 0.02, 0.08, 0.995
GRAD_MAX_REL, GRAD_MEAN_REL = 0.05, 0.015


def _bf(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).double()


def _exact16(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """The exact product of the bf16-rounded operands (float64), plus the float32 bias."""
    y = _bf(x) @ _bf(W)
    return y if b is None else y + b.double()


def _assert_product(got: torch.Tensor, want: torch.Tensor, scale: torch.Tensor | None = None) -> None:
    """``got`` float32 within one bf16 rounding of ``want`` (relative to ``scale``, default ``|want|``: oneDNN adds
    the bias before it rounds, the fallback after, so with a bias the bound also allows ``|x @ W|``)."""
    assert got.dtype == torch.float32
    err = (got.double() - want).abs()
    bound = BF16_REL * (want.abs() if scale is None else scale) + 1e-6
    assert bool((err <= bound).all()), f"max excess {float((err - bound).max())}"


@pytest.fixture(autouse=True)
def _bf16_everywhere(bf16_arithmetic):
    """Every test here computes in bf16, also on CPUs without bf16 products (conftest's ``bf16_arithmetic``)."""


@pytest.fixture(params=["native", "emulated"])
def path(request, monkeypatch):
    """Both ways bf16 products run: oneDNN's bf16 packed weights, and torch's bf16 matmul (the arithmetic on CPUs
    without them, when emulated)."""
    if request.param == "native" and not packing.BF16_NATIVE:
        pytest.skip("this CPU/torch build has no oneDNN bf16 products; the emulated case covers the arithmetic")
    if request.param == "emulated":
        monkeypatch.setattr(packing, "BF16_NATIVE", False)
        monkeypatch.setattr(packing, "BF16_EMULATE", True)
    return request.param


def test_without_bf16_products_bf16_runs_float32_with_one_warning(monkeypatch, caplog):
    """What a user on a CPU without bf16 products (AVX2) gets: float32, bit for bit, and one warning."""
    monkeypatch.setattr(packing, "BF16_NATIVE", False)
    monkeypatch.setattr(packing, "BF16_EMULATE", False)
    monkeypatch.setattr(packing, "_WARNED", set())
    ids = _char_ids(torch.Generator().manual_seed(4), [9, 1, 0, 5], 9)
    fp32, bf16 = _bilm("fast"), _bilm("fast", "bf16")
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="elmo_fast.fast.packing"):
        want = fp32(ids)["activations"]
        got = [bf16(ids)["activations"] for _ in range(2)]
    for run in got:
        assert all(torch.equal(a, b) for a, b in zip(run, want))
    warnings = [r.getMessage() for r in caplog.records if r.name == "elmo_fast.fast.packing"]
    assert len(warnings) == 1 and "running float32" in warnings[0], warnings


# ------------------------------------------------------------------------------------------------ one product
def test_inputs_are_rounded_to_bf16_and_accumulated_in_float32(path):
    # 1 + 2^-10 is 1 in bf16: 300 such terms sum to exactly 300 in bf16 arithmetic (300 is a bf16 number) and to
    # 300.29... in float32; a bf16 accumulator would stall at 256 (256 + 1 rounds back to 256 in bf16)
    x = torch.full((3, 300), 1.0 + 2.0 ** -10)
    W = torch.ones(300, 5)
    lin = PackedLinear(W)
    with numerics.use(precision="bf16"):
        y = lin(x)
    assert y.dtype == torch.float32
    assert torch.equal(y, torch.full((3, 5), 300.0))
    assert float(lin(x)[0, 0]) == pytest.approx(300 * (1 + 2 ** -10), rel=1e-6)  # fp32 outside the context


@pytest.mark.parametrize("n", [0, 1, 37, 70])
def test_packed_linear_bf16(path, n):
    gen = torch.Generator().manual_seed(n)
    x = torch.rand(n, 701, generator=gen)                 # positive terms: no cancellation, sums ~175
    W, b = torch.rand(701, 45, generator=gen), torch.randn(45, generator=gen)
    lin = PackedLinear(W, b, batch_hint=16)
    with numerics.use(precision="bf16"):
        y = lin(x)
    assert y.shape == (n, 45)
    _assert_product(y, _exact16(x, W, b), _exact16(x, W, b).abs() + _exact16(x, W).abs())
    assert lin.weight.dtype == torch.float32 and lin.bias.dtype == torch.float32   # master copies untouched


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("route", ["bmm", "packed"])
def test_pair_linear_bf16_every_entry_point(path, bias, route, monkeypatch):
    """Both bf16 routes of PairLinear: one bmm over the pair (small weights, narrow outputs: this 97 x 131) and the
    per-direction packed products (forced here by a zero output limit)."""
    if route == "packed":
        monkeypatch.setattr(PairLinear, "BF16_BMM_MAX_OUT", 0)
    gen = torch.Generator().manual_seed(2)
    W = torch.randn(2, 97, 131, generator=gen)
    b = torch.randn(2, 131, generator=gen) if bias else None
    pair = PairLinear(W, b, batch_hint=5)
    for n in (1, 5, 33):
        x = torch.randn(2, n, 97, generator=gen)
        want = torch.stack([_exact16(x[d], W[d], None if b is None else b[d]) for d in range(2)])
        scale = want.abs() + torch.stack([_exact16(x[d], W[d]) for d in range(2)]).abs()
        with numerics.use(precision="bf16"):
            _assert_product(pair(x), want, scale)
            out = torch.full((2, n, 131), float("nan"))
            assert pair(x, out=out) is out
            _assert_product(out, want, scale)
            acc = torch.randn(2, n, 131, generator=gen)
            start = acc.double().clone()
            pair.add_into_fn(n)(acc, x)
            if b is None:
                _assert_product(pair.fn(n)(x, None), want)
        assert acc.dtype == torch.float32
        # the product's own rounding, then one float32 addition
        bound = BF16_REL * scale + 2.0 ** -23 * (start + want).abs() + 1e-6
        assert bool(((acc.double() - (start + want)).abs() <= bound).all())
    packed_built = isinstance(pair.packed[0]._packed16, torch.Tensor)
    assert packed_built == (route == "packed" and path == "native")


def test_matmul_bf16_forward_and_gradients(path):
    gen = torch.Generator().manual_seed(4)
    a = torch.rand(2, 300, 53, generator=gen).transpose(1, 2).requires_grad_(True)   # (2, 53, 300), a view
    w = torch.rand(2, 300, 29, generator=gen).requires_grad_(True)
    with numerics.use(precision="bf16"):
        y = packing.matmul(a, w)
        _assert_product(y.detach(), _bf(a.detach()) @ _bf(w.detach()))
        g = torch.rand(y.shape, generator=gen)
        y.backward(g)
    assert a.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    _assert_product(a.grad, _bf(g) @ _bf(w.detach()).transpose(1, 2))   # gradient products are bf16 products too
    _assert_product(w.grad, _bf(a.detach()).transpose(1, 2) @ _bf(g))
    assert torch.equal(packing.matmul(a.detach(), w.detach()), a.detach() @ w.detach())   # fp32: plain a @ b


def test_bf16_copies_are_rebuilt_when_the_weight_changes(path):
    W = torch.rand(64, 40)
    lin = PackedLinear(W)
    x = torch.rand(8, 64)
    with numerics.use(precision="bf16"):
        lin(x)
    first = lin.weight16
    with numerics.use(precision="bf16"):
        lin(x)
    assert lin.weight16 is first   # made once

    # through the parameter cache: an in-place update of the parameter (an optimizer step) rebuilds the copies
    param = torch.nn.Parameter(torch.rand(64, 40))

    def prepared():
        return packing.cached("test_bf16", [param], lambda: PackedLinear(param.detach()))
    with numerics.use(precision="bf16"):
        before = prepared()(x)
        with torch.no_grad():
            param.mul_(2.0)
        after = prepared()(x)
    _assert_product(after, _exact16(x, param.detach()))
    assert not torch.equal(before, after)


# ------------------------------------------------------------------------------------------------ the model
def _options(**kw):
    return tiny_options(lstm__dim=75, lstm__projection_dim=23, **kw)


def _bilm(backend: str, precision: str | None = None, seed: int = 5, **kw) -> BiLM:
    d = _options(**kw)
    model = BiLM(options_from_dict(d), stateful=False, backend=backend, precision=precision).eval()
    model.load_bilm_tf_weights(random_weights(d, seed=seed))
    return model


def _char_ids(gen: torch.Generator, lengths: list[int], steps: int) -> torch.Tensor:
    ids = torch.randint(1, 260, (len(lengths), steps, 50), generator=gen)
    word_len = torch.randint(1, 12, (len(lengths), steps, 1), generator=gen)
    ids = torch.where(torch.arange(50) < word_len, ids, torch.full_like(ids, 261))   # word, then PAD run
    for b, n in enumerate(lengths):
        ids[b, n:] = 0
    return ids


def _compare_layers(outs, ref, mask, label):
    for layer, (o, r) in enumerate(zip(outs, ref)):
        o, r = o[mask], r[mask]                                  # (tokens, 2P) valid positions only
        diff = (o - r).abs()
        assert float(diff.mean()) <= LAYER_MEAN_REL * float(r.abs().mean()), (label, layer, float(diff.mean()))
        assert float(diff.max()) <= LAYER_MAX_REL * float(r.abs().max()), (label, layer, float(diff.max()))
        cos = torch.nn.functional.cosine_similarity(o.double(), r.double(), dim=-1)
        assert float(cos.min()) >= MIN_COS, (label, layer, float(cos.min()))
        assert float(diff.mean()) > 1e-4 * float(r.abs().mean()), (label, layer, "bf16 did not change the numbers")


@pytest.mark.parametrize("packed_pairs", [True, False])
def test_bilm_forward_per_layer_within_tolerance(path, monkeypatch, packed_pairs):
    if packed_pairs:  # tiny weights: force PairLinear off its fp32 bmm choice (bf16 ignores it anyway)
        monkeypatch.setattr(PairLinear, "BMM_MAX_WEIGHT", 0)
        monkeypatch.setattr(PackedLinear, "MIN_PACKED_MACS", 0)
    gen = torch.Generator().manual_seed(11)
    lengths = [11, 1, 0, 7, 3, 10, 1]                      # empty and length-1 sentences, padding
    ids = _char_ids(gen, lengths, 11)
    ref = _bilm("reference")
    fast16 = _bilm("fast", "bf16")
    with torch.no_grad():
        want = ref(ids)
        got = fast16(ids)
    assert torch.equal(got["mask"], want["mask"])
    assert all(a.dtype == torch.float32 for a in got["activations"])
    _compare_layers(got["activations"], want["activations"], want["mask"], "inference")
    for a in got["activations"]:
        assert float(a[~want["mask"]].abs().max()) == 0.0  # padding stays zero
    assert all(p.dtype == torch.float32 for p in fast16.parameters())
    # the model's setting is what counts: the same model in fp32 is the float32 path again
    fast16.precision = "fp32"
    with torch.no_grad():
        again = fast16(ids)["activations"]
    for a, r in zip(again, want["activations"]):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=2e-5)


def test_context_precision_reaches_models_without_their_own():
    gen = torch.Generator().manual_seed(12)
    ids = _char_ids(gen, [6, 4], 6)
    model = _bilm("fast")
    with torch.no_grad():
        fp32 = model(ids)["activations"][2]
        with numerics.use(precision="bf16"):
            bf16 = model(ids)["activations"][2]
    assert not torch.equal(fp32, bf16)
    torch.testing.assert_close(bf16, fp32, rtol=0.0, atol=LAYER_MAX_REL * float(fp32.abs().max()))


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("steps,lengths", [(9, [9, 1, 5, 0, 8]), (4, [4, 4, 4])])
def test_bilstm_training_gradients_within_tolerance(path, steps, lengths):
    """Forward and the hand-written backward through time under bf16 vs the float32 reference: the gradients of
    every LSTM weight, of the inputs and of the initial state. (Backward runs inside the context: the per-step
    products of the backward read the setting when they run.)"""
    gen = torch.Generator().manual_seed(21)
    lstm_ref = _bilm("reference").lstm
    lstm_16 = _bilm("reference").lstm   # same weights; the op decides the path
    o = lstm_ref.options
    lengths_t = torch.tensor(lengths)
    x = torch.randn(len(lengths), steps, o.projection_dim, generator=gen)
    x = x * (torch.arange(steps)[None, :, None] < lengths_t[:, None, None])
    h = torch.randn(o.n_layers, len(lengths), 2 * o.projection_dim, generator=gen)
    c = torch.randn(o.n_layers, len(lengths), 2 * o.dim, generator=gen)
    cots = [torch.randn(len(lengths), steps, 2 * o.projection_dim, generator=gen) for _ in range(o.n_layers)]
    cots += [torch.randn_like(h), torch.randn_like(c)]

    def run(op, lstm):
        xi, hi, ci = (t.clone().requires_grad_(True) for t in (x, h, c))
        outs, (hf, cf) = op(lstm, xi, lengths_t, (hi, ci), 0.0)
        loss = sum((y * w).sum() for y, w in zip(outs + [hf, cf], cots))
        loss.backward()
        g = {n: p.grad.detach().clone() for n, p in lstm.named_parameters()}
        g.update(x=xi.grad, h0=hi.grad, c0=ci.grad)
        return g

    want = run(backends.get_op("reference", "bilstm"), lstm_ref)
    with numerics.use(precision="bf16"):
        got = run(fast_lstm.bilstm_fast, lstm_16)
    assert got.keys() == want.keys()
    changed = False
    for name, w in want.items():
        g = got[name]
        assert g.dtype == torch.float32, name
        scale = float(w.abs().max()) or 1.0
        diff = (g - w).abs()
        assert float(diff.max()) <= GRAD_MAX_REL * scale, (name, float(diff.max()) / scale)
        assert float(diff.mean()) <= GRAD_MEAN_REL * scale, (name, float(diff.mean()) / scale)
        changed |= float(diff.max()) > 1e-5 * scale
    assert changed, "bf16 did not change the gradients"
    assert all(p.dtype == torch.float32 for p in lstm_16.parameters())


# ------------------------------------------------------------------------------------------------ wrappers, CLI
def _files(tmp_path):
    model = _bilm("reference")
    opt, w = tmp_path / "options.json", tmp_path / "weights.hdf5"
    model.save(opt, w)
    return opt, w


def test_fingerprint_label_carries_precision_and_order(tmp_path):
    from elmo_fast import ElmoEmbedder
    opt, w = _files(tmp_path)
    labels = {(p, o): ElmoEmbedder(opt, w, backend="fast", precision=p, order=o).backend_label()
              for p in ("fp32", "bf16") for o in ("fast", "allennlp")}
    assert len(set(labels.values())) == 4, labels
    assert labels[("bf16", "fast")] == "fast/fast bf16/fast"
    # the context decides for a model without its own setting
    plain = ElmoEmbedder(opt, w, backend="fast")
    with numerics.use(precision="bf16"):
        assert plain.backend_label() == labels[("bf16", "fast")]
    assert plain.backend_label() == labels[("fp32", "fast")]


@pytest.mark.parametrize("first, second", [("fp32", "bf16"), ("bf16", "fp32")])
def test_embed_resume_never_mixes_precisions(tmp_path, monkeypatch, caplog, first, second):
    """An interrupted run in one precision leaves completed chunks; a rerun in the other recomputes every one of
    them (and its output equals a fresh run's), while a rerun in the same precision reuses them."""
    import logging
    import h5py
    from elmo_fast import ElmoEmbedder
    opt, w = _files(tmp_path)
    lines = [" ".join(f"w{(i * 7 + k) % 13}" for k in range(1 + i % 5)) for i in range(12)]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.hdf5"

    def partial(precision):
        emb = ElmoEmbedder(opt, w, backend="fast", precision=precision, stateful=False)
        real, seen = emb.embed_batch, []

        def dying(batch):
            if len(seen) == 4:
                raise KeyboardInterrupt
            seen.append(batch)
            return real(batch)
        monkeypatch.setattr(emb, "embed_batch", dying)
        with pytest.raises(KeyboardInterrupt):
            emb.embed_file(str(src), out, batch_size=2, chunk_lines=4, progress=False)
        monkeypatch.undo()

    def run(precision, target):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            ElmoEmbedder(opt, w, backend="fast", precision=precision, stateful=False).embed_file(
                str(src), target, batch_size=2, chunk_lines=4, progress=False)
        return caplog.text

    partial(first)
    log = run(second, out)
    assert "recomputing: the backend or its arithmetic (precision, order) changed" in log
    assert "0 of 3 chunks reused" in log
    run(second, tmp_path / "fresh.hdf5")
    with h5py.File(out) as a, h5py.File(tmp_path / "fresh.hdf5") as b:
        for k in map(str, range(len(lines))):
            np.testing.assert_array_equal(a[k][()], b[k][()], err_msg=k)
    out.unlink()
    partial(first)                                  # the same precision: the completed chunks are reused
    assert "2 of 3 chunks reused" in run(first, out)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_bf16_off_the_fast_backend_is_an_error(tmp_path, backend):
    """The wrappers refuse bf16 where it would be silently float32 (the check runs before any kernel is needed,
    so triton's refusal is tested on the CPU too); the plain order setting stays allowed."""
    from elmo_fast import ElmoEmbedder
    opt, w = _files(tmp_path)
    with pytest.raises(UserError, match=f"precision='bf16'.*fast CPU backend.*{backend}"):
        ElmoEmbedder(opt, w, backend=backend, precision="bf16")
    with numerics.use(precision="bf16"), pytest.raises(UserError, match="precision='bf16'"):
        ElmoEmbedder(opt, w, backend=backend)                       # inherited from the context: the same
    assert ElmoEmbedder(opt, w, backend=backend, precision="fp32").backend_label() == f"{backend}/{backend}"
    # the low-level model documents it as a no-op: the reference computes in float32 whatever the setting
    model = _bilm("reference", "bf16")
    gen = torch.Generator().manual_seed(3)
    ids = _char_ids(gen, [5, 2], 5)
    with torch.no_grad():
        assert torch.equal(model(ids)["activations"][2], _bilm("reference")(ids)["activations"][2])


def test_cli_precision_flag(tmp_path, capsys, caplog):
    from elmo_fast.cli import main
    opt, w = _files(tmp_path)
    text = tmp_path / "in.txt"
    text.write_text("a b c\n")
    base = ["embed", str(text), str(tmp_path / "o.h5"), "--all", "--options-file", str(opt), "--weight-file", str(w)]
    with pytest.raises(SystemExit) as e:
        main(base + ["--precision", "fp16"])
    assert e.value.code == 2
    assert "--precision" in capsys.readouterr().err
    rc = main(base + ["--precision", "bf16", "--backend", "reference"])
    assert rc == 2
    assert "--precision bf16" in caplog.text and "backend reference" in caplog.text
    assert not (tmp_path / "o.h5").exists()
    assert main(base + ["--precision", "bf16", "--quiet"]) == 0
    for cmd in (["embed"], ["train"], ["evaluate"], ["probe", "pos"], ["probe", "wic"], ["demo"]):
        with pytest.raises(SystemExit):
            main(cmd + ["--help"])
        assert "--precision {fp32,bf16}" in capsys.readouterr().out, cmd


def test_lstm_backward_runs_in_the_forward_setting():
    """A loss built inside numerics.use(precision="bf16") but backpropagated outside it still gets bf16 gradient
    products: the hand-written backward re-enters the forward's setting (same gradients as a backward inside)."""
    import torch
    from elmo_fast import numerics
    from elmo_fast.fast.lstm import bilstm_fast
    from elmo_fast.nn.lstm import BiLSTM
    from elmo_fast.options import LSTMOptions
    torch.manual_seed(0)
    lstm = BiLSTM(LSTMOptions(dim=40, projection_dim=24, n_layers=2, cell_clip=3.0, proj_clip=3.0,
                              use_skip_connections=True))
    with torch.no_grad():
        for p in lstm.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(3, 6, 24)
    lengths = torch.tensor([6, 4, 1])
    state = lstm.zero_state(3, x)
    grads = []
    for inside in (True, False):
        lstm.zero_grad()
        with numerics.use(precision="bf16"):
            outs, _ = bilstm_fast(lstm, x, lengths, state)
            loss = sum((o * o).sum() for o in outs)
            if inside:
                loss.backward()
        if not inside:
            loss.backward()
        grads.append([p.grad.clone() for p in lstm.parameters()])
    lstm.zero_grad()
    outs, _ = bilstm_fast(lstm, x, lengths, state)
    sum((o * o).sum() for o in outs).backward()
    fp32 = [p.grad.clone() for p in lstm.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    assert any(not torch.equal(a, b) for a, b in zip(grads[0], fp32))  # the setting did change the arithmetic


def test_token_encoder_training_products_follow_bf16():
    """The fast token encoder's differentiable path (training) multiplies in bf16 under the setting: within the
    bf16 tolerance of float32, not equal to it, and float32 again outside the setting."""
    import torch
    from elmo_fast import numerics
    from elmo_fast.fast.token_encoder import token_encoder_fast
    from elmo_fast.nn.token_encoder import CharCNNTokenEncoder
    from elmo_fast.options import CharCNNOptions
    torch.manual_seed(1)
    enc = CharCNNTokenEncoder(CharCNNOptions(filters=((1, 7), (2, 9), (3, 13)), n_highway=2, embedding_dim=5,
                                             activation="relu"), projection_dim=11)
    with torch.no_grad():
        for p in enc.parameters():
            p.normal_(0, 0.3)
    ids = torch.randint(1, 262, (9, 50))
    ids[:, 6:] = 260
    want = token_encoder_fast(enc, ids)
    assert want.requires_grad
    with numerics.use(precision="bf16"):
        got = token_encoder_fast(enc, ids)
    assert not torch.equal(got, want)
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05 * float(want.detach().abs().max()))
    assert torch.equal(token_encoder_fast(enc, ids), want)


def test_train_resume_keeps_the_runs_precision(tmp_path):
    """`train --out RUN --resume` continues in the precision recorded in the run's config.json; --precision on the
    resuming command overrides it."""
    import json
    from elmo_fast.cli import build_parser
    from elmo_fast.commands.train import build_config
    run = tmp_path / "run"
    run.mkdir()
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b c\n")
    (run / "config.json").write_text(json.dumps({"precision": "bf16", "train": [str(corpus)]}))
    parser = build_parser()
    config = build_config(parser.parse_args(["train", "--out", str(run), "--resume"]))[0]
    assert config.precision == "bf16"
    config = build_config(parser.parse_args(["train", "--out", str(run), "--resume", "--precision", "fp32"]))[0]
    assert config.precision == "fp32"
    fresh = build_config(parser.parse_args(["train", "--out", str(tmp_path / "new"), "--train", str(corpus),
                                            "--options", "tiny"]))[0]
    assert fresh.precision == "fp32"


def test_token_encoder_grouped_windows_bf16_forward_and_gradients(monkeypatch):
    """bf16 through the grouped-window char-CNN (rows of many lengths, so several groups): the same values and
    gradients as one group in bf16 (the grouping changes no product's rows), within bf16 tolerance of float32
    (values; gradients within 15% in norm: bf16 rounding moves some arg-max windows, which sends a filter's
    gradient to other characters, ~10% on this tiny random model, as before the grouping existed), and the
    inference path (no grad) within bf16 tolerance of the training path's values."""
    import importlib
    import torch
    from elmo_fast import numerics
    from elmo_fast.nn.token_encoder import CharCNNTokenEncoder
    from elmo_fast.options import CharCNNOptions
    te = importlib.import_module("elmo_fast.fast.token_encoder")
    torch.manual_seed(2)
    enc = CharCNNTokenEncoder(CharCNNOptions(filters=((1, 8), (2, 16), (3, 32), (4, 32)), n_highway=1,
                                             embedding_dim=4, activation="relu"), projection_dim=12)
    with torch.no_grad():
        for p in enc.parameters():
            p.normal_(0, 0.3)
    lengths = torch.randint(1, 30, (150,))
    ids = torch.full((150, 50), 261)
    for r, n in enumerate(lengths.tolist()):
        ids[r, 0], ids[r, 1:n + 1], ids[r, n + 1] = 259, torch.randint(1, 256, (n,)), 260
    assert len(te._window_groups(te._run_starts(ids))) > 1
    cot = torch.randn(150, 12)

    def run(precision: str, max_groups: int):
        monkeypatch.setattr(te, "MAX_WINDOW_GROUPS", max_groups)
        enc.zero_grad()
        with numerics.use(precision=precision):
            out = te.token_encoder_fast(enc, ids)
            (out * cot).sum().backward()
            with torch.no_grad():
                torch.testing.assert_close(te.token_encoder_fast(enc, ids), out.detach(), rtol=0.05,
                                           atol=0.05 * float(out.abs().max()))
        return out.detach(), {n: p.grad.clone() for n, p in enc.named_parameters()}

    want, want_g = run("fp32", 4)
    got, got_g = run("bf16", 4)
    one, one_g = run("bf16", 1)
    torch.testing.assert_close(got, one, rtol=1e-6, atol=1e-6)
    assert not torch.equal(got, want)
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05 * float(want.abs().max()))
    for name in want_g:
        torch.testing.assert_close(got_g[name], one_g[name], rtol=1e-5, atol=1e-5 * float(one_g[name].abs().max()),
                                   msg=name)
        rel = float(torch.linalg.norm(got_g[name] - want_g[name]) / torch.linalg.norm(want_g[name]))
        assert rel < 0.15, f"{name}: relative error {rel:.3g}"


@pytest.mark.parametrize("rows_kernel", [True, False])
def test_sampled_softmax_bf16_products_within_tolerance(path, rows_kernel, monkeypatch):
    """The fast sampled softmax in the bf16 setting (its three products in bf16; with the native row kernels the
    backward's bf16 copy of the logit gradient comes out of the kernel's pass) against the float32 reference."""
    from elmo_fast.fast import sampled_softmax as fast_softmax
    from elmo_fast.nn.softmax import log_uniform_expected_count, log_uniform_sample, sampled_softmax_loss
    if not rows_kernel:
        monkeypatch.setattr(fast_softmax.native, "softmax_available", lambda *t: False)
    g = torch.Generator().manual_seed(12)
    N, P, V, S = 53, 24, 400, 97
    hidden, weight, bias = torch.randn(N, P, generator=g), torch.randn(V, P, generator=g) * 0.3, torch.randn(V) * 0.1
    ids, tries = log_uniform_sample(V, S, g)
    targets = torch.randint(0, V, (N,), generator=g)
    targets[1] = ids[5]
    q_t, q_s = log_uniform_expected_count(targets, tries, V, S), log_uniform_expected_count(ids, tries, V, S)
    upstream = torch.linspace(0.5, 1.5, N)
    results = []
    for fn, precision in ((sampled_softmax_loss, "fp32"), (fast_softmax.sampled_softmax_loss_fast, "bf16")):
        h, w, b = (x.clone().requires_grad_(True) for x in (hidden, weight, bias))
        with numerics.use(precision=precision):
            loss = fn(h, targets, w, b, ids, q_t, q_s)
            (loss * upstream).sum().backward()
        results.append((loss.detach(), h.grad, w.grad, b.grad))
    for name, want, got in zip(("loss", "hidden", "weight", "bias"), *results):
        assert got.dtype == torch.float32, name
        scale = float(want.abs().max())
        diff = (got - want).abs()
        assert float(diff.max()) <= GRAD_MAX_REL * scale, name
        assert float(diff.mean()) <= GRAD_MEAN_REL * scale, name
        if name != "bias":   # the bias gradient is a float32 sum of float32 terms (only the forward changes it)
            assert float(diff.max()) > 1e-5 * scale, f"{name}: bf16 did not change the arithmetic"
