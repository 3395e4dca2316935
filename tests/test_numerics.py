"""The numerics setting (precision / floating-point order) reaches the fast ops and is validated early."""
import pytest
import torch

from elmo_fast import numerics
from elmo_fast.fast import lstm as fast_lstm
from elmo_fast.fast.packing import PackedLinear
from elmo_fast.nn.bilm import BiLM
from elmo_fast.options import options_from_dict


def test_names_are_validated_with_the_field_name():
    with pytest.raises(ValueError, match="precision: expected one of"):
        numerics.Numerics(precision="fp16")
    with pytest.raises(ValueError, match="order: expected one of"):
        numerics.Numerics(order="tf")


def test_use_nests_and_restores():
    outer = numerics.current()
    with numerics.use(order="allennlp") as a:
        assert a.order == "allennlp" and a.precision == outer.precision
        with numerics.use(precision="bf16") as b:
            assert (b.precision, b.order) == ("bf16", "allennlp")
        assert numerics.current() == a
    assert numerics.current() == outer


def _model(order):
    opts = options_from_dict({
        "lstm": {"dim": 64, "projection_dim": 16, "n_layers": 1, "cell_clip": 3.0, "proj_clip": 3.0},
        "char_cnn": {"embedding": {"dim": 4}, "filters": [[1, 8], [2, 8]], "n_highway": 1, "n_characters": 262,
                     "max_characters_per_token": 50, "activation": "relu"}})
    model = BiLM(opts, stateful=False, backend="fast", order=order).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def test_bilm_rejects_unknown_setting():
    with pytest.raises(ValueError, match="order"):
        _model("weird")


def test_model_order_switches_the_recurrent_products(monkeypatch):
    """order="allennlp" sends every per-step product through the BLAS; "fast" uses the packed weights
    (thresholds forced so that this tiny model's products would be packed)."""
    monkeypatch.setattr(fast_lstm.PairLinear, "BMM_MAX_WEIGHT", 0)
    monkeypatch.setattr(PackedLinear, "MIN_PACKED_MACS", 0)
    calls = []
    real = PackedLinear.__call__
    monkeypatch.setattr(PackedLinear, "__call__", lambda self, x: calls.append(1) or real(self, x))
    emb = torch.randn(3, 7, 16)
    mask = torch.ones(3, 7, dtype=torch.bool)
    outs = {}
    model = _model(None)
    for order in ("fast", "allennlp"):
        model.order = order
        calls.clear()
        with torch.no_grad():
            outs[order] = model.forward_embeddings(emb, mask)["activations"][1]
        outs[order + "_calls"] = len(calls)
    if fast_lstm.PairLinear(torch.randn(2, 4, 4)).packed[0].packed is not None:  # oneDNN in this torch build
        assert outs["fast_calls"] > 0
    assert outs["allennlp_calls"] == 0
    torch.testing.assert_close(outs["fast"], outs["allennlp"], rtol=1e-5, atol=1e-5)


def test_wrappers_validate_and_pass_the_setting(tmp_path):
    from elmo_fast import Elmo, ElmoEmbedder
    model = _model(None)
    opt, w = tmp_path / "options.json", tmp_path / "weights.hdf5"
    model.save(opt, w)
    with pytest.raises(ValueError, match="precision"):
        ElmoEmbedder(opt, w, precision="int4")
    emb = ElmoEmbedder(opt, w, order="allennlp")
    assert emb.elmo_bilm.order == "allennlp" and emb.elmo_bilm.precision is None
    elmo = Elmo(opt, w, 1, order="allennlp")
    assert elmo._elmo_lstm.order == "allennlp"


def test_elmo_cached_vocabulary_uses_the_requested_order(tmp_path):
    """Elmo(vocab_to_cache=..., order=...) computes the cached token vectors in that order: they equal the
    character path's vectors of a model run in the same order, bit for bit."""
    from elmo_fast import Elmo, batch_to_ids
    model = _model(None)
    opt, w = tmp_path / "options.json", tmp_path / "weights.hdf5"
    model.save(opt, w)
    vocab = ["<pad>", "the", "Cat", "sat", "x" * 40]
    for order in ("fast", "allennlp"):
        elmo = Elmo(opt, w, 1, dropout=0.0, vocab_to_cache=vocab, order=order)
        cached = elmo._elmo_lstm._word_embedding.weight[1:].detach()
        with numerics.use(order=order), torch.no_grad():
            direct = elmo._elmo_lstm.encode_tokens(batch_to_ids([vocab[1:]]))[0]
        assert torch.equal(cached, direct), order


