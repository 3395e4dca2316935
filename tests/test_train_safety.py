"""A run folder under faults: one ``train`` at a time (a lock), checkpoints verified by sha256 (a flipped byte
is refused; the previous verified checkpoint is the fallback), a checkpoint of another shape refused, every
compatibility check made before anything is written, and a full disk reported in one line naming the OS error
and the checkpoint kept.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from elmo_fast.cli import main as cli_main
from elmo_fast.errors import UserError
from elmo_fast.options import preset
from elmo_fast.training import CHECKPOINT_NAME, TrainConfig, load_checkpoint, run_training
from helpers import TRAIN_FLAGS as SMALL
from helpers import write_corpus as _corpus

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """``run``: 3 steps with a checkpoint at every step (so a previous one is kept) and a corpus."""
    base = tmp_path_factory.mktemp("safety")
    _corpus(base / "corpus.txt")
    assert cli_main(["train", "--train", str(base / "corpus.txt"), "--out", str(base / "run"), "--options", "tiny",
                     "--max-steps", "3", "--checkpoint-every", "1", *SMALL]) == 0
    return base


@pytest.fixture
def work(base, tmp_path) -> Path:
    shutil.copytree(base, tmp_path / "w")
    return tmp_path / "w"


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("ELMO_FAST_DEBUG", None)
    return env


def _bytes(folder: Path, *names: str) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in names}


def _errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _flip_a_tensor_byte(path: Path) -> None:
    """Flip the lowest bit of one float32 inside the largest tensor record (the value stays finite)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
        pos = info.header_offset + 30 + name_len + extra_len + 4 * 17
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 1]))


