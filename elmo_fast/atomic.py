"""Atomic file output and the file-system primitives the publication code builds on.

* :func:`atomic_path` / :func:`write_text` / :func:`write_lines` / :func:`write_json`: write to a temporary name
  beside the target, rename when complete. An interrupted write never leaves a half-written file under the
  final name (a previous complete file stays in place), and the temporary file is removed on failure.
* :func:`fsync_file` / :func:`fsync_dir`: make written data and renames durable before the next step relies
  on them (a power cut after a rename must not expose a file whose blocks never reached the disk).
* :func:`pid_alive`: whether the process that named a temporary ``*.tmp-PID`` still runs.
* :class:`FileLock`: an exclusive ``flock`` naming its holder (pid and host), for run folders and embed jobs.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from .errors import UserError

__all__ = ["atomic_path", "write_text", "write_lines", "write_json", "fsync_file", "fsync_dir", "pid_alive",
           "FileLock", "os_error_text"]

logger = logging.getLogger(__name__)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on normal exit rename it to ``path``, else delete it."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def write_lines(path: str | os.PathLike, lines: Iterable[str]) -> None:
    """Write one line per item (``\\n``-terminated, UTF-8) atomically, streaming ``lines``."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")


def json_text(payload: Any) -> str:
    """``payload`` as indented, key-sorted JSON text (what :func:`write_json` writes)."""
    return json.dumps(payload, indent=2, sort_keys=True) + "\n"


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """Write ``payload`` as indented, key-sorted JSON atomically."""
    write_text(path, json_text(payload))


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (creations, renames) to the disk; a no-op where directories cannot be
    opened or synced (some network file systems)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (a process of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def os_error_text(e: OSError) -> str:
    """``strerror`` of an OS error ("No space left on device"), or its text."""
    return e.strerror or str(e) or type(e).__name__


class FileLock:
    """An exclusive, non-blocking ``flock`` on ``path``, released by the kernel when the process dies (no stale
    locks after a kill). The holder writes ``pid host time`` into the file, so a refused process can name it.

    Args:
        path: the lock file (created if missing; left in place, removing it would race with a new holder).
        what: the guarded thing as the error should name it, e.g. ``"OUTPUT out.hdf5"`` or ``"run folder run"``.
        busy: what a held lock means, e.g. ``"another embed process is writing it now"``.

    Raises:
        UserError: the lock is held: ``WHAT: BUSY (pid P on host H since T; lock PATH)``.
    """

    def __init__(self, path: str | os.PathLike, what: str, busy: str = "another process is using it now") -> None:
        self.path = os.fspath(path)
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self._holder()
            os.close(self.fd)
            self.fd = -1
            raise UserError(f"{what}: {busy} ({holder}lock {self.path} is held)") from None
        try:  # best effort: the lock itself is the flock, the text only names the holder
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()} {socket.gethostname()} {int(time.time())}\n".encode(), 0)
        except OSError:
            pass

    @classmethod
    def check(cls, path: str | os.PathLike, what: str, busy: str = "another process is using it now") -> None:
        """Raise the :class:`UserError` a new lock would when an existing lock file is held now; takes nothing
        and writes nothing (for refusals that must leave the folder as it was)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            probe = cls.__new__(cls)
            probe.path = os.fspath(path)
            raise UserError(f"{what}: {busy} ({probe._holder()}lock {probe.path} is held)") from None
        finally:
            os.close(fd)

    def _holder(self) -> str:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                fields = f.read(200).split()
        except OSError:
            return ""
        if len(fields) < 2 or not fields[0].isdigit():
            return ""
        since = ""
        if len(fields) > 2 and fields[2].isdigit():
            since = " since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(fields[2])))
        return f"pid {fields[0]} on host {fields[1]}{since}; "

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "FileLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