def test_embed_cli_order_flag(tmp_path):
    """`elmo-fast embed --order allennlp` writes the reference backend's bits (AllenNLP's order; one thread); the
    default fast order writes other bits within float32 noise; a bad value is a one-line usage error."""
    import h5py
    import numpy as np
    from elmo_fast.cli import main
    from helpers import write_model
    opts = {"lstm": {"dim": 64, "projection_dim": 16, "n_layers": 2, "cell_clip": 3.0, "proj_clip": 3.0,
                     "use_skip_connections": True},
            "char_cnn": {"embedding": {"dim": 8}, "filters": [[1, 16], [2, 16], [3, 32], [5, 24]], "n_highway": 2,
                         "n_characters": 262, "max_characters_per_token": 50, "activation": "relu"}}
    o, w = write_model(tmp_path / "m", opts, seed=3)
    src = tmp_path / "in.txt"
    src.write_text("The quick brown fox jumps over the lazy dog .\nA\nHello world , again and again\n")
    outs = {}
    for name, extra in (("allennlp", ["--order", "allennlp"]), ("reference", ["--backend", "reference"]),
                        ("fast", [])):
        out = tmp_path / f"{name}.hdf5"
        assert main(["embed", str(src), str(out), "--all", "--options-file", str(o), "--weight-file", str(w),
                     "--threads", "1", "--quiet"] + extra) == 0
        with h5py.File(out, "r") as f:
            outs[name] = [f[str(k)][...] for k in range(3)]
    for a, b, c in zip(outs["allennlp"], outs["reference"], outs["fast"]):
        assert np.array_equal(a, b)
        np.testing.assert_allclose(c, b, rtol=1e-4, atol=1e-5)
    assert any(not np.array_equal(a, c) for a, c in zip(outs["allennlp"], outs["fast"]))
    with pytest.raises(SystemExit) as e:
        main(["embed", str(src), str(tmp_path / "x.hdf5"), "--options-file", str(o), "--weight-file", str(w),
              "--order", "tf"])
    assert e.value.code == 2


def test_sampled_softmax_backward_uses_the_setting_captured_at_forward():
    """The rule of elmo_fast.numerics: a backward multiplies as its forward did. A bf16 forward whose backward
    runs after the ``use`` block has ended gives the same gradients as one whose backward runs inside it, and not
    the float32 backward's."""
    from elmo_fast.fast.packing import bf16_products
    from elmo_fast.fast.sampled_softmax import sampled_softmax_loss_fast
    g = torch.Generator().manual_seed(5)
    N, P, V, S = 13, 24, 60, 20
    h, W, b = torch.randn(N, P, generator=g), torch.randn(V, P, generator=g) * 0.3, torch.randn(V, generator=g)
    t, ids = torch.randint(0, V, (N,), generator=g), torch.randperm(V, generator=g)[:S]
    q_t, q_s = torch.rand(N, generator=g) * 0.5 + 0.1, torch.rand(S, generator=g) * 0.5 + 0.1

    def grads(precision, backward_inside):
        leaves = [x.clone().requires_grad_(True) for x in (h, W, b)]
        with numerics.use(precision=precision):
            loss = sampled_softmax_loss_fast(leaves[0], t, leaves[1], leaves[2], ids, q_t, q_s).sum()
            if backward_inside:
                loss.backward()
        if not backward_inside:
            loss.backward()
        return [x.grad for x in leaves]

    inside, after = grads("bf16", True), grads("bf16", False)
    for a, c in zip(inside, after):
        assert torch.equal(a, c)
    with numerics.use(precision="bf16"):
        if not bf16_products():
            pytest.skip("no bf16 products on this CPU: the two settings multiply alike")
    fp32 = grads("fp32", True)
    assert not torch.equal(inside[0], fp32[0])  # the setting does change the backward's products