# ---------------------------------------------------------------------------------------------- lock
def test_two_trains_on_one_run_folder(base, tmp_path, caplog):
    """While one `train` runs, a second one on the same folder (fresh or --resume) is refused in one line naming
    the holder; the first runs on undisturbed."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "elmo_fast.cli", "train", "--train", str(base / "corpus.txt"), "--out", str(run),
           "--options", "tiny", "--max-steps", "100000", "--checkpoint-every", "5", "--threads", "1", *SMALL]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "train.lock").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()[-2000:] if proc.stderr else ""
        for argv in (["train", "--out", str(run), "--resume", "--max-steps", "2", "--quiet"],
                     ["train", "--train", str(base / "corpus.txt"), "--out", str(run), "--options", "tiny",
                      "--max-steps", "2", *SMALL]):
            caplog.clear()
            with caplog.at_level(logging.ERROR):
                rc = cli_main(argv)
            errors = _errors(caplog)
            assert rc == 2 and len(errors) == 1, (rc, caplog.text)
            assert str(run) in errors[0] and f"pid {proc.pid}" in errors[0], errors[0]
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    # the lock went with the process: the run resumes
    step = load_checkpoint(str(run / CHECKPOINT_NAME))["step"]
    assert cli_main(["train", "--out", str(run), "--resume", "--max-steps", str(step + 1), "--quiet"]) == 0


# ---------------------------------------------------------------------------------------------- verified checkpoints
def test_flipped_byte_in_tensor_data_is_refused_and_the_previous_checkpoint_used(work, caplog):
    run = work / "run"
    _flip_a_tensor_byte(run / CHECKPOINT_NAME)
    # export and evaluate refuse it in one line naming the checkpoint
    for argv in (["export", str(run), str(work / "x")], ["evaluate", str(run), "--heldout", str(work / "corpus.txt"),
                                                           "--quiet"]):
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            rc = cli_main(argv)
        errors = _errors(caplog)
        assert rc == 2 and len(errors) == 1 and "\n" not in errors[0], caplog.text
        assert str(run / CHECKPOINT_NAME) in errors[0] and "sha256" in errors[0], errors[0]
    assert not (work / "x").exists()
    # --resume falls back to the previous verified checkpoint (step 2) and says so
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        rc = cli_main(["train", "--out", str(run), "--resume", "--max-steps", "4", "--quiet"])
    assert rc == 0, caplog.text
    assert "sha256" in caplog.text and "step 2" in caplog.text, caplog.text
    ckpt = load_checkpoint(str(run / CHECKPOINT_NAME))
    assert ckpt["step"] == 4


def test_flipped_byte_without_a_previous_checkpoint_is_refused(work, caplog):
    run = work / "run"
    for p in run.iterdir():  # keep only the newest checkpoint
        if p.name != CHECKPOINT_NAME and p.name.startswith("checkpoint") and p.suffix == ".pt":
            p.unlink()
    _flip_a_tensor_byte(run / CHECKPOINT_NAME)
    before = _bytes(run, CHECKPOINT_NAME, "config.json", "options.json")
    with caplog.at_level(logging.ERROR):
        rc = cli_main(["train", "--out", str(run), "--resume", "--max-steps", "4", "--quiet"])
    errors = _errors(caplog)
    assert rc == 2 and len(errors) == 1 and "sha256" in errors[0] and str(run / CHECKPOINT_NAME) in errors[0], errors
    assert _bytes(run, CHECKPOINT_NAME, "config.json", "options.json") == before


def test_checkpoint_of_another_shape_is_refused_not_adopted(work, tmp_path, caplog):
    """Another run's checkpoint (another LSTM size) copied into the run folder: a plain --resume refuses it
    and options.json / config.json stay as they were."""
    other_opts = preset("tiny").to_dict()
    other_opts["lstm"]["projection_dim"] = 12
    other_opts["lstm"]["dim"] = 24
    (tmp_path / "other.json").write_text(json.dumps(other_opts))
    assert cli_main(["train", "--train", str(work / "corpus.txt"), "--out", str(tmp_path / "other"), "--options",
                     str(tmp_path / "other.json"), "--max-steps", "1", *SMALL]) == 0
    run = work / "run"
    for p in (tmp_path / "other").iterdir():  # the checkpoint and everything that goes with it
        if p.name.startswith("checkpoint"):
            shutil.copy(p, run / p.name)
    before = _bytes(run, "config.json", "options.json")
    with caplog.at_level(logging.ERROR):
        rc = cli_main(["train", "--out", str(run), "--resume", "--max-steps", "4", "--quiet"])
    errors = _errors(caplog)
    assert rc == 2 and len(errors) == 1 and str(run / CHECKPOINT_NAME) in errors[0], caplog.text
    assert "shape" in errors[0] and "options.json" in errors[0], errors[0]
    assert _bytes(run, "config.json", "options.json") == before


def test_refused_resume_leaves_the_run_files_untouched(work, caplog):
    """`--resume --batch-size 3` is refused (the data position is for 2 rows) before anything is written, so the
    plain --resume still works; a plain --resume does not rewrite config.json / options.json either."""
    run = work / "run"
    names = ("config.json", "options.json", "vocab.txt", CHECKPOINT_NAME)
    before = _bytes(run, *names)
    with caplog.at_level(logging.ERROR):
        rc = cli_main(["train", "--out", str(run), "--resume", "--batch-size", "3", "--max-steps", "4", "--quiet"])
    assert rc == 2 and "rows" in caplog.text, caplog.text
    assert _bytes(run, *names) == before
    assert cli_main(["train", "--out", str(run), "--resume", "--quiet"]) == 0  # the run's own max_steps: 3
    assert _bytes(run, "config.json", "options.json") == {n: before[n] for n in ("config.json", "options.json")}
    # a flag given explicitly does change them
    assert cli_main(["train", "--out", str(run), "--resume", "--max-steps", "4", "--quiet"]) == 0
    assert json.loads((run / "config.json").read_text())["max_steps"] == 4


# ---------------------------------------------------------------------------------------------- full disk
def _limited(max_bytes: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return preexec


def test_checkpoint_write_on_a_full_disk_is_one_line_and_resumable(work):
    run = work / "run"
    size = (run / CHECKPOINT_NAME).stat().st_size
    before = hashlib.sha256((run / CHECKPOINT_NAME).read_bytes()).hexdigest()
    proc = subprocess.run([sys.executable, "-m", "elmo_fast.cli", "--log-level", "ERROR", "train", "--out", str(run),
                           "--resume",
                           "--max-steps", "5", "--quiet"], capture_output=True, text=True, env=_env(), timeout=300,
                          preexec_fn=_limited(size // 2))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "File too large" in lines[0] and "enforce fail" not in proc.stderr, lines[0]
    assert str(run / CHECKPOINT_NAME) in lines[0] and "step 3" in lines[0], lines[0]
    assert hashlib.sha256((run / CHECKPOINT_NAME).read_bytes()).hexdigest() == before
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]
    # with room again the run resumes from the kept checkpoint
    assert cli_main(["train", "--out", str(run), "--resume", "--max-steps", "5", "--quiet"]) == 0
    assert load_checkpoint(str(run / CHECKPOINT_NAME))["step"] == 5


def test_library_resume_refuses_a_corrupted_checkpoint(work):
    run = work / "run"
    for p in run.iterdir():
        if p.name != CHECKPOINT_NAME and p.name.startswith("checkpoint") and p.suffix == ".pt":
            p.unlink()
    _flip_a_tensor_byte(run / CHECKPOINT_NAME)
    config = TrainConfig(batch_size=2, unroll_steps=4, n_negative_samples=6, max_steps=4, backend="reference")
    with pytest.raises(UserError, match="sha256"):
        run_training(str(work / "corpus.txt"), str(run), None, config, resume=True, progress=False)


# ---------------------------------------------------------------------------------------------- kill -9 in a save
_KILL_IN_SAVE = """
import os, sys
import elmo_fast.training.checkpoints as checkpoints
import elmo_fast.training.loop as loop
k = int(sys.argv[1])
count = [0]
armed = [False]
def wrap(fn):
    def inner(*a, **kw):
        if armed[0]:
            count[0] += 1
            if count[0] == k:
                os._exit(77)
        return fn(*a, **kw)
    return inner
