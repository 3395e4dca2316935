"""Output and input path checks made before any model is loaded, and the run's temporary names.

Policy (also in ``elmo-fast embed --help``):

* OUTPUT (and every shard name) must not be INPUT, the options file, the weight file or any file of
  ``--model-dir`` (compared by resolved path and by inode, so hard links and symlinks to them count too).
  Refused even with ``--overwrite``.
* OUTPUT must not be a directory, a FIFO, a device or a socket (refused even with ``--overwrite``).
* An existing regular OUTPUT is refused unless ``--overwrite``; with it the old file stays in place until the
  new one is complete, then it is replaced (rename).
* A symbolic link at OUTPUT is never followed: it is refused unless ``--overwrite``, and then the *link* is
  replaced by the new regular file; the link's target is left untouched.
* The folder must exist and be writable, and the longest temporary name must fit the file system's name limit.

Temporary names: ``OUTPUT.tmp-PID`` (the output being assembled, renamed when complete) and the work folder
``OUTPUT.embed-work/`` (completed chunks, resumable; removed after success). Files named ``*.tmp-PID`` whose
process no longer exists are the leftovers of a killed run and are removed at the next start.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import stat
from typing import Iterable, Sequence

from ..atomic import pid_alive
from ..errors import UserError

__all__ = ["check_input", "check_outputs", "shard_paths", "work_dir_for", "pid_alive", "remove_dead_temps",
           "TMP_SUFFIX_MAX", "WORK_SUFFIX"]

logger = logging.getLogger(__name__)

WORK_SUFFIX = ".embed-work"
#: ``.tmp-`` + the largest Linux PID (4194304)
TMP_SUFFIX_MAX = len(".tmp-4194304")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_input(path: str) -> None:
    """INPUT must be a readable regular file (it is read twice: validated first, then embedded chunk by chunk)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"INPUT {path}: no such file") from None
    except OSError as e:
        raise UserError(f"INPUT {path}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        note = " (a pipe cannot be read twice: write it to a file first)" if stat.S_ISFIFO(st.st_mode) else ""
        raise UserError(f"INPUT {path}: is {_kind(st.st_mode)}; expected a regular text file{note}")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise UserError(f"INPUT {path}: cannot be read ({e.strerror})") from None


def shard_paths(output: str, shards: int) -> list[str]:
    """``[output]`` for one shard, else ``stem-00000-of-0000N.ext`` beside ``output``."""
    if shards <= 1:
        return [output]
    stem, ext = os.path.splitext(output)
    return [f"{stem}-{i:05d}-of-{shards:05d}{ext}" for i in range(shards)]


def work_dir_for(output: str) -> str:
    """The resumable work folder of a run writing ``output``."""
    return output + WORK_SUFFIX


def _same_file(a: str, b: str) -> bool:
    try:
        if os.path.realpath(a) == os.path.realpath(b):
            return True
        return os.path.samefile(a, b)
    except OSError:
        return False


def _name_max(folder: str) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_outputs(outputs: Sequence[str], *, protected: Iterable[tuple[str, str]], overwrite: bool) -> None:
    """Refuse output paths that would destroy a user's file (see the module docstring).

    Args:
        outputs: the final output path(s) (one, or the shard names).
        protected: ``(role, path)`` pairs that must never be written, e.g. ``("INPUT", path)``.
        overwrite: whether an existing regular file (or a symlink) at an output may be replaced.
    """
    protected = [(role, os.fspath(p)) for role, p in protected]
    for out in outputs:
        for role, p in protected:
            if _same_file(out, p):
                raise UserError(f"OUTPUT {out} is the {role} ({p}); choose another output path")
        try:
            st = os.lstat(out)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if st is not None:
            if stat.S_ISLNK(st.st_mode):
                if not overwrite:
                    raise UserError(f"OUTPUT {out} exists (a symbolic link to {os.readlink(out)}); pass --overwrite "
                                    f"to replace the link itself (its target is never written)")
            elif not stat.S_ISREG(st.st_mode):
                raise UserError(f"OUTPUT {out} is {_kind(st.st_mode)}; expected a path for a new hdf5 file")
            elif not overwrite:
                raise UserError(f"OUTPUT {out} exists; pass --overwrite to replace it (or choose another path)")
        folder = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(folder):
            what = "does not exist" if not os.path.exists(folder) else "is not a directory"
            raise UserError(f"OUTPUT {out}: the folder {folder} {what}")
        base = os.path.basename(out)
        longest = len(base) + max(TMP_SUFFIX_MAX, len(WORK_SUFFIX))
        limit = _name_max(folder)
        if longest > limit:
            raise UserError(f"OUTPUT {out}: the name is too long: its temporary names need {longest} characters "
                            f"and the file system allows {limit}; choose a name of at most "
                            f"{limit - max(TMP_SUFFIX_MAX, len(WORK_SUFFIX))} characters")
        probe = os.path.join(folder, f".{base[:40]}.probe-{os.getpid()}")
        try:
            fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
            os.remove(probe)
        except OSError as e:
            reason = "not writable" if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else e.strerror
            raise UserError(f"OUTPUT {out}: cannot create files in {folder} ({reason})") from None


_TMP_RE = re.compile(r"\.tmp-(\d+)$")


def remove_dead_temps(folder: str, prefixes: Sequence[str]) -> list[str]:
    """Remove ``PREFIX.tmp-PID`` files in ``folder`` whose PID is not a running process; their names."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TMP_RE.search(name)
        if not m or not any(name == p + m.group(0) for p in prefixes):
            continue
        if pid_alive(int(m.group(1))) and int(m.group(1)) != os.getpid():
            continue
        path = os.path.join(folder, name)
        try:
            if os.path.isfile(path) and not os.path.islink(path):
                os.remove(path)
                removed.append(path)
        except OSError:
            pass
    for path in removed:
        logger.info("removed %s, left by a run that no longer exists (process %s)", path,
                    _TMP_RE.search(path).group(1))  # type: ignore[union-attr]
    return removed
