"""ElmoEmbedder API and the hdf5-writing embed_file / `elmo-fast embed` CLI (docs/numerics.md#downstream-use)."""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from elmo_fast import BiLM, ElmoEmbedder, batch_to_ids
from elmo_fast.cli import main
from elmo_fast.embedder import InputFileError
from elmo_fast.nn.bilm import remove_sentence_boundaries

LINES = ["The bank closed .", "naïve café\u00a0au lait", "x", "Spring  is\there"]


def test_batch_to_embeddings_layout(tiny_model):
    opt, w = tiny_model
    emb = ElmoEmbedder(opt, w, stateful=False)
    sents = [["a", "b", "c"], ["d"]]
    acts, mask = emb.batch_to_embeddings(sents)
    assert acts.shape == (2, 3, 3, 32) and mask.tolist() == [[True, True, True], [True, False, False]]
    bilm = BiLM.from_files(opt, w, stateful=False)
    with torch.no_grad():
        out = bilm(batch_to_ids(sents))
    for k in range(3):
        torch.testing.assert_close(acts[:, k], remove_sentence_boundaries(out["activations"][k], out["mask"])[0])
    # layer 0 is the token embedding duplicated
    torch.testing.assert_close(acts[:, 0, :, :16], acts[:, 0, :, 16:])


def test_embed_sentence_batch_and_empty(tiny_model):
    opt, w = tiny_model
    emb = ElmoEmbedder(opt, w, stateful=False)
    one = emb.embed_sentence(["The", "bank"])
    assert isinstance(one, np.ndarray) and one.dtype == np.float32 and one.shape == (3, 2, 32)
    empty = emb.embed_sentence([])
    assert empty.shape == (3, 0, 32)
    batch = emb.embed_batch([["The", "bank"], [], ["x", "y", "z"]])
    assert [b.shape for b in batch] == [(3, 2, 32), (3, 0, 32), (3, 3, 32)]
    np.testing.assert_allclose(batch[0], one, atol=1e-6)
    listed = list(emb.embed_sentences([["a"], ["b", "c"], ["d"]], batch_size=2))
    assert [x.shape[1] for x in listed] == [1, 2, 1]
    np.testing.assert_allclose(listed[2], emb.embed_sentence(["d"]), atol=1e-6)


def test_stateful_embedder_carries_and_resets(tiny_model):
    opt, w = tiny_model
    emb = ElmoEmbedder(opt, w)
    first = emb.embed_sentence(["The", "bank"])
    second = emb.embed_sentence(["The", "bank"])
    assert np.abs(first - second).max() > 1e-4  # AllenNLP behaviour: state carried
    emb.embed_batch([[]])  # a lone empty sentence does not touch the states (AllenNLP special case)
    emb.reset_states()
    np.testing.assert_array_equal(emb.embed_sentence(["The", "bank"]), first)


def _read(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][...] for k in f}


@pytest.mark.parametrize("fmt", ["all", "top", "average"])
def test_embed_file_formats_match_embed_sentence(tiny_model, tmp_path, fmt):
    opt, w = tiny_model
    src = tmp_path / "in.txt"
    src.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    out = tmp_path / "out.hdf5"
    ElmoEmbedder(opt, w).embed_file(str(src), out, output_format=fmt, batch_size=3, progress=False)
    data = _read(out)
    # reference: a fresh stateful embedder over the same batches
    ref = ElmoEmbedder(opt, w)
    expected = list(ref.embed_sentences([line.split() for line in LINES], batch_size=3))
    assert sorted(data) == sorted(["0", "1", "2", "3", "sentence_to_index"])
    for i, e in enumerate(expected):
        want = {"all": e, "top": e[-1], "average": e.mean(axis=0)}[fmt]
        assert data[str(i)].dtype == np.float32
        np.testing.assert_allclose(data[str(i)], want, atol=1e-6)
    assert data["1"].shape[-2] == 4  # NBSP separates tokens, as Python's str.split()
    index = json.loads(data["sentence_to_index"][0])
    assert index == {line.strip(): str(i) for i, line in enumerate(LINES)}


def test_sentence_keys_and_forget_sentences(tiny_model, tmp_path):
    opt, w = tiny_model
    src = tmp_path / "in.txt"
    src.write_text("a b\nc d e\n")
    emb = ElmoEmbedder(opt, w, stateful=False)
    emb.embed_file(src, tmp_path / "k.hdf5", use_sentence_keys=True, progress=False)
    data = _read(tmp_path / "k.hdf5")
    assert sorted(data) == ["a b", "c d e"] and data["c d e"].shape == (3, 3, 32)
    emb.embed_file(src, tmp_path / "f.hdf5", forget_sentences=True, progress=False)
    assert sorted(_read(tmp_path / "f.hdf5")) == ["0", "1"]
    src.write_text("a b\nc\na b\n")
    with pytest.raises(InputFileError, match="line 3 repeats line 1"):
        emb.embed_file(src, tmp_path / "d.hdf5", use_sentence_keys=True, progress=False)
    assert not (tmp_path / "d.hdf5").exists()


