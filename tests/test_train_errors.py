"""Bad input and faults for ``train``, ``evaluate`` and ``export``: exit code 2, one line naming the file/flag,
no traceback, and no file outside the command's output directory touched. Also: training never writes a
checkpoint with NaN/Inf, and export refuses a diverged model.

Each row of :data:`ROWS` is ``(id, setup, argv, expected exit code, required message fragment, output path)``:
``setup(tmp)`` builds the fault inside ``tmp`` (which already holds a trained run ``tmp/run``, a corpus
``tmp/corpus.txt`` and a held-out file ``tmp/held.txt``); ``argv`` may use ``{tmp}``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

from elmo_fast.cli import main as cli_main
from elmo_fast.options import preset
from elmo_fast.training import CHECKPOINT_NAME, TrainConfig, Trainer, load_checkpoint, run_training
from elmo_fast.training.checkpoints import DIGESTS_NAME
from helpers import TRAIN_FLAGS as SMALL
from helpers import write_corpus as _corpus

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A trained run (2 steps) with its corpus and a held-out file, copied into every row's directory."""
    base = tmp_path_factory.mktemp("base")
    _corpus(base / "corpus.txt")
    _corpus(base / "held.txt", lines=6)
    config = TrainConfig(batch_size=2, unroll_steps=4, n_negative_samples=6, max_steps=2, checkpoint_every=1000,
                         eval_batch_size=2, backend="reference")
    run_training(str(base / "corpus.txt"), str(base / "run"), preset("tiny"), config, progress=False)
    return base


