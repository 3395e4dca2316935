"""hdf5 writes in a child process, so that a failed write is an error message instead of a crash.

When a write fails (a full disk, a quota, the file size limit), the HDF5 library does not report it to the
caller: it keeps the failure in its metadata cache, prints "Can't decrement id ref count" from h5py's
deallocators and then dies with SIGSEGV when the file is flushed or closed (measured with h5py 3.x: exit 139
on EFBIG and ENOSPC, for chunk files and for the merged output). No ``try``/``except`` can catch that, so
every hdf5 *write* of the embed job runs in a forked child process:

* :class:`ChunkWriterProcess` -- one long-lived child per job that receives the datasets of the chunk being
  embedded through a pipe and writes them (the embedding goes on in the parent meanwhile). Its reply to
  ``close`` says whether the file is complete; if the child died instead, :class:`WriteFailed` says so.
* :func:`run_isolated` -- runs a whole function (the final merge) in a forked child and returns its result.

The parent turns a child's death into a :class:`WriteFailed` (a :class:`~elmo_fast.errors.UserError`: one
line naming the file and the space it needed). The temporary file being written is removed by the parent;
completed chunk files stay, so a rerun with space continues. ``fork`` (not ``spawn``) is used so that the
child shares the parent's loaded modules and needs no start-up; it runs only h5py/numpy/SQLite code.
"""
from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import shutil
import signal
import traceback
from typing import Any, Callable

from ..errors import Interrupted, UserError

__all__ = ["WriteFailed", "ChunkWriterProcess", "run_isolated", "describe_bytes", "free_bytes", "DISK_ERRNOS"]

logger = logging.getLogger(__name__)

#: errno values that mean "no room to write" (no space, quota exceeded, file size limit)
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class WriteFailed(UserError):
    """An output or work file could not be written (a full disk, a quota, the file size limit)."""


class IsolatedError(RuntimeError):
    """A bug in the writer process; the message carries the child's traceback."""


def describe_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def free_bytes(folder: str) -> int | None:
    """Bytes an unprivileged process may still write in ``folder``'s file system (None: unknown)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _space_note(path: str, needed: int | None) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    free = free_bytes(folder)
    parts = []
    if needed is not None:
        parts.append(f"it needs about {describe_bytes(needed)}")
    if free is not None:
        parts.append(f"{describe_bytes(free)} free in {folder}")
    import resource
    soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        parts.append(f"file size limit (ulimit -f) {describe_bytes(soft)}")
    return "; ".join(parts)


def write_failed(path: str, needed: int | None, how: str) -> WriteFailed:
    """The one-line error for a write of ``path`` that failed (``how``: what the child reported)."""
    return WriteFailed(f"{path}: writing failed ({how}): the disk is full, a quota is exceeded or the file size "
                       f"limit is reached ({_space_note(path, needed)}); free some space and run the same "
                       f"command again")


def _first_line(text: str, limit: int = 200) -> str:
    """HDF5's messages span lines (a timestamp, the file descriptor, ...): the first line, cut."""
    line = (str(text).strip().splitlines() or [""])[0]
    return line[:limit] + ("..." if len(line) > limit else "")


class _QuietH5Stderr:
    """``sys.stderr`` of a writer child: drops the tracebacks h5py prints from its deallocators after a failed
    write (one per buffered block: "Can't decrement id ref count (file write failed ...)"), passes everything
    else (log lines, progress bars) through. The failure itself reaches the parent, which reports it."""

    _DROP = ("Traceback (most recent call last):", 'File "h5py/', "Can't decrement id ref count",
             "Exception ignored in", ", filename = '")

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._pending = ""

    def write(self, text: str) -> int:
        if not self._pending and "\r" in text and "\n" not in text:
            return self._stream.write(text)  # progress bars (\r, no newline) go straight through
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if not any(d in line for d in self._DROP):
                self._stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _child_setup() -> None:
    """In a writer child: SIGTERM ends it at once (the parent removes its temporary file), Ctrl-C is the
    parent's to handle, and h5py's reports of a failed write stay quiet (the failure reaches the parent)."""
    import sys
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.unraisablehook = lambda args: None
    sys.stderr = _QuietH5Stderr(sys.stderr)


