"""API validation and the pipeline's outputs: token-list checks, from_bilm/from_pretrained, shards, the streamed
sentence_to_index, non-finite outputs, file-object inputs."""
from __future__ import annotations

import io
import json

import h5py
import numpy as np
import pytest
import torch

from elmo_fast import BiLM, ElmoEmbedder, batch_to_ids
from elmo_fast.embedding import index as index_mod
from elmo_fast.errors import UserError

LINES = ["the bank closed .", "naïve café", "x", "the bank closed .", "\"quoted\" \\ back", "z y x w"]


def _read(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][...] for k in f}


@pytest.mark.parametrize("bad, exc, fragment", [
    ("a b", TypeError, "sentences: expected a list of tokenized sentences"),
    (["a b"], TypeError, "sentences[0] is a str; expected a list of tokens"),
    ([["a", 3]], TypeError, "sentences[0][1]: expected a str token, found int"),
    ([["a", b"b"]], TypeError, "expected a str token, found bytes"),
    ([None], TypeError, "sentences[0]: expected a list of str tokens, found NoneType"),
    (5, TypeError, "expected a sequence of sentences"),
    ([{"a", "b"}], TypeError, "expected an ordered list"),
])
def test_batch_to_ids_rejects_with_what_was_expected(bad, exc, fragment):
    with pytest.raises(exc) as info:
        batch_to_ids(bad)
    assert fragment in str(info.value)


def test_batch_to_ids_accepts_tuples_generators_numpy_and_empty():
    want = batch_to_ids([["a", "bb"], ["c"]])
    assert torch.equal(batch_to_ids((("a", "bb"), ("c",))), want)
    assert torch.equal(batch_to_ids(s for s in [["a", "bb"], ["c"]]), want)
    assert torch.equal(batch_to_ids([np.array(["a", "bb"]), np.array(["c"])]), want)
    assert batch_to_ids([]).shape == (0, 0, 50)


def test_embedder_rejects_strings_sizes_and_handles_empty(tiny_model, tmp_path):
    opt, w = tiny_model
    emb = ElmoEmbedder(opt, w, stateful=False)
    with pytest.raises(TypeError, match="expected a list of str tokens, found a str"):
        emb.embed_sentence("hello world")
    with pytest.raises(TypeError, match="found a str"):
        list(emb.embed_sentences("hello world"))
    with pytest.raises(TypeError, match=r"batch\[1\] is a str"):
        emb.embed_batch([["a"], "b c"])
    assert emb.embed_batch([]) == []
    with pytest.raises(ValueError, match="empty batch"):
        emb.batch_to_embeddings([])
    for bad in (0, -3):
        with pytest.raises(ValueError, match="batch_size: expected a positive integer"):
            ElmoEmbedder(opt, w, batch_size=bad)
        with pytest.raises(ValueError, match="batch_size: expected a positive integer"):
            list(emb.embed_sentences([["a"]], batch_size=bad))
        with pytest.raises(ValueError, match="batch_size: expected a positive integer"):
            emb.embed_file(str(opt), tmp_path / "o.hdf5", batch_size=bad)
    with pytest.raises(TypeError, match="batch_size: expected a positive integer"):
        ElmoEmbedder(opt, w, batch_size=2.5)
    with pytest.raises(ValueError, match="output_format"):
        emb.embed_file(str(opt), tmp_path / "o.hdf5", output_format="mean")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            ElmoEmbedder(opt, w, cuda_device=0)


def test_from_bilm_equals_file_constructor(tiny_model):
    opt, w = tiny_model
    bilm = BiLM.from_files(opt, w, stateful=False)
    a = ElmoEmbedder.from_bilm(bilm, batch_size=4)
    b = ElmoEmbedder(opt, w, stateful=False)
    sents = [s.split() for s in LINES]
    for x, y in zip(a.embed_batch(sents), b.embed_batch(sents)):
        np.testing.assert_array_equal(x, y)
    assert a.source_files() is None and b.source_files() == [str(opt), str(w)]
    with pytest.raises(TypeError, match="torch.nn.Module"):
        ElmoEmbedder.from_bilm(object())
    with pytest.raises(ValueError, match="batch_size"):
        ElmoEmbedder.from_bilm(bilm, batch_size=0)


class _Doubling(torch.nn.Module):
    """A biLM-like module with its own ``prepare_inputs`` and ``source_files``: layer k = (k+1) * token length."""

    stateful = False
    output_dim = 4

    def __init__(self, files):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.files = files

    def prepare_inputs(self, sentences):
        lengths = torch.tensor([len(s) for s in sentences])
        width = int(lengths.max()) if len(sentences) else 0
        values = torch.zeros(len(sentences), width)
        for i, s in enumerate(sentences):
            values[i, :len(s)] = torch.tensor([float(len(t)) for t in s])
        return values, lengths

    def forward(self, values, lengths):
        b, t = values.shape
        mask = torch.arange(t + 2)[None, :] < (lengths + 2)[:, None]
        padded = torch.zeros(b, t + 2)
        padded[:, 1:t + 1] = values
        acts = [padded[..., None].expand(b, t + 2, 4) * (k + 1) * self.scale for k in range(3)]
        return {"activations": acts, "mask": mask}

    def reset_states(self):
        pass

    def source_files(self):
        return self.files


