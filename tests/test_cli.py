"""The CLI's error convention: user errors are one line and exit 2; --debug shows the traceback; signals."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import pytest

from elmo_fast import __version__
from elmo_fast.cli import main
from elmo_fast.errors import Interrupted, MissingFileError, UserError, exit_code_for


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"elmo-fast {__version__}"


def test_user_error_is_one_line_and_exit_2(tmp_path, caplog):
    missing = tmp_path / "nope.json"
    with caplog.at_level(logging.ERROR, logger="elmo_fast"):
        code = main(["embed", str(tmp_path / "in.txt"), str(tmp_path / "out.hdf5"), "--all",
                     "--options-file", str(missing), "--weight-file", str(tmp_path / "w.hdf5")])
    assert code == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert errors[0].getMessage().startswith("embed: ") and "\n" not in errors[0].getMessage()


def test_debug_flag_and_env_variable_reraise(tmp_path, monkeypatch):
    args = ["embed", str(tmp_path / "in.txt"), str(tmp_path / "out.hdf5"), "--all",
            "--options-file", str(tmp_path / "nope.json"), "--weight-file", str(tmp_path / "w.hdf5")]
    with pytest.raises((ValueError, OSError)):
        main(["--debug"] + args)
    monkeypatch.setenv("ELMO_FAST_DEBUG", "1")
    with pytest.raises((ValueError, OSError)):
        main(args)


@pytest.mark.parametrize("exc,code", [
    (UserError("x"), 2), (MissingFileError("x"), 2), (KeyboardInterrupt(), 130),
    (Interrupted(signal.SIGTERM), 143), (Interrupted(signal.SIGINT), 130),
    # only the project's own user-error classes are one-line errors: everything else is a bug
    (ValueError("x"), None), (TypeError("x"), None), (PermissionError("x"), None), (IsADirectoryError("x"), None),
    (KeyError("x"), None), (RuntimeError("x"), None), (ZeroDivisionError("bug"), None), (AssertionError("bug"), None),
])
def test_exit_codes(exc, code):
    assert exit_code_for(exc) == code


def test_sigterm_runs_cleanup_and_exits_143_without_traceback(tmp_path):
    """A process under the CLI's handlers that gets SIGTERM runs its finally blocks and prints one line."""
    marker = tmp_path / "cleaned"
    script = f"""
import logging, os, signal, sys, time
from elmo_fast import cli
def add_parser(sub):
    p = sub.add_parser("sleepy")
    p.set_defaults(func=run)
def run(args):
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    finally:
        open({str(marker)!r}, "w").close()
    return 0
import types
mod = types.ModuleType("sleepy_cmd"); mod.add_parser = add_parser; sys.modules["sleepy_cmd"] = mod
cli._COMMANDS.append("sleepy_cmd")
sys.exit(cli.main(["sleepy"]))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ELMO_FAST_DEBUG": ""})
    assert proc.returncode == 143, proc.stderr
    assert marker.exists()
    assert "Traceback" not in proc.stderr
    assert "interrupted by SIGTERM" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
