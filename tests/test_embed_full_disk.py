"""A full disk during embed: a one-line error naming the file and the space it needed, never a crash (HDF5
dies with SIGSEGV when a write fails, so the writes run in child processes); nothing complete-looking is
left, and a rerun with space resumes from the completed chunks.

The full disk is simulated with the file size limit (``ulimit -f``, RLIMIT_FSIZE) in a subprocess that
ignores SIGXFSZ, so that a write past the limit fails with EFBIG as a write on a full disk fails with ENOSPC.
"""
from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from elmo_fast.cli import main

from helpers import write_model

# the tiny model: 2P = 32, so "--all" stores 3 x 32 x 4 = 384 bytes per token
LINES = 300
CHUNK = "30"   # with --batch-size 10: 10 chunks of about 100 KB each; the output about 1 MB


def _input(path: Path, tokens: int = 8, word: str = "w") -> Path:
    path.write_text("\n".join(" ".join(f"{word}{(i * 7 + k) % 50}" for k in range(tokens)) for i in range(LINES))
                    + "\n", encoding="utf-8")
    return path


def _run_limited(tmp_path: Path, argv: list[str], limit: int, skip_space_check: bool) -> subprocess.CompletedProcess:
    """``elmo-fast ARGV`` in a child with RLIMIT_FSIZE = ``limit`` bytes (SIGXFSZ ignored: writes fail EFBIG)."""
    script = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
import elmo_fast.embedding.space as space
if {skip_space_check!r}:
    space.check_space = lambda *a, **k: None   # let the writes themselves meet the limit
from elmo_fast.cli import main
sys.exit(main(sys.argv[1:]))
"""
    env = {**os.environ, "ELMO_FAST_DEBUG": "", "ELMO_FAST_CRASH_DIR": str(tmp_path / "crashes")}
    return subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp-" in p.name)


pytestmark = pytest.mark.skipif(resource.getrlimit(resource.RLIMIT_FSIZE)[1] != resource.RLIM_INFINITY and
                                resource.getrlimit(resource.RLIMIT_FSIZE)[1] < (8 << 20),
                                reason="the hard file size limit is already small")


@pytest.fixture
def setup(tmp_path):
    opt, w = write_model(tmp_path / "model")
    _input(tmp_path / "in.txt")
    argv = ["embed", "in.txt", "out.hdf5", "--all", "--quiet", "--chunk-lines", CHUNK, "--batch-size", "10",
            "--options-file", str(opt), "--weight-file", str(w)]
    return tmp_path, argv


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def test_merge_on_a_full_disk_is_one_line_and_a_rerun_resumes(setup, caplog):
    tmp_path, argv = setup
    proc = _run_limited(tmp_path, argv, 400 << 10, skip_space_check=True)  # chunks fit, the output does not
    line = _one_line(proc)
    assert "out.hdf5: writing failed" in line and "needs about" in line and "file size limit" in line, line
    assert not (tmp_path / "out.hdf5").exists()
    assert _leftovers(tmp_path) == []
    chunks = sorted((tmp_path / "out.hdf5.embed-work").glob("chunk-*.h5"))
    assert len(chunks) == 10
    with caplog.at_level(logging.INFO):
        assert main(argv[:1] + [str(tmp_path / "in.txt"), str(tmp_path / "out.hdf5")] + argv[3:]) == 0
    assert "reused 10 of 10 completed chunks" in caplog.text
    assert main(argv[:1] + [str(tmp_path / "in.txt"), str(tmp_path / "ref.hdf5")] + argv[3:]) == 0
    with h5py.File(tmp_path / "out.hdf5", "r") as a, h5py.File(tmp_path / "ref.hdf5", "r") as b:
        assert sorted(a) == sorted(b)
        for key in ("0", "150", "299"):
            np.testing.assert_array_equal(a[key][...], b[key][...])


def test_chunk_write_on_a_full_disk_is_one_line(setup):
    tmp_path, argv = setup
    proc = _run_limited(tmp_path, argv, 40 << 10, skip_space_check=True)  # not even one chunk fits
    line = _one_line(proc)
    assert "chunk-000000.h5" in line and "writing failed" in line and "needs about" in line, line
    assert not (tmp_path / "out.hdf5").exists()
    assert _leftovers(tmp_path) == []
    assert not list((tmp_path / "out.hdf5.embed-work").glob("chunk-*.h5")) if (
        tmp_path / "out.hdf5.embed-work").exists() else True


def test_sentence_store_on_a_full_disk_is_one_line(tmp_path):
    opt, w = write_model(tmp_path / "model")
    # 12,000 lines: the store writes its first 10,000 rows (about 200 KB) during the input scan
    (tmp_path / "in.txt").write_text("".join(f"w{i} x{i % 7}\n" for i in range(12_000)), encoding="utf-8")
    argv = ["embed", "in.txt", "out.hdf5", "--top", "--quiet", "--options-file", str(opt), "--weight-file", str(w)]
    proc = _run_limited(tmp_path, argv, 64 << 10, skip_space_check=True)
    line = _one_line(proc)
    assert "sentences.sqlite: writing failed" in line and "SQLite" in line, line
    assert "Traceback" not in proc.stderr and not (tmp_path / "out.hdf5").exists()


def test_file_size_limit_is_checked_before_embedding(setup):
    tmp_path, argv = setup
    proc = _run_limited(tmp_path, argv, 400 << 10, skip_space_check=False)
    line = _one_line(proc)
    assert "OUTPUT" in line and "file size limit (ulimit -f)" in line and "would need about" in line, line
    assert not (tmp_path / "out.hdf5.embed-work").exists() or not list(
        (tmp_path / "out.hdf5.embed-work").glob("chunk-*.h5"))


def test_free_space_is_checked_before_embedding(setup, monkeypatch, caplog):
    import elmo_fast.embedding.space as space
    tmp_path, argv = setup
    monkeypatch.setattr(space, "free_bytes", lambda folder: 100 << 10)
    with caplog.at_level(logging.ERROR):
        rc = main(argv[:1] + [str(tmp_path / "in.txt"), str(tmp_path / "out.hdf5")] + argv[3:])
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "not enough free space in" in errors[0] and "of chunk files until they are merged" \
        in errors[0], errors
    assert not (tmp_path / "out.hdf5").exists() and not (tmp_path / "out.hdf5.embed-work").exists()


def test_output_size_estimate():
    from elmo_fast.embedding.space import output_bytes
    assert output_bytes(n_tokens=10, n_lines=2, layers=3, width=1024) == 4 * 3 * 10 * 1024 + 2 * 512