def test_from_bilm_custom_module_through_embed_file(tmp_path):
    model_file = tmp_path / "m.bin"
    model_file.write_bytes(b"model")
    emb = ElmoEmbedder.from_bilm(_Doubling([str(model_file)]), batch_size=2)
    src = tmp_path / "in.txt"
    src.write_text("ab c\nxyz\n")
    emb.embed_file(src, tmp_path / "o.hdf5", output_format="all", progress=False)
    data = _read(tmp_path / "o.hdf5")
    np.testing.assert_array_equal(data["0"][2, :, 0], [6.0, 3.0])  # layer 2 = 3 * token length
    with pytest.raises(UserError, match="is the model file"):
        emb.embed_file(src, model_file, progress=False, overwrite=True)


def test_from_pretrained(tiny_model):
    opt, _ = tiny_model
    try:
        import elmo_fast.pretrained  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="elmo_fast.pretrained is not available"):
            ElmoEmbedder.from_pretrained(opt.parent)
        return
    emb = ElmoEmbedder.from_pretrained(opt.parent, stateful=False)
    ref = ElmoEmbedder(opt, opt.parent / "weights.hdf5", stateful=False)
    np.testing.assert_allclose(emb.embed_sentence(["a", "b"]), ref.embed_sentence(["a", "b"]), atol=1e-6)


def test_streamed_sentence_index_equals_json_dumps(tiny_model, tmp_path, monkeypatch):
    """Above the in-memory limit sentence_to_index is streamed into a fixed-length string: same JSON text
    (json.dumps of the {sentence: key} dict, last key wins) as the in-memory variable-length string."""
    opt, w = tiny_model
    src = tmp_path / "in.txt"
    src.write_text("\n".join(LINES) + "\n")
    emb = ElmoEmbedder(opt, w, stateful=False)
    emb.embed_file(src, tmp_path / "small.hdf5", output_format="top", progress=False)
    monkeypatch.setattr(index_mod, "INDEX_IN_MEMORY_MAX", 10)
    monkeypatch.setattr(index_mod.write_sentence_index, "__defaults__", (10,))
    emb.embed_file(src, tmp_path / "big.hdf5", output_format="top", progress=False)
    want = json.dumps({s: str(i) for i, s in enumerate(LINES)})
    with h5py.File(tmp_path / "small.hdf5", "r") as a, h5py.File(tmp_path / "big.hdf5", "r") as b:
        assert h5py.check_string_dtype(a["sentence_to_index"].dtype).length is None  # AllenNLP's vlen str
        assert h5py.check_string_dtype(b["sentence_to_index"].dtype).length == len(want.encode())
        for f in (a, b):
            raw = f["sentence_to_index"][0]
            assert (raw.decode() if isinstance(raw, bytes) else raw) == want
            assert json.loads(raw) == {s: str(i) for i, s in enumerate(LINES)}
        np.testing.assert_array_equal(a["5"][...], b["5"][...])


def test_shards_split_lines_and_indices(tiny_model, tmp_path):
    opt, w = tiny_model
    src = tmp_path / "in.txt"
    src.write_text("\n".join(LINES) + "\n")
    emb = ElmoEmbedder(opt, w, stateful=False)
    emb.embed_file(src, tmp_path / "one.hdf5", progress=False, chunk_lines=2)
    emb.embed_file(src, tmp_path / "sh.hdf5", progress=False, chunk_lines=2, shards=2)
    assert not (tmp_path / "sh.hdf5").exists()
    parts = [_read(tmp_path / f"sh-0000{i}-of-00002.hdf5") for i in range(2)]
    one = _read(tmp_path / "one.hdf5")
    # 3 chunks of 2 lines: shard 0 gets chunk 0, shard 1 chunks 1-2 (contiguous blocks)
    assert sorted(k for k in parts[0] if k != "sentence_to_index") == ["0", "1"]
    assert sorted(k for k in parts[1] if k != "sentence_to_index") == ["2", "3", "4", "5"]
    for p in parts:
        for k in p:
            if k != "sentence_to_index":
                np.testing.assert_array_equal(p[k], one[k])
    assert json.loads(parts[0]["sentence_to_index"][0]) == {LINES[0]: "0", LINES[1]: "1"}
    assert json.loads(parts[1]["sentence_to_index"][0]) == {LINES[2]: "2", LINES[3]: "3", LINES[4]: "4", LINES[5]: "5"}


def test_non_finite_outputs_name_the_lines(tiny_model, tmp_path, monkeypatch):
    opt, w = tiny_model
    src = tmp_path / "in.txt"
    src.write_text("\n".join(LINES) + "\n")
    emb = ElmoEmbedder(opt, w, stateful=False)
    real = emb.embed_batch

    def poisoned(batch):
        out = real(batch)
        for s, e in zip(batch, out):
            if s == ["x"]:
                e[1, 0, 0] = np.nan
        return out
    monkeypatch.setattr(emb, "embed_batch", poisoned)
    with pytest.raises(UserError, match=r"in.txt: the embeddings of line 3 contain NaN or Inf"):
        emb.embed_file(src, tmp_path / "o.hdf5", progress=False)
    assert not (tmp_path / "o.hdf5").exists()


def test_file_object_input_and_crlf(tiny_model, tmp_path):
    opt, w = tiny_model
    emb = ElmoEmbedder(opt, w, stateful=False)
    emb.embed_file(io.StringIO("a b\nc\n"), tmp_path / "s.hdf5", progress=False)
    emb.embed_file(io.BytesIO(b"a b\r\nc\r\n"), tmp_path / "b.hdf5", progress=False)
    s, b = _read(tmp_path / "s.hdf5"), _read(tmp_path / "b.hdf5")
    assert sorted(s) == sorted(b) == ["0", "1", "sentence_to_index"]
    np.testing.assert_array_equal(s["0"], b["0"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.hdf5", "model", "s.hdf5"]  # spooled copies removed