def _child_report(conn: Any, exc: BaseException) -> None:
    """Send what the parent needs to raise the right error (exceptions themselves may not pickle)."""
    if isinstance(exc, Interrupted):
        conn.send(("interrupted", exc.signum))
    elif isinstance(exc, UserError):
        conn.send(("user", str(exc)))
    elif isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        conn.send(("disk", os.strerror(exc.errno)))
    else:
        conn.send(("bug", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))))


def _raise_reply(reply: Any, path: str, needed: int | None) -> Any:
    kind, value = reply
    if kind == "ok":
        return value
    if kind == "interrupted":
        raise Interrupted(int(value))
    if kind == "user":
        raise UserError(value)
    if kind == "disk":
        raise write_failed(path, needed, value)
    raise IsolatedError(f"the writer process of {path} failed:\n{value}")


def _death(process: Any) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            return f"the writer process died of {signal.Signals(-code).name}"
        except ValueError:
            return f"the writer process died of signal {-code}"
    return f"the writer process ended with status {code}"


def _context() -> Any:
    return multiprocessing.get_context("fork")


def _stop(process: Any) -> None:
    if process.is_alive():
        process.terminate()
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join(10)


def run_isolated(fn: Callable[[], Any], *, path: str, needed: int | None = None,
                 cleanup: Callable[[int], None] | None = None) -> Any:
    """Run ``fn()`` in a forked child and return its (picklable) result.

    Args:
        path: the file ``fn`` writes (named in the error when the child dies).
        needed: bytes it needs (for the message).
        cleanup: called with the child's PID after a failure (e.g. to remove ``path.tmp-PID``).

    Raises:
        WriteFailed: the child died (HDF5's crash on a failed write) or reported a full disk.
        UserError / Interrupted: raised in the child. IsolatedError: any other exception in the child.
    """
    ctx = _context()
    receiver, sender = ctx.Pipe(duplex=False)

    def child() -> None:
        _child_setup()
        receiver.close()
        try:
            try:
                result = fn()
            except BaseException as e:  # noqa: B902 - every outcome goes back to the parent
                _child_report(sender, e)
                os._exit(1)
            sender.send(("ok", result))
        except BaseException:  # noqa: B902 - the parent sees the end of the pipe
            os._exit(1)

    process = ctx.Process(target=child, daemon=True)
    process.start()
    sender.close()
    ok = False
    try:
        try:
            reply = receiver.recv()
        except EOFError:
            process.join()
            raise write_failed(path, needed, _death(process)) from None
        process.join()
        value = _raise_reply(reply, path, needed)
        ok = True
        return value
    finally:
        receiver.close()
        if not ok:
            _stop(process)
            if cleanup is not None and process.pid is not None:
                cleanup(process.pid)


