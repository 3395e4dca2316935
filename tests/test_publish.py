"""Model folders are published whole: ``export`` (and ``convert``) stage every file in a sibling folder, flush
it, write a manifest (size + sha256 per file) last and swap the folder into place. A kill at any step of
``export B OUT --overwrite`` over an export of A leaves A whole or B whole; loading checks the manifest, so a
mixed folder is refused in one line; temporaries of dead processes go at the next run; a full disk gives one
line naming the file and the space, never a crash of the HDF5 library.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from elmo_fast.cli import main as cli_main
from elmo_fast.errors import UserError
from elmo_fast.options import preset
from elmo_fast.training import TrainConfig, run_training
from helpers import write_corpus as _corpus

REPO = Path(__file__).resolve().parents[1]
MODEL_FILES = ("options.json", "weights.hdf5", "softmax_weights.hdf5", "vocab.txt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two trained runs of the tiny model with different weights (``a``, ``b``), their exports and a corpus."""
    base = tmp_path_factory.mktemp("runs")
    _corpus(base / "corpus.txt")
    _corpus(base / "held.txt", lines=6)
    for name, seed in (("a", 1), ("b", 2)):
        config = TrainConfig(batch_size=2, unroll_steps=4, n_negative_samples=6, max_steps=1, checkpoint_every=1000,
                             seed=seed, backend="reference")
        run_training(str(base / "corpus.txt"), str(base / f"run_{name}"), preset("tiny"), config, progress=False)
        assert cli_main(["export", str(base / f"run_{name}"), str(base / f"export_{name}")]) == 0
    return base


def _hashes(folder: Path) -> dict[str, str | None]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() if (folder / n).is_file() else None
            for n in MODEL_FILES}


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("ELMO_FAST_DEBUG", None)
    return env


# A driver that imports elmo-fast once, then forks one child per kill point: child k runs the command and
# dies (os._exit, like SIGKILL: no cleanup) at its k-th file-system step (an fsync, rename, link or removal).
# The parent restores OUT from a pristine copy before each child and prints, per kill point, what OUT holds.
_KILL_DRIVER = textwrap.dedent("""
    import hashlib, json, os, shutil, sys
    from elmo_fast.cli import main
    argv, out, pristine = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    names = ("options.json", "weights.hdf5", "softmax_weights.hdf5", "vocab.txt")
    def state():
        if not os.path.isdir(out):
            return None
        return {n: hashlib.sha256(open(os.path.join(out, n), "rb").read()).hexdigest()
                if os.path.isfile(os.path.join(out, n)) else None for n in names}
    results, k = [], 1
    while k < 200:
        if os.path.isdir(out):
            shutil.rmtree(out)
        if pristine != "-":
            shutil.copytree(pristine, out)
        pid = os.fork()
        if pid == 0:
            count = [0]
            def wrap(fn):
                def inner(*a, **kw):
                    count[0] += 1
                    if count[0] == k:
                        os._exit(77)
                    return fn(*a, **kw)
                return inner
            for name in ("fsync", "replace", "rename", "link", "rmdir", "remove", "unlink"):
                setattr(os, name, wrap(getattr(os, name)))
            os._exit(main(argv))
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        results.append({"k": k, "code": code, "state": state()})
        if code != 77:
            break
        k += 1
    print(json.dumps(results))
""")


