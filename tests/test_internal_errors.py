"""An error taxonomy that cannot hide a bug: only UserError classes become one-line errors (exit 2); any
other exception is an internal error: one line asking to report it, a crash report holding the traceback,
exit 70. User errors name the file where it is opened or parsed."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import h5py
import pytest

from elmo_fast.cli import main

from helpers import write_model

TEXT = "the bank closed .\nspring is here\n"


def _errors(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def _embed_argv(tmp_path) -> list[str]:
    opt, w = write_model(tmp_path / "model")
    (tmp_path / "in.txt").write_text(TEXT)
    return ["embed", str(tmp_path / "in.txt"), str(tmp_path / "out.hdf5"), "--all", "--quiet",
            "--options-file", str(opt), "--weight-file", str(w)]


@pytest.mark.parametrize("bug", [KeyError("weights"), TypeError("'<' not supported"), RuntimeError("expanded size"),
                                 ValueError("bad"), OSError(5, "Input/output error"), ZeroDivisionError("x")])
def test_a_bug_is_an_internal_error_with_a_crash_report(tmp_path, caplog, monkeypatch, bug):
    monkeypatch.setenv("ELMO_FAST_CRASH_DIR", str(tmp_path / "crashes"))

    def broken(*args, **kwargs):
        raise bug
    monkeypatch.setattr("elmo_fast.embedding.embed_to_hdf5", broken)
    with caplog.at_level(logging.ERROR):
        rc = main(_embed_argv(tmp_path))
    assert rc == 70
    errors = _errors(caplog)
    assert len(errors) == 1 and "\n" not in errors[0].getMessage()
    message = errors[0].getMessage()
    assert "internal error" in message and "Please report it" in message and type(bug).__name__ in message
    reports = list((tmp_path / "crashes").iterdir())
    assert len(reports) == 1 and str(reports[0]) in message
    text = reports[0].read_text()
    assert "Traceback (most recent call last)" in text and "in broken" in text
    assert "embed" in text.splitlines()[2]  # the command line


def test_without_a_crash_report_the_traceback_is_logged(tmp_path, caplog, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("ELMO_FAST_CRASH_DIR", str(tmp_path / "file" / "sub"))  # cannot be created

    def broken(*args, **kwargs):
        raise KeyError("internal")
    monkeypatch.setattr("elmo_fast.embedding.embed_to_hdf5", broken)
    with caplog.at_level(logging.ERROR):
        assert main(_embed_argv(tmp_path)) == 70
    errors = _errors(caplog)
    assert len(errors) == 1 and errors[0].exc_info is not None and "no crash report" in errors[0].getMessage()


def test_internal_error_exit_status_and_stderr_in_a_process(tmp_path):
    """A real process: exit 70, one stderr line with the report's path; --debug shows the traceback."""
    argv = _embed_argv(tmp_path)
    script = ("import sys, elmo_fast.embedding as e\n"
              "def broken(*a, **k):\n    raise AttributeError('a bug')\n"
              "e.embed_to_hdf5 = broken\n"
              "from elmo_fast.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "ELMO_FAST_DEBUG": "", "ELMO_FAST_CRASH_DIR": str(tmp_path / "crashes")}
    proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 70, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "internal error" in lines[0] and "AttributeError: a bug" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    report = next((tmp_path / "crashes").iterdir())
    assert str(report) in lines[0]
    debug = subprocess.run([sys.executable, "-c", script, "--debug", *argv], capture_output=True, text=True,
                           env=env, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "AttributeError: a bug" in debug.stderr


def test_user_errors_stay_one_line_with_exit_2(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("ELMO_FAST_CRASH_DIR", str(tmp_path / "crashes"))
    argv = _embed_argv(tmp_path)
    argv[argv.index("--weight-file") + 1] = str(tmp_path / "missing.hdf5")
    with caplog.at_level(logging.ERROR):
        assert main(argv) == 2
    assert len(_errors(caplog)) == 1 and "missing.hdf5" in _errors(caplog)[0].getMessage()
    assert not (tmp_path / "crashes").exists()


def test_a_broken_external_link_in_the_weights_names_the_file_and_dataset(tmp_path, caplog):
    argv = _embed_argv(tmp_path)
    w = tmp_path / "model" / "weights.hdf5"
    (tmp_path / "junk.hdf5").write_bytes(b"not hdf5 at all" * 100)
    with h5py.File(w, "a") as f:
        del f["char_embed"]
        f["char_embed"] = h5py.ExternalLink(str(tmp_path / "junk.hdf5"), "/char_embed")
    with caplog.at_level(logging.ERROR):
        assert main(argv) == 2
    message = _errors(caplog)[0].getMessage()
    assert f"{w}: dataset 'char_embed' cannot be opened" in message and "missing key" not in message, message


def test_a_weight_file_that_is_not_hdf5_names_the_file(tmp_path, caplog):
    argv = _embed_argv(tmp_path)
    w = tmp_path / "model" / "weights.hdf5"
    w.write_bytes(b"\x89 not an hdf5 file" * 50)
    with caplog.at_level(logging.ERROR):
        assert main(argv) == 2
    assert f"{w}: not a readable hdf5 file" in _errors(caplog)[0].getMessage()