def test_blank_and_undecodable_lines_are_listed(tiny_model, tmp_path):
    opt, w = tiny_model
    emb = ElmoEmbedder(opt, w)
    src = tmp_path / "in.txt"
    src.write_text("a b\n\nc\n   \nd\n")
    with pytest.raises(InputFileError, match=r"in.txt: lines 2, 4 are blank"):
        emb.embed_file(src, tmp_path / "o.hdf5", progress=False)
    src.write_bytes(b"ok\nbad \xff byte\nfine\n\xc3\n")
    with pytest.raises(InputFileError, match=r"in.txt: lines 2, 4 are not valid UTF-8"):
        emb.embed_file(src, tmp_path / "o.hdf5", progress=False)
    assert not (tmp_path / "o.hdf5").exists()


def test_interrupted_run_leaves_no_partial_output(tiny_model, tmp_path, monkeypatch):
    opt, w = tiny_model
    src = tmp_path / "in.txt"
    src.write_text("\n".join(LINES) + "\n")
    out = tmp_path / "out.hdf5"
    out.write_bytes(b"previous complete result")
    emb = ElmoEmbedder(opt, w)
    real = emb.embed_batch
    calls = []

    def failing(batch):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(batch)

    monkeypatch.setattr(emb, "embed_batch", failing)
    with pytest.raises(KeyboardInterrupt):
        emb.embed_file(src, out, batch_size=2, progress=False, overwrite=True, chunk_lines=2)
    assert out.read_bytes() == b"previous complete result"
    # no temporary file left behind; the completed chunk stays for a rerun
    assert sorted(os.listdir(tmp_path)) == ["in.txt", "model", "out.hdf5", "out.hdf5.embed-work"]
    assert sorted(os.listdir(tmp_path / "out.hdf5.embed-work")) == ["chunk-000000.h5", "lock-0", "sentences.sqlite"]
    monkeypatch.setattr(emb, "embed_batch", real)
    emb.embed_file(src, out, batch_size=2, progress=False, overwrite=True, chunk_lines=2)
    assert sorted(os.listdir(tmp_path)) == ["in.txt", "model", "out.hdf5"]
    ref = ElmoEmbedder(opt, w)
    data = _read(out)
    for i, e in enumerate(ref.embed_sentences([line.split() for line in LINES], batch_size=2)):
        np.testing.assert_array_equal(data[str(i)], e)


def test_cli_end_to_end(tiny_model, tmp_path):
    opt, w = tiny_model
    src = tmp_path / "in.txt"
    src.write_text("\n".join(LINES) + "\n")
    out = tmp_path / "cli.hdf5"
    rc = main(["embed", str(src), str(out), "--top", "--options-file", str(opt), "--weight-file", str(w),
               "--batch-size", "2", "--quiet"])
    assert rc == 0
    data = _read(out)
    ref = ElmoEmbedder(opt, w)
    for i, e in enumerate(ref.embed_sentences([line.split() for line in LINES], batch_size=2)):
        np.testing.assert_allclose(data[str(i)], e[-1], atol=1e-6)
    # stateless CLI: each batch independent of the previous ones
    rc = main(["embed", str(src), str(tmp_path / "s.hdf5"), "--all", "--stateless", "--options-file", str(opt),
               "--weight-file", str(w), "--quiet"])
    assert rc == 0
    np.testing.assert_allclose(_read(tmp_path / "s.hdf5")["2"], ElmoEmbedder(opt, w,
                                                                             stateful=False).embed_sentence(["x"]),
                               atol=1e-6)


def test_cli_errors_and_help(tiny_model, tmp_path, capsys):
    opt, w = tiny_model
    src = tmp_path / "in.txt"
    src.write_text("a\n\nb\n")
    rc = main(["embed", str(src), str(tmp_path / "o.hdf5"), "--all", "--options-file", str(opt), "--weight-file",
               str(w), "--quiet"])
    assert rc == 2 and not (tmp_path / "o.hdf5").exists()
    rc = main(["embed", str(src), str(tmp_path / "o.hdf5"), "--all", "--options-file", str(tmp_path / "none.json"),
               "--weight-file", str(w)])
    assert rc == 2
    proc = subprocess.run([sys.executable, "-m", "elmo_fast.cli", "embed", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for flag in ["--all", "--top", "--average", "--options-file", "--weight-file", "--batch-size", "--stateless",
                 "--forget-sentences", "--use-sentence-keys", "--device", "--backend"]:
        assert flag in proc.stdout
