"""Resumable, idempotent embed: a killed run (one process or two, torchrun-style) rerun with the same
command gives exactly the output of an uninterrupted run; completed chunks are reused only when input chunk,
model, format and statefulness match, and the log says why a chunk is recomputed."""
from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from elmo_fast.embedder import ElmoEmbedder
from elmo_fast.errors import UserError

from helpers import write_model

LINES = [" ".join(f"w{(i * 7 + k) % 23}" for k in range(1 + i % 6)) for i in range(22)]


def _read(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][...] for k in f}


def assert_same_file(a, b) -> None:
    da, db = _read(a), _read(b)
    assert sorted(da) == sorted(db)
    for k in da:
        if da[k].dtype.kind in "SOU":
            assert da[k][0] == db[k][0]
        else:
            np.testing.assert_array_equal(da[k], db[k], err_msg=k)


def _write(path: Path, lines) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _interrupt_after(monkeypatch, emb: ElmoEmbedder, n_batches: int) -> list:
    real = emb.embed_batch
    seen: list = []

    def dying(batch):
        if len(seen) == n_batches:
            raise KeyboardInterrupt
        seen.append([list(s) for s in batch])
        return real(batch)
    monkeypatch.setattr(emb, "embed_batch", dying)
    return seen


def _spy(monkeypatch, emb: ElmoEmbedder) -> list:
    real = emb.embed_batch
    seen: list = []

    def spy(batch):
        seen.append([list(s) for s in batch])
        return real(batch)
    monkeypatch.setattr(emb, "embed_batch", spy)
    return seen


@pytest.mark.parametrize("stateful", [False, True])
def test_interrupted_api_run_resumes_to_identical_output(tiny_model, tmp_path, monkeypatch, caplog, stateful):
    """Stateful resume restores the saved LSTM state: bit-identical to the uninterrupted run."""
    opt, w = tiny_model
    src = _write(tmp_path / "in.txt", LINES)
    ElmoEmbedder(opt, w, stateful=stateful).embed_file(src, tmp_path / "full.hdf5", batch_size=2, chunk_lines=4,
                                                       progress=False)
    emb = ElmoEmbedder(opt, w, stateful=stateful)
    _interrupt_after(monkeypatch, emb, 5)  # chunks 0 and 1 complete (2 batches each), chunk 2 dies
    with pytest.raises(KeyboardInterrupt):
        emb.embed_file(src, tmp_path / "out.hdf5", batch_size=2, chunk_lines=4, progress=False)
    emb2 = ElmoEmbedder(opt, w, stateful=stateful)  # a new process would have a fresh embedder
    seen = _spy(monkeypatch, emb2)
    with caplog.at_level(logging.INFO):
        emb2.embed_file(src, tmp_path / "out.hdf5", batch_size=2, chunk_lines=4, progress=False)
    assert sum(len(b) for b in seen) == len(LINES) - 8  # the two completed chunks were not recomputed
    assert "reused 2 of 6 completed chunks" in caplog.text
    assert_same_file(tmp_path / "out.hdf5", tmp_path / "full.hdf5")
    if stateful:  # the carried state matters here, so equality above is not trivial
        stateless = ElmoEmbedder(opt, w, stateful=False)
        stateless.embed_file(src, tmp_path / "sl.hdf5", batch_size=2, chunk_lines=4, progress=False)
        assert np.abs(_read(tmp_path / "sl.hdf5")["10"] - _read(tmp_path / "full.hdf5")["10"]).max() > 1e-4


def _leave_partial_run(opt, w, src, out, monkeypatch, *, stateful=False, n_batches=7, **kw) -> None:
    emb = ElmoEmbedder(opt, w, stateful=stateful)
    _interrupt_after(monkeypatch, emb, n_batches)
    with pytest.raises(KeyboardInterrupt):
        emb.embed_file(src, out, batch_size=2, chunk_lines=4, progress=False, **kw)
    monkeypatch.undo()


