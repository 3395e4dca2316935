"""Progress reporting shared by the commands: bars on a terminal, periodic log lines elsewhere.

A tqdm bar redraws itself with carriage returns. On a terminal that is what a user wants; in a log file or a
pipe every redraw stays in the file (hundreds of ``\\r`` updates for one training run). So bars appear only when
stderr is a terminal, and long loops report to the log instead every :data:`LOG_EVERY_S` seconds
(:class:`LogTicker`). Log lines written while a bar is on screen go through ``tqdm.write``
(:func:`logging_above_bars`), so they never land in the middle of a bar.
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Iterator

__all__ = ["LOG_EVERY_S", "LogTicker", "bar", "logging_above_bars", "on_terminal"]

#: seconds between two progress log lines where no bar is shown
LOG_EVERY_S = 60.0


def on_terminal() -> bool:
    """True when stderr (where bars and logs go) is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def bar(enabled: bool = True, **kwargs: Any) -> Any:
    """A ``tqdm`` bar that is shown only when ``enabled`` and stderr is a terminal; ``kwargs`` go to tqdm.

    Returns the bar (a disabled one accepts ``update``/``set_postfix``/``close`` and does nothing)."""
    from tqdm import tqdm
    return tqdm(disable=not (enabled and on_terminal()), **kwargs)


@contextlib.contextmanager
def logging_above_bars() -> Iterator[None]:
    """Within the block, the root logger's console handlers write through ``tqdm.write`` (above any bar)."""
    if not on_terminal():
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm
    with logging_redirect_tqdm():
        yield


class LogTicker:
    """Says when a loop that shows no bar should log its progress: at most once per ``every_s`` seconds.

    ``active`` is False where a bar is on screen (or progress is off), so the two never report twice."""

    def __init__(self, active: bool, every_s: float | None = None, clock: Any = time.monotonic) -> None:
        self.active, self.clock = active, clock
        self.every_s = LOG_EVERY_S if every_s is None else every_s
        self.last = clock()

    def due(self) -> bool:
        """True (and the timer restarts) when ``every_s`` seconds have passed since the last line."""
        if not self.active:
            return False
        now = self.clock()
        if now - self.last < self.every_s:
            return False
        self.last = now
        return True
