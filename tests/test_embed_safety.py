"""`elmo-fast embed` on bad inputs and dangerous output paths: each row of the table is a fault, the exit
status and a fragment the one-line message must contain; no file outside OUTPUT may change.

Every fault is detected before the model is loaded (the options/weights rows excepted, which are the model),
so these runs are fast.
"""
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elmo_fast.cli import main

from helpers import tiny_options, write_model

GOOD = "the bank closed .\nspring is here\nx y z\n"


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: kind, size and content hash (regular files), link target (symlinks)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_file() and not p.is_fifo():
                data = p.read_bytes()
                out[rel] = ("file", len(data), hashlib.sha256(data).hexdigest(), p.stat().st_mtime_ns)
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("special",)
    return out


def _fifo(p: Path) -> None:
    os.mkfifo(p)


# each row: (id, setup(tmp) -> (argv_input, argv_output, extra flags), exit status, message fragment)
def _rows():
    rows = []

    def add(name, setup, code, fragment):
        rows.append(pytest.param(setup, code, fragment, id=name))

    add("output is the input", lambda t: (t / "in.txt", t / "in.txt", []), 2, "is the INPUT")
    add("output is the input, --overwrite", lambda t: (t / "in.txt", t / "in.txt", ["--overwrite"]), 2,
        "is the INPUT")
    add("output is the weight file", lambda t: (t / "in.txt", t / "model" / "weights.hdf5", ["--overwrite"]), 2,
        "is the model file")
    add("output is the options file", lambda t: (t / "in.txt", t / "model" / "options.json", ["--overwrite"]), 2,
        "is the model file")
    add("output is a directory", lambda t: (t / "in.txt", t / "model", ["--overwrite"]), 2, "is a directory")

    def fifo_out(t):
        _fifo(t / "out.fifo")
        return t / "in.txt", t / "out.fifo", ["--overwrite"]
    add("output is a FIFO", fifo_out, 2, "is a FIFO")
    add("output is a device", lambda t: (t / "in.txt", Path("/dev/null"), ["--overwrite"]), 2, "is a device")

    def existing(t):
        (t / "out.hdf5").write_bytes(b"earlier result")
        return t / "in.txt", t / "out.hdf5", []
    add("output exists", existing, 2, "exists; pass --overwrite")

    def link(t):
        (t / "target.hdf5").write_bytes(b"target")
        os.symlink(t / "target.hdf5", t / "out.hdf5")
        return t / "in.txt", t / "out.hdf5", []
    add("output is a symlink", link, 2, "symbolic link")

    def link_to_input(t):
        os.symlink(t / "in.txt", t / "out.hdf5")
        return t / "in.txt", t / "out.hdf5", ["--overwrite"]
    add("output links to the input, --overwrite", link_to_input, 2, "is the INPUT")

    def hardlink_weights(t):
        os.link(t / "model" / "weights.hdf5", t / "w2.hdf5")
        return t / "in.txt", t / "w2.hdf5", ["--overwrite"]
    add("output is a hard link to the weights", hardlink_weights, 2, "is the model file")
    add("output folder missing", lambda t: (t / "in.txt", t / "nowhere" / "out.hdf5", []), 2, "does not exist")
    add("output folder is a file", lambda t: (t / "in.txt", t / "in.txt" / "out.hdf5", []), 2, "is not a directory")
    add("output name too long for its temporary names", lambda t: (t / "in.txt", t / ("o" * 250), []), 2,
        "name is too long")
    add("input missing", lambda t: (t / "none.txt", t / "out.hdf5", []), 2, "no such file")
    add("input is a directory", lambda t: (t / "model", t / "out.hdf5", []), 2, "is a directory")

    def fifo_in(t):
        _fifo(t / "in.fifo")
        return t / "in.fifo", t / "out.hdf5", []
    add("input is a FIFO", fifo_in, 2, "is a FIFO")

    def text(content: bytes, flags=()):
        def setup(t):
            (t / "bad.txt").write_bytes(content)
            return t / "bad.txt", t / "out.hdf5", list(flags)
        return setup
    add("blank lines", text(b"a b\n\nc\n  \nd\n"), 2, "bad.txt: lines 2, 4 are blank")
    add("one blank line", text(b"a b\n\t\nc\n"), 2, "bad.txt: line 2 is blank")
    add("invalid UTF-8", text(b"ok\nbad \xff byte\n"), 2, "bad.txt: line 2 is not valid UTF-8")
    add("CR line ends count as lines", text(b"a\r\rb\r\n"), 2, "bad.txt: line 2 is blank")
    add("NUL byte with sentence keys", text(b"a b\nc\x00d\n", ["--use-sentence-keys"]), 2,
        "bad.txt: line 2 contains a NUL byte")
    add("'/' with sentence keys", text(b"a b\nc/d\n.\n", ["--use-sentence-keys"]), 2,
        "bad.txt: lines 2, 3 contain '/' or are a lone '.'")
    add("duplicate with sentence keys", text(b"a b\nc\na b\n", ["--use-sentence-keys"]), 2,
        "bad.txt: line 3 repeats line 1")
    add("--batch-size 0", lambda t: (t / "in.txt", t / "out.hdf5", ["--batch-size", "0"]), 2,
        "--batch-size: expected a positive integer")
    add("--shards 0", lambda t: (t / "in.txt", t / "out.hdf5", ["--shards", "0"]), 2,
        "--shards: expected a positive integer")
    add("--chunk-lines -1", lambda t: (t / "in.txt", t / "out.hdf5", ["--chunk-lines", "-1"]), 2,
        "--chunk-lines: expected a positive integer")
    if not torch.cuda.is_available():
        add("--device cuda without CUDA", lambda t: (t / "in.txt", t / "out.hdf5", ["--device", "cuda"]), 2,
            "CUDA is not available")
    add("--device bogus", lambda t: (t / "in.txt", t / "out.hdf5", ["--device", "gpu0"]), 2,
        "expected 'cpu', 'cuda' or 'cuda:N'")

    def no_weights(t):
        os.remove(t / "model" / "weights.hdf5")
        return t / "in.txt", t / "out.hdf5", []
    add("weight file missing", no_weights, 2, "--weight-file")
    add("--model-dir with --options-file", lambda t: (t / "in.txt", t / "out.hdf5", ["--model-dir", str(t / "model")]),
        2, "not both")

    def overflowing(t):
        write_model(t / "model", tiny_options(), scale=1e18)  # finite weights whose products overflow
        return t / "in.txt", t / "out.hdf5", []
    add("model producing Inf/NaN", overflowing, 2, "NaN or Inf")
    if os.geteuid() != 0:
        def unreadable(t):
            (t / "in.txt").chmod(0)
            return t / "in.txt", t / "out.hdf5", []
        add("input unreadable", unreadable, 2, "cannot be read")

        def readonly_dir(t):
            (t / "ro").mkdir()
            (t / "ro").chmod(0o555)
            return t / "in.txt", t / "ro" / "out.hdf5", []
        add("output folder not writable", readonly_dir, 2, "cannot create files")
    return rows


