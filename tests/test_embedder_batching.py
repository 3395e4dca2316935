"""Embedder batching: length-grouped stateless batches, input-ordered stateful batches, multi-process files.

Tolerance: a stateless sentence's result does not depend on its batch mathematically; different batch
shapes change float32 summation order only, so results are compared with atol 1e-5, rtol 1e-5.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from elmo_fast.embedder import ElmoEmbedder, length_groups, rank_share

TOL = dict(atol=1e-5, rtol=1e-5)

SENTENCES = [s.split() for s in [
    "the cat sat on the mat today", "hi", "a b", "one two three four five six seven eight nine ten eleven",
    "x", "the quick brown fox", "jumps over", "the lazy dog and the cat and the bird", "ok ok ok", "end",
    "a much longer sentence with quite a few words in it to make the lengths vary a lot", "z y",
]]


def record_batches(emb: ElmoEmbedder, monkeypatch) -> list[list[list[str]]]:
    seen: list[list[list[str]]] = []
    real = emb.embed_batch

    def spy(batch):
        seen.append([list(s) for s in batch])
        return real(batch)
    monkeypatch.setattr(emb, "embed_batch", spy)
    return seen


def test_length_groups_and_rank_share():
    lengths = [5, 1, 9, 1, 3, 7, 0, 2]
    groups = length_groups(lengths, 3)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(len(g) == 3 for g in groups[:-1])
    flat = [lengths[i] for g in groups for i in g]
    assert flat == sorted(lengths)
    assert groups[0] == [6, 1, 3]  # ties keep input order
    with pytest.raises(ValueError, match="batch_size"):
        length_groups(lengths, 0)
    for n, world in ((10, 3), (2, 4), (0, 2)):
        blocks = [rank_share(n, r, world) for r in range(world)]
        assert [i for lo, hi in blocks for i in range(lo, hi)] == list(range(n))


@pytest.mark.parametrize("window", [None, 0, 5])
def test_stateless_grouping_equals_unbatched_and_keeps_order(tiny_model, monkeypatch, window):
    opt, w = tiny_model
    single = ElmoEmbedder(opt, w, stateful=False)
    want = [single.embed_sentence(s) for s in SENTENCES + [[]]]
    emb = ElmoEmbedder(opt, w, stateful=False)
    batches = record_batches(emb, monkeypatch)
    got = list(emb.embed_sentences(SENTENCES + [[]], batch_size=4, window=window))
    assert len(got) == len(want)
    for g, e in zip(got, want):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, **TOL)
    # batches hold sentences of similar length (sorted within each window), not consecutive input
    lengths = [[len(s) for s in b] for b in batches]
    assert all(b == sorted(b) for b in lengths)
    if window == 0:
        flat = [n for b in lengths for n in b]
        assert flat == sorted(len(s) for s in SENTENCES)
        assert batches[0] != SENTENCES[:4]


def test_stateful_batches_keep_input_order(tiny_model, monkeypatch):
    opt, w = tiny_model
    ref = ElmoEmbedder(opt, w)  # stateful (default): consecutive batches, state carried
    want = [e for i in range(0, len(SENTENCES), 4) for e in ref.embed_batch(SENTENCES[i:i + 4])]
    emb = ElmoEmbedder(opt, w)
    batches = record_batches(emb, monkeypatch)
    got = list(emb.embed_sentences(SENTENCES, batch_size=4))
    assert batches == [SENTENCES[i:i + 4] for i in range(0, len(SENTENCES), 4)]
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, **TOL)
    # and a stateless run differs from it (the state matters, so the order must be kept)
    stateless = list(ElmoEmbedder(opt, w, stateful=False).embed_sentences(SENTENCES, batch_size=4))
    assert max(float(np.abs(a - b).max()) for a, b in zip(stateless[4:], got[4:])) > 1e-3


def _read(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][...] for k in f}


def _write_input(tmp_path) -> str:
    src = tmp_path / "in.txt"
    src.write_text("\n".join(" ".join(s) for s in SENTENCES) + "\n")
    return str(src)


def test_stateless_embed_file_equals_per_sentence(tiny_model, tmp_path):
    opt, w = tiny_model
    src = _write_input(tmp_path)
    emb = ElmoEmbedder(opt, w, stateful=False)
    emb.embed_file(src, tmp_path / "out.hdf5", batch_size=3, progress=False)
    data = _read(tmp_path / "out.hdf5")
    assert set(data) == {str(i) for i in range(len(SENTENCES))} | {"sentence_to_index"}
    for i, s in enumerate(SENTENCES):
        np.testing.assert_allclose(data[str(i)], emb.embed_sentence(s), **TOL)


def test_chunked_file_equals_single_chunk_and_rerun_reuses_chunks(tiny_model, tmp_path, monkeypatch):
    """Chunks of 5 lines (sorting window) give the same values as one chunk; a killed run's chunks are kept
    and a rerun embeds only the rest."""
    opt, w = tiny_model
    src = _write_input(tmp_path)
    emb = ElmoEmbedder(opt, w, stateful=False)
    single = tmp_path / "single.hdf5"
    emb.embed_file(src, single, batch_size=3, progress=False, chunk_lines=10 ** 6)
    out = tmp_path / "multi.hdf5"
    real = emb.embed_batch
    calls = []

    def dying(batch):
        calls.append(1)
        if len(calls) == 3:  # chunk 0 (2 batches) complete, chunk 1 dies
            raise KeyboardInterrupt
        return real(batch)
    monkeypatch.setattr(emb, "embed_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        emb.embed_file(src, out, batch_size=3, progress=False, chunk_lines=5)
    monkeypatch.setattr(emb, "embed_batch", real)
    batches = record_batches(emb, monkeypatch)
    emb.embed_file(src, out, batch_size=3, progress=False, chunk_lines=5)
    assert sum(len(b) for b in batches) == len(SENTENCES) - 5  # chunk 0 was not recomputed
    want, got = _read(single), _read(out)
    assert set(got) == set(want)
    assert got["sentence_to_index"][0] == want["sentence_to_index"][0]
    for k in want:
        if k != "sentence_to_index":
            np.testing.assert_allclose(got[k], want[k], **TOL)
    assert sorted(os.listdir(tmp_path)) == ["in.txt", "model", "multi.hdf5", "single.hdf5"]


@pytest.mark.slow
def test_torchrun_two_processes(tiny_model, tmp_path):
    opt, w = tiny_model
    src = _write_input(tmp_path)
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        from elmo_fast.embedder import ElmoEmbedder
        ElmoEmbedder({str(opt)!r}, {str(w)!r}, stateful=False).embed_file(
            {src!r}, {str(tmp_path / 'multi.hdf5')!r}, output_format="top", batch_size=2, progress=False,
            chunk_lines=3)
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ElmoEmbedder(opt, w, stateful=False).embed_file(src, tmp_path / "single.hdf5", output_format="top",
                                                    progress=False)
    want, got = _read(tmp_path / "single.hdf5"), _read(tmp_path / "multi.hdf5")
    assert set(got) == set(want) and len(got) == len(SENTENCES) + 1
    for k in want:
        if k != "sentence_to_index":
            np.testing.assert_allclose(got[k], want[k], **TOL)
    assert not [p for p in os.listdir(tmp_path) if ".embed-work" in p or ".tmp-" in p]
