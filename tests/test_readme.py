"""The newcomer's path: the README stays short and points at files that exist, and a run without ../shared
says how many conformance tests it skipped and where the folder goes."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = README.splitlines()
    assert len(lines) < 250, len(lines)
    head = "\n".join(lines[:12])
    assert "make demo" in head and "make test" in head


def test_readme_links_point_at_files_that_exist():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert local, "the README links to docs/ and benchmarks/RESULTS.md"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing


def test_readme_commands_write_nothing_untracked_into_the_clone():
    """What the README's commands write (train's --out, export's OUT_DIR, embed's OUTPUT) goes to runs/, which
    git ignores, so following the README leaves the clone clean."""
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert "runs/" in ignored or "runs" in ignored
    outputs = []
    for line in README.splitlines():
        words = line.split("#")[0].split()
        if "elmo_fast.cli" in words:                      # torchrun ... -m elmo_fast.cli train ...
            words = ["elmo-fast"] + words[words.index("elmo_fast.cli") + 1:]
        if len(words) < 2 or words[0] != "elmo-fast":
            continue
        positional = [w for i, w in enumerate(words[2:], 2) if not w.startswith("-") and
                      not words[i - 1].startswith("-")]
        if words[1] == "train" and "--out" in words:
            outputs.append(words[words.index("--out") + 1])
        elif words[1] in ("export", "embed") and len(positional) >= 2:
            outputs.append(positional[1])
    assert len(outputs) >= 4, outputs
    for out in outputs:
        assert out.startswith(("runs/", "/", "~", "$")), out


def test_a_run_without_shared_says_how_many_tests_skipped_and_where_it_goes(tmp_path):
    env = {**os.environ, "ELMO_FAST_SHARED": str(tmp_path / "no-shared")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_options.py",
                           "-k", "fixture or bilm"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    line = next((s for s in proc.stdout.splitlines() if "skipped because ../shared is absent" in s), None)
    assert line is not None, proc.stdout[-2000:]
    n = int(re.match(r"(\d+) tests? skipped", line).group(1))
    assert n >= 1 and re.search(rf"\b{n} skipped\b", proc.stdout)
    assert str(tmp_path / "no-shared") in line and "ELMO_FAST_SHARED" in line