@pytest.mark.parametrize("setup, code, fragment", _rows())
def test_bad_input_table(tmp_path, caplog, setup, code, fragment):
    opt, w = write_model(tmp_path / "model")
    (tmp_path / "in.txt").write_text(GOOD)
    inp, out, extra = setup(tmp_path)
    before = snapshot(tmp_path)
    argv = ["embed", str(inp), str(out), "--all", "--quiet"] + extra
    if "--model-dir" not in extra or "--options-file" not in argv:
        argv += ["--options-file", str(opt), "--weight-file", str(w)]
    with caplog.at_level(logging.ERROR):
        rc = main(argv)
    assert rc == code
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert fragment in errors[0], errors[0]
    after = snapshot(tmp_path)
    assert after == before  # nothing created, removed or modified (no temporary file, no work folder)


def test_symlink_with_overwrite_replaces_the_link_not_its_target(tiny_model, tmp_path):
    opt, w = tiny_model
    (tmp_path / "in.txt").write_text(GOOD)
    target = tmp_path / "target.hdf5"
    target.write_bytes(b"precious")
    os.symlink(target, tmp_path / "out.hdf5")
    rc = main(["embed", str(tmp_path / "in.txt"), str(tmp_path / "out.hdf5"), "--top", "--options-file", str(opt),
               "--weight-file", str(w), "--quiet", "--overwrite"])
    assert rc == 0
    assert target.read_bytes() == b"precious"
    assert not (tmp_path / "out.hdf5").is_symlink() and (tmp_path / "out.hdf5").stat().st_size > 100