def _kill_at_each_step(argv: list[str], out: Path, pristine: Path | None) -> list[dict]:
    proc = subprocess.run([sys.executable, "-c", _KILL_DRIVER, json.dumps(argv), str(out), str(pristine or "-")],
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_export_overwrite_killed_at_each_step_leaves_a_or_b_whole(runs, tmp_path):
    """`export B OUT --overwrite` over an export of A, killed at every file-system step: OUT is A whole or B
    whole (never a mix), the rerun removes the dead process's temporaries, and the final folder verifies."""
    a, b = _hashes(runs / "export_a"), _hashes(runs / "export_b")
    assert all(a.values()) and all(a[n] != b[n] for n in ("weights.hdf5", "softmax_weights.hdf5"))
    out = tmp_path / "out"
    results = _kill_at_each_step(["export", str(runs / "run_b"), str(out), "--overwrite"], out, runs / "export_a")
    assert len(results) >= 4 and results[-1]["code"] == 0, results
    for r in results:
        assert r["state"] in (a, b), f"killed at step {r['k']}: OUT holds a mix {r['state']} (A {a}, B {b})"
    assert results[-1]["state"] == b
    # the last kill left OUT = A or B plus temporaries of a dead process: the next export removes them
    shutil.rmtree(out)
    shutil.copytree(runs / "export_a", out)
    assert cli_main(["export", str(runs / "run_b"), str(out), "--overwrite"]) == 0
    (tmp_path / "out.tmp-999999999").mkdir()  # a dead process's staging folder (no such pid)
    assert cli_main(["export", str(runs / "run_b"), str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "temporaries left beside OUT"
    assert _hashes(out) == b


def test_first_export_killed_at_each_step_leaves_nothing_that_looks_like_a_model(runs, tmp_path):
    out = tmp_path / "new"
    b = _hashes(runs / "export_b")
    results = _kill_at_each_step(["export", str(runs / "run_b"), str(out)], out, None)
    assert results[-1]["code"] == 0 and results[-1]["state"] == b
    for r in results[:-1]:
        assert r["state"] is None or r["state"] == b, f"killed at step {r['k']}: a partial folder {r['state']}"


def test_export_writes_a_manifest_and_a_mixed_folder_is_refused(runs, tmp_path, caplog):
    out = tmp_path / "mixed"
    shutil.copytree(runs / "export_a", out)
    manifest = [p.name for p in out.iterdir() if "manifest" in p.name]
    assert len(manifest) == 1, sorted(p.name for p in out.iterdir())
    listed = json.loads((out / manifest[0]).read_text())["files"]
    assert sorted(listed) == sorted(MODEL_FILES)
    assert listed["weights.hdf5"]["size"] == (out / "weights.hdf5").stat().st_size
    # B's softmax beside A's biLM: evaluate refuses in one line naming the folder and the file
    shutil.copy(runs / "export_b" / "softmax_weights.hdf5", out / "softmax_weights.hdf5")
    with caplog.at_level(logging.ERROR):
        rc = cli_main(["evaluate", str(out), "--heldout", str(runs / "held.txt"), "--quiet"])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert rc == 2 and len(errors) == 1 and "\n" not in errors[0], errors
    assert str(out) in errors[0] and "softmax_weights.hdf5" in errors[0]
    # pretrained loading (embed --model-dir, ElmoEmbedder.from_pretrained) checks the files it reads
    from elmo_fast.pretrained import load_pretrained
    load_pretrained(out)  # options.json + weights.hdf5 are A's: fine
    shutil.copy(runs / "export_b" / "weights.hdf5", out / "weights.hdf5")
    with pytest.raises(UserError, match=r"weights\.hdf5"):
        load_pretrained(out)
    # a truncated file (a partial copy) is refused too
    shutil.copytree(runs / "export_a", tmp_path / "cut")
    data = (tmp_path / "cut" / "vocab.txt").read_bytes()
    (tmp_path / "cut" / "vocab.txt").write_bytes(data[:-3])
    with pytest.raises(UserError, match=r"cut.*vocab\.txt"):
        from elmo_fast.training import load_model_dir
        load_model_dir(str(tmp_path / "cut"))


def test_folders_without_a_manifest_still_load(runs, tmp_path, tiny_model):
    """The public bilm-tf files (and exports of older versions) have no manifest: they load as before."""
    from elmo_fast.pretrained import load_pretrained
    from elmo_fast.training import load_model_dir
    load_pretrained(tiny_model[0].parent)
    old = tmp_path / "old"
    shutil.copytree(runs / "export_a", old)
    for p in old.iterdir():
        if "manifest" in p.name:
            p.unlink()
    load_model_dir(str(old))


def test_export_overwrite_keeps_the_users_other_files(runs, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(runs / "export_a", out)
    (out / "notes.txt").write_text("keep me")
    (out / "sub").mkdir()
    (out / "sub" / "x.txt").write_text("and me")
    assert cli_main(["export", str(runs / "run_b"), str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "keep me" and (out / "sub" / "x.txt").read_text() == "and me"
    assert _hashes(out) == _hashes(runs / "export_b")


# ---------------------------------------------------------------------------------------------- full disk
def _limited(max_bytes: int):
    def preexec() -> None:
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return preexec


@pytest.mark.parametrize("limit", [2_000, 100_000, 440_000])
def test_export_on_a_full_disk_is_one_line_and_leaves_the_old_export(runs, tmp_path, limit):
    """RLIMIT_FSIZE (``ulimit -f``) makes the writes fail as on a full disk: the HDF5 library used to crash
    (SIGSEGV, exit 139); now exit 2, one line naming the file and the OS error, A untouched, no temporaries."""
    out = tmp_path / "out"
    shutil.copytree(runs / "export_a", out)
    before = _hashes(out)
    proc = subprocess.run([sys.executable, "-m", "elmo_fast.cli", "--log-level", "ERROR", "export",
                           str(runs / "run_b"), str(out),
                           "--overwrite"], capture_output=True, text=True, env=_env(), timeout=300,
                          preexec_fn=_limited(limit))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and "File too large" in lines[0] and "hdf5" in lines[0], lines
    assert _hashes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # a first export on the full disk leaves nothing
    proc = subprocess.run([sys.executable, "-m", "elmo_fast.cli", "--log-level", "ERROR", "export", str(runs / "run_b"),
                           str(tmp_path / "new")], capture_output=True, text=True, env=_env(), timeout=300,
                          preexec_fn=_limited(limit))
    assert proc.returncode == 2 and not (tmp_path / "new").exists(), proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_export_checks_free_space_first(runs, tmp_path, monkeypatch, caplog):
    """A disk with too little room for the predicted size is refused before anything is written."""
    import collections
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10_000, 9_000, 1_000))
    with caplog.at_level(logging.ERROR):
        rc = cli_main(["export", str(runs / "run_b"), str(tmp_path / "new")])
    assert rc == 2 and "free" in caplog.text and "needs" in caplog.text, caplog.text
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- files in a folder
_JOURNAL_DRIVER = textwrap.dedent("""
    import json, os, shutil, sys
    from elmo_fast.publish import publish_files
    folder = sys.argv[1]
    old = {"config.json": b"old config", "options.json": b"old options"}
    new = {"config.json": b"new config!", "options.json": b"new options!"}
    results, k = [], 1
    while k < 100:
        shutil.rmtree(folder, ignore_errors=True)
        os.mkdir(folder)
        publish_files(folder, old)
        pid = os.fork()
        if pid == 0:
            count = [0]
            def wrap(fn):
                def inner(*a, **kw):
                    count[0] += 1
                    if count[0] == k:
                        os._exit(77)
                    return fn(*a, **kw)
                return inner
            for name in ("fsync", "replace", "rename", "mkdir", "rmdir"):
                setattr(os, name, wrap(getattr(os, name)))
            publish_files(folder, new)
            os._exit(0)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        before = {n: open(os.path.join(folder, n), "rb").read().decode() for n in old}
        from elmo_fast.publish import recover_files, verify_folder
        recover_files(folder)
        after = {n: open(os.path.join(folder, n), "rb").read().decode() for n in old}
        verified = verify_folder(folder, list(old))
        left = sorted(n for n in os.listdir(folder) if ".tmp-" in n)
        results.append({"k": k, "code": code, "before": before, "after": after, "verified": verified, "left": left})
        if code != 77:
            break
        k += 1
    print(json.dumps(results))
""")


def test_settings_update_killed_at_each_step_is_completed_or_dropped(tmp_path):
    """A run folder's config.json + options.json, replaced as a set and killed at every step: the next run
    completes a committed update or drops an uncommitted one, so the pair is always old+old or new+new and
    verifies against the folder's manifest."""
    proc = subprocess.run([sys.executable, "-c", _JOURNAL_DRIVER, str(tmp_path / "run")], capture_output=True,
                          text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) >= 5 and results[-1]["code"] == 0
    old = {"config.json": "old config", "options.json": "old options"}
    new = {"config.json": "new config!", "options.json": "new options!"}
    for r in results:
        assert r["after"] in (old, new), r
        assert r["verified"] and not r["left"], r
    assert any(r["before"] not in (old, new) for r in results), "no kill fell between the two renames"
    assert results[-1]["after"] == new


def test_without_an_atomic_exchange_the_old_folder_is_the_way_back(runs, tmp_path, monkeypatch, caplog):
    """File systems without renameat2(RENAME_EXCHANGE): two renames, OUT.old-PID in between. A process killed
    between them leaves OUT missing; the next export puts A back first (and, without --overwrite, refuses)."""
    import errno

    import elmo_fast.publish as publish

    def no_exchange(a: str, b: str) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")
    monkeypatch.setattr(publish, "_rename_exchange", no_exchange)
    out = tmp_path / "out"
    shutil.copytree(runs / "export_a", out)
    assert cli_main(["export", str(runs / "run_b"), str(out), "--overwrite"]) == 0
    assert _hashes(out) == _hashes(runs / "export_b") and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # the state a kill between the two renames leaves: OUT gone, A at OUT.old-PID of a dead process
    shutil.rmtree(out)
    shutil.copytree(runs / "export_a", tmp_path / "out.old-999999999")
    with caplog.at_level(logging.WARNING):
        rc = cli_main(["export", str(runs / "run_b"), str(out)])
    assert rc == 2 and "restored" in caplog.text and "directory is not empty" in caplog.text, caplog.text
    assert _hashes(out) == _hashes(runs / "export_a") and publish.verify_folder(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