def _snapshot(root: Path, exclude: Path | None) -> dict[str, str]:
    """Content hash (or 'dir') of everything under ``root`` except ``exclude``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if exclude is not None and (d == exclude or exclude in d.parents):
            dirnames[:] = []
            continue
        out[str(d)] = "dir"
        for name in filenames:
            p = d / name
            if exclude is not None and p == exclude:
                continue
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "special"
    return out


# ---------------------------------------------------------------------------------------------- faults
def _write(rel: str, data: bytes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(data)
    return setup


def _ckpt_edit(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    """Rewrite run/checkpoint.pt after ``edit(ckpt)`` (a crafted checkpoint). The run's checksums go too, as
    in a folder of an older elmo-fast: the row tests the check of the crafted field, not the checksum."""
    def setup(tmp: Path) -> None:
        path = tmp / "run" / CHECKPOINT_NAME
        ckpt = torch.load(path, weights_only=True)
        result = edit(ckpt)
        torch.save(result if isinstance(result, dict) and "format" in result else ckpt, path)
        (tmp / "run" / DIGESTS_NAME).unlink(missing_ok=True)
    return setup


class _Payload:  # a pickled object that weights_only=True must refuse to build
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _nan_weight(ckpt: dict) -> None:
    ckpt["model"]["softmax_bias"][0] = float("nan")


def _both(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        for s in setups:
            s(tmp)
    return setup


def _nothing(tmp: Path) -> None:
    pass


def _mkdir(rel: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / rel).mkdir(parents=True, exist_ok=True)


def _grow_corpus(tmp: Path) -> None:
    with open(tmp / "corpus.txt", "a", encoding="utf-8") as f:
        f.write("w1 w2 w3\n")


NO_CUDA = not torch.cuda.is_available()
ROOT = os.geteuid() == 0

TRAIN = ["train", "--train", "{tmp}/corpus.txt", "--out", "{tmp}/new", "--options", "tiny", "--max-steps", "1", *SMALL]

#: (id, setup, argv, exit code, message fragment, output that may change (relative to tmp) or None)
ROWS = [
    # ---- train
    ("train: --train matches no file", _nothing,
     ["train", "--train", "{tmp}/missing/*.txt", "--out", "{tmp}/new", "--options", "tiny", *SMALL], 2,
     "no files match", "new"),
    ("train: --train is a directory", _mkdir("corpusdir"),
     ["train", "--train", "{tmp}/corpusdir", "--out", "{tmp}/new", "--options", "tiny", *SMALL], 2,
     "is a directory", "new"),
    ("train: corpus line not UTF-8", _write("bad.txt", b"w1 w2\n\xc3\x28 w3\n"),
     ["train", "--train", "{tmp}/bad.txt", "--out", "{tmp}/new", "--options", "tiny", "--max-steps", "1", *SMALL], 2,
     "bad.txt:2: not valid UTF-8", "new"),
    ("train: --heldout is a directory", _mkdir("helddir"), TRAIN + ["--heldout", "{tmp}/helddir"], 2,
     "--heldout", "new"),
    ("train: --heldout does not exist", _nothing, TRAIN + ["--heldout", "{tmp}/nope.txt"], 2,
     "nope.txt: no such file", "new"),
    ("train: --out is a regular file", _write("outfile", b"keep me"),
     ["train", "--train", "{tmp}/corpus.txt", "--out", "{tmp}/outfile", "--options", "tiny", *SMALL], 2,
     "exists and is not a directory", None),
    ("train: --out already holds a checkpoint (no --resume)", _nothing,
     ["train", "--train", "{tmp}/corpus.txt", "--out", "{tmp}/run", "--options", "tiny", *SMALL], 2,
     "already holds a checkpoint", None),
    ("train: --options missing (no --resume/--init-from)", _nothing,
     ["train", "--train", "{tmp}/corpus.txt", "--out", "{tmp}/new", *SMALL], 2, "--options: required", "new"),
    ("train: --options names no preset or file", _nothing,
     ["train", "--train", "{tmp}/corpus.txt", "--out", "{tmp}/new", "--options", "{tmp}/nope.json", *SMALL], 2,
     "nope.json", "new"),
    ("train: --vocab without <UNK>", _write("v.txt", b"w1\n<S>\nw2\n</S>\n"), TRAIN + ["--vocab", "{tmp}/v.txt"], 2,
     "v.txt: no line <UNK>", "new"),
    ("train: --vocab is a directory", _mkdir("vdir"), TRAIN + ["--vocab", "{tmp}/vdir"], 2, "--vocab", "new"),
    ("train: --device cuda without CUDA", _nothing, TRAIN + ["--device", "cuda"], 2, "CUDA is not available", "new"),
    ("train: --device is not a device", _nothing, TRAIN + ["--device", "gpu0"], 2, "--device 'gpu0': not a device",
     "new"),
    ("train: --threads 0", _nothing, TRAIN + ["--threads", "0"], 2, "--threads: expected a positive integer", "new"),
    ("train: --resume without a run", _nothing, ["train", "--out", "{tmp}/none", "--resume", *SMALL], 2,
     "run directory not found", "none"),
    ("train: --resume on a changed corpus", _grow_corpus,
     ["train", "--train", "{tmp}/corpus.txt", "--out", "{tmp}/run", "--resume", "--quiet"], 2,
     "corpus differs", "run"),
    ("train: --resume, checkpoint is 0 bytes", _write("run/checkpoint.pt", b""),
     ["train", "--out", "{tmp}/run", "--resume", "--quiet"], 2, "checkpoint.pt: empty file (0 bytes)", "run"),
    ("train: --resume, checkpoint is random bytes", _write("run/checkpoint.pt", os.urandom(3000)),
     ["train", "--out", "{tmp}/run", "--resume", "--quiet"], 2, "not a readable torch checkpoint", "run"),
    ("train: --resume, checkpoint holds a pickled callable", _ckpt_edit(lambda c: {"format": _Payload()}),
     ["train", "--out", "{tmp}/run", "--resume", "--quiet"], 2, "not a readable torch checkpoint", "run"),
    # ---- evaluate
    ("evaluate: MODEL_DIR does not exist", _nothing, ["evaluate", "{tmp}/nope", "--heldout", "{tmp}/held.txt"], 2,
     "model directory not found", None),
    ("evaluate: MODEL_DIR is a file", _nothing, ["evaluate", "{tmp}/held.txt", "--heldout", "{tmp}/held.txt"], 2,
     "not a directory", None),
    ("evaluate: --heldout is a directory", _mkdir("helddir"), ["evaluate", "{tmp}/run", "--heldout", "{tmp}/helddir"],
     2, "is a directory", None),
    ("evaluate: --heldout is blank", _write("blank.txt", b"\n\n"), ["evaluate", "{tmp}/run", "--heldout",
                                                                     "{tmp}/blank.txt", "--quiet"], 2,
     "no sentences to score", None),
    ("evaluate: checkpoint is 0 bytes", _write("run/checkpoint.pt", b""),
     ["evaluate", "{tmp}/run", "--heldout", "{tmp}/held.txt"], 2, "empty file (0 bytes)", None),
    ("evaluate: checkpoint is random bytes", _write("run/checkpoint.pt", os.urandom(3000)),
     ["evaluate", "{tmp}/run", "--heldout", "{tmp}/held.txt"], 2, "not a readable torch checkpoint", None),
    ("evaluate: checkpoint without 'model'", _ckpt_edit(lambda c: c.pop("model")),
     ["evaluate", "{tmp}/run", "--heldout", "{tmp}/held.txt"], 2, "checkpoint field 'model' is missing", None),
    ("evaluate: checkpoint with an empty 'ranks' list", _ckpt_edit(lambda c: c.__setitem__("ranks", [])),
     ["evaluate", "{tmp}/run", "--heldout", "{tmp}/held.txt"], 2, "'ranks' has 0 entries", None),
    ("evaluate: checkpoint 'model' of the wrong type", _ckpt_edit(lambda c: c.__setitem__("model", [1, 2])),
     ["evaluate", "{tmp}/run", "--heldout", "{tmp}/held.txt"], 2, "checkpoint field 'model' is list", None),
    ("evaluate: checkpoint weight of the wrong shape",
     _ckpt_edit(lambda c: c["model"].__setitem__("bilm.token_encoder.char_embed", torch.zeros(3, 3))),
     ["evaluate", "{tmp}/run", "--heldout", "{tmp}/held.txt"], 2, "do not fit the model", None),
    ("evaluate: --device cuda without CUDA", _nothing,
     ["evaluate", "{tmp}/run", "--heldout", "{tmp}/held.txt", "--device", "cuda"], 2, "CUDA is not available", None),
    ("evaluate: --max-batches 0", _nothing,
     ["evaluate", "{tmp}/run", "--heldout", "{tmp}/held.txt", "--max-batches", "0"], 2, "--max-batches", None),
    # ---- export
    ("export: OUT_DIR is a regular file", _write("out.txt", b"keep me"), ["export", "{tmp}/run", "{tmp}/out.txt"], 2,
     "exists and is not a directory", None),
    ("export: OUT_DIR is a non-empty directory", _write("outdir/notes.txt", b"keep me"),
     ["export", "{tmp}/run", "{tmp}/outdir"], 2, "directory is not empty", None),
    ("export: OUT_DIR is the run directory", _nothing, ["export", "{tmp}/run", "{tmp}/run", "--overwrite"], 2,
     "is the run directory", None),
    ("export: RUN_DIR does not exist", _nothing, ["export", "{tmp}/nope", "{tmp}/x"], 2, "no such directory", "x"),
    ("export: checkpoint holds NaN", _ckpt_edit(_nan_weight), ["export", "{tmp}/run", "{tmp}/x"], 2,
     "tensor 'model/softmax_bias' holds NaN/Inf", "x"),
    ("export: checkpoint 'step' is a string", _ckpt_edit(lambda c: c.__setitem__("step", "3")),
     ["export", "{tmp}/run", "{tmp}/x"], 2, "checkpoint field 'step' is str", "x"),
    ("export: checkpoint of another format", _ckpt_edit(lambda c: {"format": "other", "weights": torch.zeros(2)}),
     ["export", "{tmp}/run", "{tmp}/x"], 2, "not an elmo-fast training checkpoint", "x"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_table(row, base_run, tmp_path, caplog, capsys):
    name, setup, argv, code, fragment, output = row
    if "CUDA is not available" in fragment and not NO_CUDA:
        pytest.skip("this machine has CUDA")
    tmp = tmp_path / "w"
    shutil.copytree(base_run, tmp)
    setup(tmp)
    before = _snapshot(tmp, tmp / output if output else None)
    args = [a.replace("{tmp}", str(tmp)) for a in argv]
    with caplog.at_level(logging.ERROR):
        rc = cli_main(args)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert rc == code, (name, rc, caplog.text)
    assert len(errors) == 1, caplog.text
    message = errors[0].getMessage()
    assert fragment in message, (name, message)
    assert "\n" not in message and "Traceback" not in capsys.readouterr().err
    assert _snapshot(tmp, tmp / output if output else None) == before, f"{name}: a file outside {output} changed"


@pytest.mark.skipif(ROOT, reason="root reads and writes everything: permission faults cannot be made")
@pytest.mark.parametrize("what", ["corpus", "out"])
def test_unreadable_corpus_and_unwritable_out(what, base_run, tmp_path, caplog):
    tmp = tmp_path / "w"
    shutil.copytree(base_run, tmp)
    if what == "corpus":
        os.chmod(tmp / "corpus.txt", 0)
        argv, fragment = TRAIN, "not readable"
    else:
        (tmp / "ro").mkdir()
        os.chmod(tmp / "ro", 0o500)
        argv, fragment = ["train", "--train", "{tmp}/corpus.txt", "--out", "{tmp}/ro/run", "--options", "tiny",
                          *SMALL], "cannot create the run directory"
    with caplog.at_level(logging.ERROR):
        rc = cli_main([a.replace("{tmp}", str(tmp)) for a in argv])
    assert rc == 2 and fragment in caplog.text


def test_cli_error_is_one_line_on_stderr(base_run, tmp_path):
    """The real process: exit 2, exactly one stderr line, naming the file."""
    tmp = tmp_path / "w"
    shutil.copytree(base_run, tmp)
    (tmp / "run" / CHECKPOINT_NAME).write_bytes(b"")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("ELMO_FAST_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "elmo_fast.cli", "export", str(tmp / "run"), str(tmp / "x")],
                          capture_output=True, text=True, env=env, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "checkpoint.pt: empty file (0 bytes)" in lines[0]


def test_export_overwrite_replaces_only_the_model_files(base_run, tmp_path):
    tmp = tmp_path / "w"
    shutil.copytree(base_run, tmp)
    out = tmp / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "vocab.txt").write_text("old")
    assert cli_main(["export", str(tmp / "run"), str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "keep me"
    assert (out / "vocab.txt").read_text() != "old" and (out / "weights.hdf5").exists()


# ---------------------------------------------------------------------------------------------- finite or loud
def _poison_after(monkeypatch, step_no: int, poison: Callable[[Trainer], None]) -> None:
    original = Trainer.step
    count = {"n": 0}

    def step(self, batch):
        result = original(self, batch)
        count["n"] += 1
        if count["n"] == step_no:
            poison(self)
        return result
    monkeypatch.setattr(Trainer, "step", step)


@pytest.mark.parametrize("target", ["weight", "optimizer"])
def test_no_checkpoint_with_non_finite_values(target, tmp_path, monkeypatch):
    """NaN in a weight (or Inf in Adagrad's accumulator) after the last step: the final checkpoint is not
    written, the error names the step and the tensor, and the step-2 checkpoint stays as it was."""
    _corpus(tmp_path / "c.txt")
    config = TrainConfig(batch_size=2, unroll_steps=4, n_negative_samples=6, max_steps=3, checkpoint_every=2,
                         backend="reference")

    def poison(trainer: Trainer) -> None:
        with torch.no_grad():
            if target == "weight":
                trainer.model.softmax_bias[1] = float("nan")
            else:
                state = trainer.optimizer.state[trainer.model.softmax_bias]
                state["sum"][0] = float("inf")
    _poison_after(monkeypatch, 3, poison)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError) as info:
        run_training(str(tmp_path / "c.txt"), str(run), preset("tiny"), config, progress=False)
    message = str(info.value)
    assert message.startswith("step 3: tensor '")
    assert ("model/softmax_bias" if target == "weight" else "optimizer/state/") in message and "NaN/Inf" in message
    ckpt = load_checkpoint(str(run / CHECKPOINT_NAME))
    assert ckpt["step"] == 2
    assert all(bool(torch.isfinite(t).all()) for t in ckpt["model"].values())
    assert not list(run.glob("*.tmp-*"))


def test_huge_learning_rate_stops_loudly_and_export_refuses(tmp_path, caplog):
    """lr 1e30: step 1 leaves finite but enormous weights (checkpointed), step 2's loss is NaN: train exits 2
    naming the step; export refuses the step-1 checkpoint because the model computes NaN."""
    _corpus(tmp_path / "c.txt")
    run = tmp_path / "run"
    with caplog.at_level(logging.ERROR):
        rc = cli_main(["train", "--train", str(tmp_path / "c.txt"), "--out", str(run), "--options", "tiny",
                       "--max-steps", "4", "--checkpoint-every", "1", "--learning-rate", "1e30", *SMALL])
    assert rc == 2 and "step 2: the loss is nan" in caplog.text and "--learning-rate" in caplog.text
    ckpt = load_checkpoint(str(run / CHECKPOINT_NAME))
    assert ckpt["step"] == 1 and all(bool(torch.isfinite(t).all()) for t in ckpt["model"].values())
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        rc = cli_main(["export", str(run), str(tmp_path / "x")])
    assert rc == 2 and "computes NaN/Inf" in caplog.text and "refusing to export" in caplog.text
    assert not (tmp_path / "x").exists()


def test_stale_checkpoint_temporaries_of_dead_runs_are_removed(base_run, tmp_path):
    tmp = tmp_path / "w"
    shutil.copytree(base_run, tmp)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp / "run" / f"{CHECKPOINT_NAME}.tmp-{dead.pid}"
    live = tmp / "run" / f"{CHECKPOINT_NAME}.tmp-{os.getppid()}"   # a running process: kept
    stale.write_bytes(b"half a checkpoint")
    live.write_bytes(b"someone else's")
    assert cli_main(["train", "--out", str(tmp / "run"), "--resume", "--max-steps", "3", "--quiet"]) == 0
    assert not stale.exists() and live.exists()
    assert load_checkpoint(str(tmp / "run" / CHECKPOINT_NAME))["step"] == 3