def test_existing_output_replaced_only_with_overwrite(tiny_model, tmp_path):
    opt, w = tiny_model
    (tmp_path / "in.txt").write_text(GOOD)
    out = tmp_path / "out.hdf5"
    out.write_bytes(b"old")
    args = ["embed", str(tmp_path / "in.txt"), str(out), "--top", "--options-file", str(opt), "--weight-file", str(w),
            "--quiet"]
    assert main(args) == 2 and out.read_bytes() == b"old"
    assert main(args + ["--overwrite"]) == 0 and out.read_bytes()[:4] == b"\x89HDF"


def test_sigterm_one_line_no_traceback_and_resumable(tiny_model, tmp_path):
    """SIGTERM mid-run: exit 143, one error line, no traceback, no temporary file; the rerun completes."""
    import signal
    import time
    opt, w = tiny_model
    src = tmp_path / "in.txt"
    src.write_text("".join(f"w{i % 97} x{i % 13} y z the end\n" for i in range(3000)))
    out = tmp_path / "out.hdf5"
    cmd = [sys.executable, "-m", "elmo_fast.cli", "embed", str(src), str(out), "--top", "--options-file", str(opt),
           "--weight-file", str(w), "--quiet", "--chunk-lines", "200", "--stateless", "--threads", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    work = Path(str(out) + ".embed-work")
    deadline = time.time() + 120
    while time.time() < deadline and not (work.is_dir() and any(p.name.endswith(".h5") for p in work.iterdir())):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "interrupted by SIGTERM" in errors[0], err
    assert "completed chunks are kept in" in errors[0] and "run the same command again" in errors[0]
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    assert not leftovers and not out.exists()
    assert any(p.name.startswith("chunk-") for p in work.iterdir())
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    assert out.exists() and not work.exists()


def test_help_documents_safety_flags():
    proc = subprocess.run([sys.executable, "-m", "elmo_fast.cli", "embed", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for text in ["--overwrite", "--shards", "--chunk-lines", "--model-dir", "symbolic link", "--threads",
                 "run again", "exit status"]:
        assert text in proc.stdout, text


def _swallowed_sigterm() -> None:
    """What a SIGTERM does when Python runs the handler inside a weakref callback: the handler's Interrupted is
    discarded as an unraisable exception (the CI failure this reproduces: the embed then ran to the end, exit 0)."""
    import signal
    import weakref

    from elmo_fast import errors

    class Obj:
        pass

    o = Obj()
    ref = weakref.ref(o, lambda _: errors._raise_interrupted(signal.SIGTERM, None))
    del o
    assert ref() is None


def test_a_swallowed_interrupt_is_raised_at_the_next_check(capsys):
    from elmo_fast import errors
    errors.install_signal_handlers()
    errors.raise_if_interrupted()               # nothing pending
    _swallowed_sigterm()
    assert "Traceback" not in capsys.readouterr().err   # our unraisable hook keeps it quiet
    with pytest.raises(errors.Interrupted, match="SIGTERM"):
        errors.raise_if_interrupted()
    errors.install_signal_handlers()            # a new run starts clean
    errors.raise_if_interrupted()


def test_a_swallowed_sigterm_still_stops_the_embed_and_resumes(tiny_model, tmp_path, monkeypatch, caplog):
    from elmo_fast.embedder import ElmoEmbedder
    opt, w = tiny_model
    src = tmp_path / "in.txt"
    src.write_text("".join(f"w{i % 31} x{i % 7} the end\n" for i in range(400)))
    out = tmp_path / "out.hdf5"
    args = ["embed", str(src), str(out), "--top", "--options-file", str(opt), "--weight-file", str(w), "--quiet",
            "--chunk-lines", "50", "--stateless", "--threads", "1", "--batch-size", "16"]
    real = ElmoEmbedder.embed_batch
    calls: list[int] = []

    def embed_batch(self, batch):
        calls.append(len(batch))
        if len(calls) == 5:
            _swallowed_sigterm()
        return real(self, batch)
    monkeypatch.setattr(ElmoEmbedder, "embed_batch", embed_batch)
    with caplog.at_level(logging.ERROR):
        assert main(args) == 143
    assert any("interrupted by SIGTERM" in r.getMessage() and "run the same command again" in r.getMessage()
               for r in caplog.records)
    assert len(calls) == 5 and not out.exists()
    work = Path(str(out) + ".embed-work")
    assert any(p.name.startswith("chunk-") for p in work.iterdir())
    monkeypatch.setattr(ElmoEmbedder, "embed_batch", real)
    assert main(args) == 0
    assert out.exists() and not work.exists()