def test_changed_input_line_invalidates_only_its_chunk(tiny_model, tmp_path, monkeypatch, caplog):
    opt, w = tiny_model
    src = _write(tmp_path / "in.txt", LINES)
    out = tmp_path / "out.hdf5"
    _leave_partial_run(opt, w, src, out, monkeypatch)  # chunks 0-2 complete
    changed = list(LINES)
    changed[5] = "a different line"  # chunk 1 (lines 5-8)
    _write(tmp_path / "in.txt", changed)
    emb = ElmoEmbedder(opt, w, stateful=False)
    seen = _spy(monkeypatch, emb)
    with caplog.at_level(logging.INFO):
        emb.embed_file(src, out, batch_size=2, chunk_lines=4, progress=False)
    assert "chunk 1 (lines 5-8): recomputing: its input lines changed" in caplog.text
    assert "chunk 0 (" not in caplog.text and "chunk 2 (" not in caplog.text
    assert "reused 2 of 6" in caplog.text
    assert sum(len(b) for b in seen) == len(LINES) - 8
    ElmoEmbedder(opt, w, stateful=False).embed_file(src, tmp_path / "fresh.hdf5", batch_size=2, chunk_lines=4,
                                                    progress=False)
    assert_same_file(out, tmp_path / "fresh.hdf5")


def test_stateful_change_invalidates_every_later_chunk(tiny_model, tmp_path, monkeypatch, caplog):
    opt, w = tiny_model
    src = _write(tmp_path / "in.txt", LINES)
    out = tmp_path / "out.hdf5"
    _leave_partial_run(opt, w, src, out, monkeypatch, stateful=True)
    changed = list(LINES)
    changed[1] = "changed"
    _write(tmp_path / "in.txt", changed)
    emb = ElmoEmbedder(opt, w)
    with caplog.at_level(logging.INFO):
        emb.embed_file(src, out, batch_size=2, chunk_lines=4, progress=False)
    assert "chunk 0 (lines 1-4): recomputing: its input lines changed" in caplog.text
    assert "chunk 1 (lines 5-8): recomputing: an earlier chunk changed" in caplog.text
    assert "completed chunks from" not in caplog.text and "0 of 6 chunks reused" in caplog.text
    ElmoEmbedder(opt, w).embed_file(src, tmp_path / "fresh.hdf5", batch_size=2, chunk_lines=4, progress=False)
    assert_same_file(out, tmp_path / "fresh.hdf5")


@pytest.mark.parametrize("change, reason", [
    ("model", "the model files changed"),
    ("format", "the output format changed"),
    ("stateful", "statefulness (--stateless) changed"),
    ("keys", "the key mode (--use-sentence-keys) changed"),
])
def test_other_run_settings_are_never_reused(tiny_model, tmp_path, monkeypatch, caplog, change, reason):
    opt, w = tiny_model
    src = _write(tmp_path / "in.txt", LINES)
    out = tmp_path / "out.hdf5"
    _leave_partial_run(opt, w, src, out, monkeypatch)
    kwargs = {}
    stateful = False
    if change == "model":
        write_model(tmp_path / "model", seed=1)  # same names, other weights
    elif change == "format":
        kwargs["output_format"] = "top"
    elif change == "stateful":
        stateful = True
    else:
        kwargs["use_sentence_keys"] = True
    emb = ElmoEmbedder(opt, w, stateful=stateful)
    with caplog.at_level(logging.INFO):
        emb.embed_file(src, out, batch_size=2, chunk_lines=4, progress=False, **kwargs)
    assert f"chunk 0 (lines 1-4): recomputing: {reason}" in caplog.text
    assert "completed chunks from" not in caplog.text and "0 of 6 chunks reused" in caplog.text
    ElmoEmbedder(opt, w, stateful=stateful).embed_file(src, tmp_path / "fresh.hdf5", batch_size=2, chunk_lines=4,
                                                       progress=False, **kwargs)
    assert_same_file(out, tmp_path / "fresh.hdf5")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_dead_runs_temporary_files_are_removed_live_ones_kept(tiny_model, tmp_path, caplog):
    opt, w = tiny_model
    src = _write(tmp_path / "in.txt", LINES)
    out = tmp_path / "out.hdf5"
    dead = _dead_pid()
    work = tmp_path / "out.hdf5.embed-work"
    work.mkdir()
    (tmp_path / f"out.hdf5.tmp-{dead}").write_bytes(b"half")
    (work / f"chunk-000000.h5.tmp-{dead}").write_bytes(b"half")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f"out.hdf5.tmp-{live.pid}").write_bytes(b"someone else's")
        with caplog.at_level(logging.INFO):
            ElmoEmbedder(opt, w).embed_file(src, out, progress=False)
        assert not (tmp_path / f"out.hdf5.tmp-{dead}").exists() and not work.exists()
        assert (tmp_path / f"out.hdf5.tmp-{live.pid}").exists()
        assert f"left by a run that no longer exists (process {dead})" in caplog.text
    finally:
        live.kill()
        live.wait()


