"""``elmo-fast --help``, ``--version`` and every subcommand's ``--help`` answer without importing torch.

Importing torch takes seconds on a busy machine; a user asking for help should not wait for it. Each case
runs in a fresh interpreter (this test process has torch loaded already) and reports which heavy modules the
call loaded.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import contextlib, io, json, sys
from elmo_fast.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    code = None
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as e:
            code = e.code
    results.append({"argv": argv, "code": code, "torch": "torch" in sys.modules, "out": out.getvalue()})
print(json.dumps(results))
"""

HELP_CALLS = [["--help"], ["--version"], ["embed", "--help"], ["demo", "--help"], ["train", "--help"],
              ["evaluate", "--help"], ["export", "--help"], ["probe", "--help"], ["convert", "--help"]]


def _run(*calls: list[str]) -> list[dict]:
    """Run the calls one after another in one fresh interpreter; torch stays unloaded unless one loads it."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(list(calls))], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_help_and_version_do_not_import_torch():
    results = _run(*HELP_CALLS)
    assert [r["argv"] for r in results] == HELP_CALLS
    for r in results:
        assert r["code"] == 0, r
        assert r["out"].strip(), f"elmo-fast {' '.join(r['argv'])} printed nothing"
        assert not r["torch"], f"elmo-fast {' '.join(r['argv'])} imported torch"


def test_version_prints_the_package_version():
    import elmo_fast
    assert _run(["--version"])[0]["out"].strip() == f"elmo-fast {elmo_fast.__version__}"


def test_public_names_still_load_on_first_use():
    """The package's names are imported lazily, and submodules stay reachable as attributes."""
    code = ("import sys, elmo_fast; assert 'torch' not in sys.modules; "
            "from elmo_fast import ElmoEmbedder, batch_to_ids; import torch; "
            "assert batch_to_ids([['a']]).shape == (1, 1, 50); "
            "assert elmo_fast.numerics.__name__ == 'elmo_fast.numerics'; "
            "assert ElmoEmbedder.__module__ == 'elmo_fast.embedder'; "
            "assert set(elmo_fast.__all__) <= set(dir(elmo_fast)); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_an_unknown_attribute_is_an_attribute_error():
    import elmo_fast
    with pytest.raises(AttributeError, match="no_such_name"):
        elmo_fast.no_such_name  # noqa: B018