for name in ("fsync", "replace", "rename", "link", "remove", "unlink"):  # (a kill inside os.write: as at the fsync)
    setattr(os, name, wrap(getattr(os, name)))
original = checkpoints.save_checkpoint_file
def save(*a, **kw):
    armed[0] = True
    return original(*a, **kw)
loop.save_checkpoint_file = save
from elmo_fast.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_train_killed_at_each_step_of_a_checkpoint_save_resumes(work):
    """A kill (no cleanup) at every file-system step of writing the step-4 checkpoint: checkpoint.pt always
    verifies (step 3 or 4) without falling back, and the run then resumes to the end."""
    run = work / "run"
    pristine = work / "pristine"
    shutil.copytree(run, pristine)
    k, codes = 1, []
    while k < 60:
        shutil.rmtree(run)
        shutil.copytree(pristine, run)
        proc = subprocess.run([sys.executable, "-c", _KILL_IN_SAVE, str(k), "--log-level", "ERROR", "train", "--out",
                               str(run), "--resume", "--max-steps", "4", "--quiet"], capture_output=True, text=True,
                              env=_env(), timeout=300)
        codes.append(proc.returncode)
        ckpt = load_checkpoint(str(run / CHECKPOINT_NAME))  # verified against checkpoint.sha256.json
        assert ckpt["step"] in (3, 4), (k, ckpt["step"])
        if proc.returncode != 77:
            assert proc.returncode == 0 and ckpt["step"] == 4, proc.stderr[-2000:]
            break
        k += 1
    assert len(codes) >= 5, codes
    assert cli_main(["train", "--out", str(run), "--resume", "--max-steps", "5", "--quiet"]) == 0
    assert load_checkpoint(str(run / CHECKPOINT_NAME))["step"] == 5