def test_concurrent_run_on_same_output_is_refused(tiny_model, tmp_path):
    opt, w = tiny_model
    src = _write(tmp_path / "in.txt", LINES)
    work = tmp_path / "out.hdf5.embed-work"
    work.mkdir()
    fd = os.open(work / "lock-0", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(UserError, match="another embed process is writing it"):
            ElmoEmbedder(opt, w).embed_file(src, tmp_path / "out.hdf5", progress=False)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------ kill -9
def _corpus(path: Path, n: int = 2400) -> str:
    path.write_text("".join(f"w{i % 97} x{i % 13} y{i % 5} z the end {'q ' * (i % 9)}\n" for i in range(n)))
    return str(path)


def _cmd(src, out, opt, w, *extra):
    return [sys.executable, "-m", "elmo_fast.cli", "embed", str(src), str(out), "--top", "--options-file", str(opt),
            "--weight-file", str(w), "--quiet", "--chunk-lines", "150", "--batch-size", "32", "--threads", "1",
            *extra]


def _wait_for_chunks(work: Path, n: int, procs, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if work.is_dir() and sum(p.name.endswith(".h5") for p in work.iterdir()) >= n:
            return
        if all(p.poll() is not None for p in procs):
            return
        time.sleep(0.05)


@pytest.mark.parametrize("stateful", [False, True])
def test_kill9_single_process_then_rerun_equals_uninterrupted(tiny_model, tmp_path, stateful):
    opt, w = tiny_model
    src = _corpus(tmp_path / "in.txt")
    extra = [] if stateful else ["--stateless"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    assert subprocess.run(_cmd(src, tmp_path / "full.hdf5", opt, w, *extra), env=env).returncode == 0
    out = tmp_path / "out.hdf5"
    proc = subprocess.Popen(_cmd(src, out, opt, w, *extra), env=env)
    _wait_for_chunks(Path(str(out) + ".embed-work"), 3, [proc])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    rerun = subprocess.run(_cmd(src, out, opt, w, *extra), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "completed chunks from" in rerun.stderr  # something was reused
    assert_same_file(out, tmp_path / "full.hdf5")
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name or p.name.endswith(".embed-work")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(cmd, port):
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, OMP_NUM_THREADS="1", WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def test_kill9_two_processes_then_rerun_equals_single_process(tiny_model, tmp_path):
    """torchrun-style (WORLD_SIZE/RANK, gloo on CPU): kill both ranks mid-run, rerun: the merged file equals a
    one-process stateless run (chunks do not depend on which rank embedded them)."""
    opt, w = tiny_model
    src = _corpus(tmp_path / "in.txt")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    assert subprocess.run(_cmd(src, tmp_path / "full.hdf5", opt, w, "--stateless"), env=env).returncode == 0
    out = tmp_path / "out.hdf5"
    procs = _two_ranks(_cmd(src, out, opt, w, "--stateless"), _free_port())
    _wait_for_chunks(Path(str(out) + ".embed-work"), 4, procs)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    for p in procs:
        p.communicate()
    assert not out.exists()
    procs = _two_ranks(_cmd(src, out, opt, w, "--stateless"), _free_port())
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    assert any("completed chunks from" in e for e in errs)
    assert_same_file(out, tmp_path / "full.hdf5")
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name or p.name.endswith(".embed-work")]
