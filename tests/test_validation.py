"""Everything is validated before the work: thread counts, numeric flags, the held-out file, environment
variables (one settings module), a run's config.json, preset names, special files in a model folder."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elmo_fast.cli import main
from elmo_fast.errors import UserError
from elmo_fast.options import OptionsError, preset
from elmo_fast.training import TrainConfig, run_training

from helpers import write_model
from helpers import TRAIN_FLAGS as SMALL
from helpers import write_corpus as _corpus

TEXT = "the bank closed .\nspring is here\n"


def _one_error(caplog) -> str:
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    return errors[0]


def _cli(tmp_path: Path, argv: list[str], env: dict[str, str] | None = None, timeout: float = 120):
    """The CLI in a subprocess (for faults that crash or hang the process without the fix)."""
    full = {**os.environ, "ELMO_FAST_DEBUG": "", **(env or {})}
    return subprocess.run([sys.executable, "-m", "elmo_fast.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, env=full, cwd=tmp_path)


# ---------------------------------------------------------------------------------------------- threads
def test_huge_thread_count_is_refused_before_torch_sees_it(tmp_path):
    opt, w = write_model(tmp_path / "model")
    (tmp_path / "in.txt").write_text(TEXT)
    proc = _cli(tmp_path, ["embed", "in.txt", "out.hdf5", "--all", "--quiet", "--options-file", str(opt),
                           "--weight-file", str(w), "--threads", "100000"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--threads: 100000 threads is more than" in lines[0], proc.stderr
    assert not (tmp_path / "out.hdf5").exists()


@pytest.mark.parametrize("value, fragment", [
    ("0", "environment variable ELMO_FAST_THREADS: expected a positive integer or 'auto', found '0'"),
    ("-3", "ELMO_FAST_THREADS"), ("many", "ELMO_FAST_THREADS"), ("100000", "ELMO_FAST_THREADS: 100000 threads"),
])
def test_elmo_fast_threads_is_named(tmp_path, caplog, monkeypatch, value, fragment):
    monkeypatch.setenv("ELMO_FAST_THREADS", value)
    with caplog.at_level(logging.ERROR):
        rc = main(["embed", str(tmp_path / "in.txt"), str(tmp_path / "out.hdf5"), "--all", "--quiet",
                   "--options-file", "x", "--weight-file", "y"])
    assert rc == 2
    assert fragment in _one_error(caplog)


def test_thread_count_above_the_cpus_is_warned_about(caplog):
    from elmo_fast import settings
    with caplog.at_level(logging.WARNING):
        assert settings.check_thread_count(3, "--threads", cpus=2) == 3
    assert any("3 threads on 2 CPUs" in r.getMessage() for r in caplog.records)
    assert settings.check_thread_count(8, "--threads", cpus=2) == 8
    with pytest.raises(settings.SettingsError, match=r"--threads: 9 threads is more than 8 \(4 x the 2 CPUs"):
        settings.check_thread_count(9, "--threads", cpus=2)


# ---------------------------------------------------------------------------------------------- environment
@pytest.mark.parametrize("name, value, fragment", [
    ("ELMO_FAST_DEBUG", "maybe", "environment variable ELMO_FAST_DEBUG: expected 1/0"),
    ("ELMO_FAST_BACKEND", "gpu", "environment variable ELMO_FAST_BACKEND: expected one of reference, fast, triton"),
    ("ELMO_FAST_RETAIN_MEMORY", "2", "ELMO_FAST_RETAIN_MEMORY"),
    ("ELMO_FAST_ONEDNN", "yes please", "ELMO_FAST_ONEDNN"),
    ("RANK", "abc", "environment variable RANK: expected an integer >= 0, found 'abc'"),
    ("WORLD_SIZE", "0", "environment variable WORLD_SIZE: expected an integer >= 1, found '0'"),
    ("LOCAL_RANK", "-1", "LOCAL_RANK"),
])
def test_bad_environment_variables_stop_any_command_first(tmp_path, caplog, monkeypatch, name, value, fragment):
    monkeypatch.setenv(name, value)
    with caplog.at_level(logging.ERROR):
        rc = main(["train", "--train", str(_corpus(tmp_path / "c.txt")), "--out", str(tmp_path / "new"),
                   "--options", "tiny", "--max-steps", "1", *SMALL])
    assert rc == 2
    assert fragment in _one_error(caplog)
    assert not (tmp_path / "new").exists()


def test_rank_beyond_world_size(monkeypatch):
    from elmo_fast import settings
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(settings.SettingsError, match=r"RANK=2: expected 0 <= RANK < WORLD_SIZE \(2\)"):
        settings.distributed()


def test_leftover_rank_in_a_one_process_run_still_writes_the_summary(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with caplog.at_level(logging.WARNING):
        rc = main(["train", "--train", str(_corpus(tmp_path / "c.txt")), "--out", str(tmp_path / "run"),
                   "--options", "tiny", "--max-steps", "1", "--json", str(tmp_path / "summary.json"), *SMALL])
    assert rc == 0
    assert json.loads((tmp_path / "summary.json").read_text())["step"] == 1
    assert any("RANK=1 ignored" in r.getMessage() for r in caplog.records)


def test_settings_table_lists_every_variable_and_the_readme_has_it():
    from elmo_fast import settings
    table = settings.markdown_table()
    for name in settings.SETTINGS:
        assert f"`{name}`" in table
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert table in readme, "README's table of environment variables differs from settings.markdown_table()"


#: the environment reads allowed outside elmo_fast/settings.py: oneDNN's own ISA cap (a oneDNN variable the fast
#: path mirrors), the C compiler, and the compile check's Triton cache (a development tool)
_OTHER_ENV_READS = {"elmo_fast/fast/packing.py", "elmo_fast/fast/native/__init__.py", "tools/compile_check.py"}


def test_no_module_but_settings_reads_the_environment():
    """One home for settings: every ELMO_FAST_* and torchrun variable is read through elmo_fast.settings."""
    import re
    root = Path(__file__).resolve().parents[1]
    readers = set()
    for folder in ("elmo_fast", "kernels"):
        for path in (root / folder).rglob("*.py"):
            rel = path.relative_to(root).as_posix()
            if rel.startswith("elmo_fast/kernels/"):
                continue  # the kernels folder seen through the package's link (checked as kernels/)
            if re.search(r"os\.environ|os\.getenv|getenv\(", path.read_text(encoding="utf-8")):
                readers.add(rel)
    assert readers - _OTHER_ENV_READS == {"elmo_fast/settings.py"}


@pytest.mark.parametrize("name, value", [("ELMO_FAST_TRITON_PRECISION", "fp8"), ("ELMO_FAST_TRITON_LSTM", "fast"),
                                         ("ELMO_FAST_TRITON_MATMUL", "cutlass"), ("ELMO_FAST_TRITON_TILES", "huge"),
                                         ("ELMO_FAST_CUDA_GRAPHS", "yes")])
def test_triton_variables_are_validated_by_settings(monkeypatch, name, value):
    from elmo_fast import settings
    monkeypatch.delenv(name, raising=False)
    assert settings.get(name) == settings.SETTINGS[name].default_value  # unset: the documented default
    assert str(settings.get(name)) == settings.SETTINGS[name].default
    monkeypatch.setenv(name, value)
    with pytest.raises(settings.SettingsError, match=f"environment variable {name}: expected .*found '{value}'"):
        settings.check_all()


# ---------------------------------------------------------------------------------------------- train flags
@pytest.mark.parametrize("flags, fragment", [
    (["--max-minutes", "-1"], "--max-minutes: expected a number > 0, found -1.0"),
    (["--max-minutes", "nan"], "--max-minutes: expected a finite number, found nan"),
    (["--learning-rate", "inf"], "--learning-rate: expected a finite number, found inf"),
    (["--learning-rate", "0"], "--learning-rate: expected a number > 0"),
    (["--clip-norm=-inf"], "--clip-norm: expected a finite number"),
    (["--dropout", "1.5"], "--dropout: expected a probability 0 <= p < 1, found 1.5"),
    (["--n-epochs", "nan"], "--n-epochs: expected a finite number"),
    (["--max-vocab", "3"], "--max-vocab: expected an integer >= 4, found 3"),
    (["--seed", "-1"], "--seed: expected an integer >= 0, found -1"),
    (["--eval-every", "0"], "--eval-every: expected a positive integer, found 0"),
    (["--threads", "100000"], "--threads: 100000 threads is more than"),
])
def test_train_flags_are_checked_before_any_work(tmp_path, caplog, flags, fragment):
    with caplog.at_level(logging.ERROR):
        rc = main(["train", "--train", str(_corpus(tmp_path / "c.txt")), "--out", str(tmp_path / "new"),
                   "--options", "tiny", "--max-steps", "1", *SMALL, *flags])
    assert rc == 2
    assert fragment in _one_error(caplog)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("content, fragment", [
    pytest.param(TEXT.encode("utf-16-le"), "held.txt:1: the file is UTF-16LE text", id="UTF-16LE"),
    pytest.param(b"ok line\n\xff\xfe bad\n", "held.txt:2: not valid UTF-8", id="not UTF-8"),
    pytest.param(b"\n \n", "no sentences to score", id="blank"),
    pytest.param(None, "held.txt: no such file", id="missing"),
])
def test_bad_heldout_file_fails_before_training(tmp_path, caplog, content, fragment):
    if content is not None:
        (tmp_path / "held.txt").write_bytes(content)
    with caplog.at_level(logging.ERROR):
        rc = main(["train", "--train", str(_corpus(tmp_path / "c.txt")), "--out", str(tmp_path / "new"),
                   "--options", "tiny", "--max-steps", "3", "--heldout", str(tmp_path / "held.txt"), *SMALL])
    assert rc == 2
    message = _one_error(caplog)
    assert fragment in message and "--skip-bad-lines" not in message, message
    assert not (tmp_path / "new" / "checkpoint.pt").exists()  # nothing was trained


# ---------------------------------------------------------------------------------------------- config.json
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("run")
    _corpus(base / "corpus.txt")
    config = TrainConfig(batch_size=2, unroll_steps=4, n_negative_samples=6, max_steps=1, checkpoint_every=1000,
                         eval_batch_size=2, backend="reference")
    run_training(str(base / "corpus.txt"), str(base / "run"), preset("tiny"), config, progress=False)
    return base / "run"


@pytest.mark.parametrize("field, value, fragment", [
    ("batch_size", "2", "config.json: field 'batch_size' expected int, found str '2'"),
    ("learning_rate", "fast", "config.json: field 'learning_rate' expected float, found str 'fast'"),
    ("max_steps", -5, "config.json: field 'max_steps' expected an integer >= 0, found -5"),
    ("dropout", True, "config.json: field 'dropout' expected float, found bool True"),
    ("eval_every", [3], "config.json: field 'eval_every' expected int or null, found list [3]"),
    ("heldout", 7, "config.json: field 'heldout' expected a path or null, found int 7"),
])
def test_wrong_types_in_a_runs_config_json_name_the_field(trained_run, tmp_path, caplog, field, value, fragment):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    config[field] = value
    (run / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.ERROR):
        rc = main(["train", "--out", str(run), "--resume", "--max-steps", "2", "--quiet"])
    assert rc == 2
    message = _one_error(caplog)
    assert fragment in message and str(run) in message, message


def test_run_config_json_in_utf16_names_the_file(trained_run, tmp_path, caplog):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "config.json").write_bytes((run / "config.json").read_text().encode("utf-16"))
    with caplog.at_level(logging.ERROR):
        assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 2
    assert "config.json:1: the file is UTF-16LE text" in _one_error(caplog)


# ---------------------------------------------------------------------------------------------- presets
def test_a_preset_name_is_never_a_path(tmp_path, monkeypatch):
    from elmo_fast.training import resolve_options
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()           # an entry named like the preset in the current folder
    (tmp_path / "mine").write_text("{}")
    assert resolve_options("tiny") == preset("tiny")
    with pytest.raises(OptionsError, match=r"unknown preset 'mine'.*for the file 'mine', write ./mine"):
        resolve_options("mine")
    with pytest.raises(OptionsError, match="missing required field 'lstm'"):
        resolve_options("./mine")


# ---------------------------------------------------------------------------------------------- model folders
@pytest.mark.parametrize("where", ["model-dir", "options-file"])
def test_fifo_in_the_model_folder_is_refused_not_read(tmp_path, where):
    opt, w = write_model(tmp_path / "model")
    (tmp_path / "in.txt").write_text(TEXT)
    if where == "model-dir":
        os.mkfifo(tmp_path / "model" / "notes.fifo")
        flags = ["--model-dir", str(tmp_path / "model")]
    else:
        os.mkfifo(tmp_path / "options.fifo")
        flags = ["--options-file", str(tmp_path / "options.fifo"), "--weight-file", str(w)]
    proc = _cli(tmp_path, ["embed", "in.txt", "out.hdf5", "--all", "--quiet", *flags], timeout=90)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a FIFO (named pipe); model files must be regular files" in lines[0], proc.stderr


def test_user_error_classes():
    from elmo_fast.backend import BackendError
    from elmo_fast.weights import WeightFileError
    for cls in (OptionsError, WeightFileError, BackendError):
        assert issubclass(cls, UserError)


# ---------------------------------------------------------------------------------------------- shared checks
def test_positive_int_is_the_one_api_check():
    import numpy as np

    from elmo_fast.validation import positive_int
    assert positive_int("batch_size", 3) == 3 and type(positive_int("n", np.int64(2))) is int
    for bad in (True, 2.0, "3", None):
        with pytest.raises(TypeError, match=f"batch_size: expected a positive integer, found {type(bad).__name__}"):
            positive_int("batch_size", bad)
    for bad in (0, -4, np.int32(0)):
        with pytest.raises(ValueError, match=f"shards: expected a positive integer, found {int(bad)}$"):
            positive_int("shards", bad)


def test_positive_flags_name_the_first_bad_flag():
    from elmo_fast.validation import check_positive_flags
    check_positive_flags(("--a", 1), ("--b", None), ("--c", 10 ** 9))  # None: a flag that was not given
    with pytest.raises(UserError, match="^--b: expected a positive integer, found 0$"):
        check_positive_flags(("--a", 5), ("--b", 0), ("--c", -1))


@pytest.mark.parametrize("make, kwargs, error, fragment", [
    (lambda: [[1, 2]], {}, TypeError, "inputs: expected a torch.Tensor of character ids, found list"),
    (lambda: torch.zeros(1, 2, 50), {}, TypeError, r"integer character ids \(torch.long\), found dtype torch.float32"),
    (lambda: torch.zeros(2, 50, dtype=torch.long), {}, ValueError,
     r"expected shape \(batch, tokens, characters\), found \(2, 50\)"),
    (lambda: torch.zeros(2, 3, 4, 50, dtype=torch.long), {}, ValueError, r"found \(2, 3, 4, 50\)"),
    (lambda: torch.zeros(0, 3, 50, dtype=torch.long), {}, ValueError, "the batch is empty"),
    (lambda: torch.full((1, 2, 50), 262), {}, ValueError,
     r"character ids must be in \[0, 261\], found values in \[262, 262\]"),
    (lambda: torch.full((1, 2, 50), -1), {}, ValueError, r"found values in \[-1, -1\]"),
    (lambda: torch.zeros(50, dtype=torch.long), {"leading_dims": True}, ValueError, "or with more leading dims"),
    (lambda: torch.zeros(2, 0, 3, 50, dtype=torch.long), {"leading_dims": True}, ValueError, "the batch is empty"),
])
def test_char_ids_check_names_the_fault(make, kwargs, error, fragment):
    from elmo_fast.chars import check_char_ids
    with pytest.raises(error, match=fragment):
        check_char_ids(make(), 261, **kwargs)


def test_char_ids_check_accepts_model_inputs():
    from elmo_fast import batch_to_ids
    from elmo_fast.chars import check_char_ids
    ids = batch_to_ids([["a", "b"], ["c"]])
    check_char_ids(ids, 261)
    check_char_ids(ids.unsqueeze(0), 261, leading_dims=True)
    check_char_ids(torch.full((1, 1, 50), 999), None)  # no table: the range is checked later by the caller
    check_char_ids(torch.zeros(1, 0, 50, dtype=torch.long), 261)  # sentences without tokens are a batch