class ChunkWriterProcess:
    """A child process that writes chunk files (see the module docstring); one per embed job.

    The parent calls :meth:`open`, :meth:`write` (many times), :meth:`write_state`, then :meth:`close` (which
    waits for the child to say the file is complete) or :meth:`abort`. Datasets are sent in bundles of about
    :attr:`BUNDLE_BYTES` so that the pipe carries few large messages.
    """

    BUNDLE_BYTES = 4 << 20

    def __init__(self) -> None:
        self._process: Any = None
        self._conn: Any = None
        self._bundle: list[tuple[str, Any]] = []
        self._bundle_bytes = 0
        self.path: str | None = None
        self.needed = 0

    # ---------------------------------------------------------------- parent side
    def _start(self) -> None:
        ctx = _context()
        parent, child = ctx.Pipe()
        self._process = ctx.Process(target=_chunk_writer_main, args=(child, parent), daemon=True)
        self._process.start()
        child.close()
        self._conn = parent

    def _send(self, message: Any) -> None:
        try:
            self._conn.send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError):
            self._failed()

    def _failed(self) -> None:
        process, path = self._process, self.path or "chunk file"
        if process is not None:
            process.join(10)
        self.shutdown()
        raise write_failed(path, self.needed, _death(process) if process is not None else "no writer process")

    def open(self, path: str, name: str | None = None) -> None:
        """Start writing a new chunk file at ``path`` (a temporary name that the parent renames to ``name``,
        which error messages give)."""
        if self._process is None or not self._process.is_alive():
            self.shutdown()
            self._start()
        self.path, self.needed = name or path, 0
        self._send(("open", path))

    def write(self, key: str, payload: Any) -> None:
        """Queue dataset ``key`` (a float32 array); sent in bundles."""
        self._bundle.append((key, payload))
        self._bundle_bytes += int(getattr(payload, "nbytes", 0)) + 512
        self.needed += int(getattr(payload, "nbytes", 0)) + 512
        if self._bundle_bytes >= self.BUNDLE_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._bundle:
            bundle, self._bundle, self._bundle_bytes = self._bundle, [], 0
            self._send(("write", bundle))

    def write_state(self, state: Any) -> None:
        """The carried LSTM state after the chunk (stateful runs), or None."""
        self._flush()
        self._send(("state", state))

    def close(self, fingerprint: str) -> None:
        """Finish the file (with its fingerprint attribute) and wait until the child has closed it."""
        self._flush()
        self._send(("close", fingerprint))
        try:
            reply = self._conn.recv()
        except (EOFError, ConnectionResetError):
            self._failed()
            return
        if reply[0] != "ok":
            self.shutdown()  # the child's file is in an unknown state: it exits
        _raise_reply(reply, self.path or "chunk file", self.needed)

    def abort(self) -> None:
        """Drop the file being written (the parent removes it); the child exits, a new one starts if needed."""
        self._bundle, self._bundle_bytes = [], 0
        self.shutdown()

    def shutdown(self) -> None:
        """Stop the child (it discards an unfinished file without closing it: HDF5 could crash there)."""
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None
        if self._process is not None:
            _stop(self._process)
            self._process = None


def _chunk_writer_main(conn: Any, parent_end: Any) -> None:
    """The child's loop (see :func:`_chunk_writer_loop`); it never prints a traceback of its own."""
    _child_setup()
    try:
        _chunk_writer_loop(conn, parent_end)
    except BaseException:  # noqa: B902 - the parent sees the end of the pipe
        os._exit(1)


def _chunk_writer_loop(conn: Any, parent_end: Any) -> None:
    """One chunk file at a time; on any failure it replies at ``close`` and exits without closing the file
    again (closing a file whose writes failed is where HDF5 crashes)."""
    import h5py
    from .writer import write_float32
    parent_end.close()
    f = data = None
    error: BaseException | None = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError, Interrupted):
            os._exit(0)
        op = message[0]
        try:
            if error is not None and op != "close":
                continue
            if op == "open":
                f = h5py.File(message[1], "w")
                data = f.create_group("data")
            elif op == "write":
                for key, payload in message[1]:
                    write_float32(data, key, payload)
            elif op == "state":
                if message[1] is not None:
                    g = f.create_group("state")
                    g.create_dataset("h", data=message[1][0])
                    g.create_dataset("c", data=message[1][1])
            elif op == "close":
                if error is not None:
                    _child_report(conn, error)
                    os._exit(1)
                f.attrs["fingerprint"] = message[1]
                f.close()
                f = data = None
                conn.send(("ok", None))
        except BaseException as e:  # noqa: B902 - reported at close
            error = e
            if op == "close":
                _child_report(conn, e)
                os._exit(1)
