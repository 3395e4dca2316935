"""Progress output of the commands: bars only on a terminal, log lines elsewhere, a rounded final loss."""
from __future__ import annotations

import io
import logging
import re

import pytest

from elmo_fast import progress
from elmo_fast.cli import main
from helpers import write_corpus as _corpus

FLAGS = ["--batch-size", "2", "--unroll-steps", "4", "--n-negative-samples", "6", "--backend", "reference"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not progress.on_terminal()
    assert progress.bar(True, total=3).disable
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert progress.on_terminal()
    shown = progress.bar(True, total=3, file=terminal)
    assert not shown.disable
    shown.update(3)
    shown.close()
    assert "3/3" in terminal.getvalue()
    assert progress.bar(False, total=3).disable  # --quiet wins on a terminal too


def test_log_ticker_is_due_once_per_interval():
    now = [0.0]
    ticker = progress.LogTicker(True, every_s=60.0, clock=lambda: now[0])
    assert not ticker.due()
    now[0] = 59.9
    assert not ticker.due()
    now[0] = 60.0
    assert ticker.due() and not ticker.due()
    now[0] = 119.0
    assert not ticker.due()
    now[0] = 120.5
    assert ticker.due()
    assert not progress.LogTicker(False, every_s=0.0, clock=lambda: now[0]).due()


def test_train_without_a_terminal_logs_progress_and_the_heldout_evaluation(tmp_path, monkeypatch, caplog, capsys):
    """Under pytest stderr is not a terminal: no bar is drawn (no carriage returns), the loop logs its progress
    instead (every step here, with the interval at 0), the held-out evaluation announces itself before it runs,
    and the printed final loss has 4 significant digits."""
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    corpus = _corpus(tmp_path / "c.txt")
    with caplog.at_level(logging.INFO, logger="elmo_fast"):
        rc = main(["train", "--train", str(corpus), "--heldout", str(corpus), "--out", str(tmp_path / "run"),
                   "--options", "tiny", "--max-steps", "3", *FLAGS])
    assert rc == 0
    out, err = capsys.readouterr()
    assert "\r" not in err
    messages = [r.getMessage() for r in caplog.records]
    steps = [m for m in messages if re.match(r"step \d/3: loss [0-9.]+, perplexity [0-9.]+, \d+ tokens/s$", m)]
    assert [m.split(":")[0] for m in steps] == ["step 1/3", "step 2/3", "step 3/3"]
    announce = [i for i, m in enumerate(messages) if m.startswith("step 3: held-out perplexity of")]
    result = [i for i, m in enumerate(messages) if m.startswith("step 3 held-out perplexity")]
    assert announce and result and announce[0] < result[0]
    loss = re.search(r"train loss (\S+),", out).group(1)
    assert re.fullmatch(r"\d\.\d{3}", loss), out  # a loss near ln(vocab) prints as d.ddd


def test_train_quiet_logs_no_progress_lines(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="elmo_fast"):
        assert main(["train", "--train", str(_corpus(tmp_path / "c.txt")), "--out", str(tmp_path / "run"),
                     "--options", "tiny", "--max-steps", "2", "--quiet", *FLAGS]) == 0
    assert not any(re.match(r"step \d/2: loss", r.getMessage()) for r in caplog.records)


@pytest.mark.parametrize("loss, text", [(6.925604820251465, "6.926"), (12.00004, "12"), (0.000123456, "0.0001235"),
                                        (None, "none (no step run)")])
def test_final_loss_text(loss, text):
    from elmo_fast.commands.train import _loss_text
    assert _loss_text(loss) == text


def test_log_lines_go_above_the_bars_on_a_terminal_only(monkeypatch):
    """On a terminal the console log handler is swapped for one that writes through tqdm.write (so a line never
    lands inside a bar) for the duration of the command, and put back after; elsewhere nothing changes."""
    root = logging.getLogger()
    for stream, swapped in ((io.StringIO(), False), (_Terminal(), True)):
        monkeypatch.setattr("sys.stderr", stream)
        handler = logging.StreamHandler(stream)
        root.addHandler(handler)
        try:
            with progress.logging_above_bars():
                assert (handler not in root.handlers) == swapped
                assert any("Tqdm" in type(h).__name__ for h in root.handlers) == swapped
            assert handler in root.handlers
        finally:
            root.removeHandler(handler)
