"""Publishing a set of files as a whole: model folders (``export``, ``convert``) and a run folder's settings.

A model folder is several files (``options.json``, ``weights.hdf5``, ``softmax_weights.hdf5``, ``vocab.txt``)
that are only meaningful together. Writing each atomically is not enough: a kill or a full disk between two of
them leaves one model's biLM beside another's softmax. Two mechanisms, one manifest:

* :func:`publish_folder` (a whole folder, ``export``/``convert``): every file is written into the sibling
  ``OUT.tmp-PID``, flushed (``fsync`` of each file and of the folder), then a manifest
  (:data:`MANIFEST_NAME`: size and sha256 of every published file) is written last, and the staged folder is
  swapped with ``OUT`` in one step (``renameat2(RENAME_EXCHANGE)``; where the file system lacks it, two renames
  with ``OUT.old-PID`` as the way back). A kill at any step leaves ``OUT`` as it was or wholly new. With
  ``--overwrite`` the user's other files in ``OUT`` are carried over (hard links, else copies).
* :func:`publish_files` (a few files inside a folder that cannot be swapped, e.g. a run folder holding a
  lock and checkpoints): the new files and their manifest go into ``FOLDER/publish.tmp-PID/`` first; the
  manifest there is the commit record. Then each file is renamed into place, the manifest last. A kill
  before the commit record leaves the old files (the journal is dropped at the next run); a kill after it is
  completed at the next run (:func:`recover_files`).

Loading checks the manifest when there is one (:func:`verify_folder`): a file missing, cut short, replaced or
not listed is refused in one line naming the folder and the file. Folders without a manifest (the public
bilm-tf files, exports of older versions) load as before. Temporaries of processes that no longer run are
removed (or, for ``OUT.old-PID`` with ``OUT`` missing, put back) at the next publication to the same place.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import re
import shutil
from typing import Callable, Iterable, Mapping

from .atomic import fsync_dir, fsync_file, json_text, os_error_text, pid_alive
from .errors import UserError

__all__ = ["MANIFEST_NAME", "MODEL_FILES", "PublishError", "file_digest", "publish_folder", "publish_files",
           "recover_folder", "recover_files", "read_manifest", "verify_folder", "check_free_space",
           "format_bytes"]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "elmo-fast-manifest.json"
MANIFEST_FORMAT = "elmo-fast-manifest"
MANIFEST_VERSION = 1
#: the files of an ELMo model folder: a publication replaces all of them (one not written is dropped)
MODEL_FILES = ("options.json", "weights.hdf5", "softmax_weights.hdf5", "vocab.txt")
#: the journal folder of :func:`publish_files` inside the target folder
JOURNAL_PREFIX = "publish"

_TMP_DIR_RE = re.compile(r"\.(tmp|old)-(\d+)$")


class PublishError(UserError):
    """A publication failed (a write error, a full disk); nothing was published, the old files stay."""


# ---------------------------------------------------------------------------------------------- manifest
def file_digest(path: str | os.PathLike, block: int = 1 << 20) -> tuple[int, str]:
    """``(size in bytes, sha256 hex)`` of a file, read in blocks (constant memory)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            data = f.read(block)
            if not data:
                break
            h.update(data)
            size += len(data)
    return size, h.hexdigest()


def _manifest(folder: str, names: Iterable[str]) -> dict:
    files = {}
    for name in names:
        size, sha = file_digest(os.path.join(folder, name))
        files[name] = {"size": size, "sha256": sha}
    return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "files": files}


def _write_durably(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The folder's manifest (``{"files": {name: {"size", "sha256"}}}``), or None when it has none.

    Raises:
        UserError: the manifest is unreadable or not one elmo-fast wrote.
    """
    path = os.path.join(os.fspath(folder), MANIFEST_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable manifest ({e}); expected the JSON list of the folder's files that "
                        f"elmo-fast writes last when it publishes a folder") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict) \
            or not all(isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
                       for v in files.values()):
        raise UserError(f"{path}: not an elmo-fast manifest (expected 'format': '{MANIFEST_FORMAT}' and 'files': "
                        f"name -> size, sha256)")
    return manifest


def verify_folder(folder: str | os.PathLike, names: Iterable[str] | None = None) -> bool:
    """Check the files a loader is about to read against the folder's manifest.

    Args:
        folder: a published folder.
        names: the files to check (default: every listed file). A model file (:data:`MODEL_FILES`) that exists
            but is not listed is refused too: it was not published with the others (e.g. an older export's
            softmax beside a conversion). Other unlisted names are the user's and not checked.

    Returns:
        True when verified, False when the folder has no manifest (nothing to check against).

    Raises:
        UserError: one line naming the folder and the first file that does not match (missing, other size,
            other sha256, not listed), or a temporary folder of an interrupted publication.
    """
    folder = os.fspath(folder)
    m = _TMP_DIR_RE.search(os.path.basename(os.path.normpath(folder)))
    if m and os.path.isdir(folder):
        raise UserError(f"{folder}: the temporary folder of an interrupted publication (process {m.group(2)}), not "
                        f"a model; publish again (export/convert) and use the folder without the suffix")
    manifest = read_manifest(folder)
    if manifest is None:
        return False
    listed = manifest["files"]
    where = f"{folder}: "
    for name in (listed if names is None else names):
        path = os.path.join(folder, name)
        entry = listed.get(name)
        if entry is None:
            if name in MODEL_FILES and os.path.exists(path):
                raise UserError(f"{where}{name} is not listed in {MANIFEST_NAME}: it was not published with the "
                                f"other files (left from another export?); remove it or publish the folder again")
            continue
        if not os.path.isfile(path):
            raise UserError(f"{where}{name} is missing; {MANIFEST_NAME} lists it: the folder is incomplete, "
                            f"publish it again")
        size = os.path.getsize(path)
        if size != entry["size"]:
            raise UserError(f"{where}{name} has {size} bytes, {MANIFEST_NAME} says {entry['size']}: the folder mixes "
                            f"files of different publications or a copy was cut short; publish it again")
        if file_digest(path)[1] != entry["sha256"]:
            raise UserError(f"{where}{name} does not match its sha256 in {MANIFEST_NAME}: the folder mixes files of "
                            f"different publications or the file was changed or damaged; publish it again")
    return True


# ---------------------------------------------------------------------------------------------- space
def format_bytes(n: int | float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # pragma: no cover


def check_free_space(folder: str, needed: int, what: str) -> None:
    """Refuse (before writing anything) when ``folder``'s file system has less than ``needed`` bytes free."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < needed:
        raise PublishError(f"{what}: not enough free space in {folder}: it needs about {format_bytes(needed)}, "
                           f"{format_bytes(free)} are free; nothing was written")


# ---------------------------------------------------------------------------------------------- swapping folders
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _rename_exchange(a: str, b: str) -> None:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); OSError(ENOSYS/EINVAL) where missing."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), a, None, b)


def _swap_into_place(staging: str, out: str) -> str | None:
    """Put the complete folder ``staging`` at ``out`` in one step; returns the path now holding the old folder
    (to be removed), or None when there was none."""
    if not os.path.lexists(out):
        os.rename(staging, out)
        return None
    if os.path.isdir(out) and not os.path.islink(out) and not os.listdir(out):
        os.rename(staging, out)  # replaces an empty directory atomically
        return None
    try:
        _rename_exchange(staging, out)
        return staging
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            raise
    # no atomic exchange here: two renames; OUT.old-PID is the way back if we die between them (recover_folder)
    old = f"{out}.old-{os.getpid()}"
    os.rename(out, old)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(old, out)
        raise
    return old


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)
    return dst


def _carry_over(out: str, staging: str, skip: set[str]) -> None:
    """The user's other entries of ``out`` into ``staging`` (files as hard links, else copies)."""
    for entry in os.scandir(out):
        if entry.name in skip or _TMP_DIR_RE.search(entry.name):
            continue
        dst = os.path.join(staging, entry.name)
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), dst)
        elif entry.is_dir():
            shutil.copytree(entry.path, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry.path, dst)


def recover_folder(out: str | os.PathLike) -> None:
    """Clean up after interrupted publications to ``out`` by processes that no longer run: ``OUT.tmp-PID``
    (a staged or swapped-out folder) is removed; ``OUT.old-PID`` is put back when ``OUT`` is missing (a kill
    between the two renames of the fallback swap), else removed."""
    out = os.path.abspath(os.fspath(out))
    parent, base = os.path.split(out)
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return
    for name in names:
        if not name.startswith(base + "."):
            continue
        m = _TMP_DIR_RE.search(name)
        if not m or name[:m.start()] != base:
            continue
        pid = int(m.group(2))
        if pid != os.getpid() and pid_alive(pid):
            continue  # a publication in progress
        path = os.path.join(parent, name)
        if m.group(1) == "old" and not os.path.lexists(out):
            os.rename(path, out)
            logger.warning("restored %s from %s: a publication by process %d was interrupted between its renames",
                           out, path, pid)
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except OSError:
                continue
        logger.info("removed %s, left by an interrupted publication (process %d no longer runs)", path, pid)


def publish_folder(out_dir: str | os.PathLike, files: Mapping[str, Callable[[str], None]], *,
                   replaces: Iterable[str] = MODEL_FILES, needed_bytes: int | None = None,
                   what: str = "export") -> str:
    """Publish a folder as a whole (see the module docstring).

    Args:
        out_dir: the folder to create or replace (a symbolic link to a folder: its target is replaced).
        files: file name -> ``write(path)`` that writes that file at ``path`` (called in order).
        replaces: names of an existing ``out_dir`` that are not carried over (the set being replaced: a model
            file this publication does not write is dropped, not left beside the new ones).
        needed_bytes: the predicted size of the new files; refused up front when the disk has less free.
        what: how errors name the operation ("export", "convert").

    Returns:
        the path the folder was published at.

    Raises:
        PublishError: a write failed (disk full, file too large, permissions); one line naming the file, the OS
            error and the space needed; ``out_dir`` is as it was and no temporaries are left.
    """
    out = os.path.abspath(os.fspath(out_dir))
    if os.path.islink(out) and os.path.isdir(out):
        out = os.path.realpath(out)
    parent = os.path.dirname(out)
    try:  # like mkdir -p: a new output may name folders that do not exist yet
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise PublishError(f"{what} {out}: cannot create {parent}: {os_error_text(e)}") from None
    recover_folder(out)
    existed = os.path.isdir(out)
    kept = f"{out} keeps its previous files" if existed else f"{out} was not created"
    if needed_bytes is not None:
        check_free_space(parent, needed_bytes, f"{what} {out}")
    need = f"; it needs about {format_bytes(needed_bytes)} in {parent}" if needed_bytes else ""
    staging = f"{out}.tmp-{os.getpid()}"
    os.mkdir(staging)
    old: str | None = staging
    try:
        current = None
        try:
            if existed:
                _carry_over(out, staging, set(replaces) | {MANIFEST_NAME})
            for name, write in files.items():
                current = name
                write(os.path.join(staging, name))
                fsync_file(os.path.join(staging, name))
            current = MANIFEST_NAME
            _write_durably(os.path.join(staging, MANIFEST_NAME), json_text(_manifest(staging, files)).encode())
            fsync_dir(staging)
            current = None
            old = _swap_into_place(staging, out)
        except OSError as e:
            target = os.path.join(out, current) if current else out
            raise PublishError(f"{what}: cannot write {target} ({os_error_text(e)}){need}; nothing was published, "
                               f"{kept}") from None
        try:
            fsync_dir(parent)
        except OSError:
            pass  # published; only the durability of the rename is unconfirmed
    finally:
        if old is not None and os.path.lexists(old):
            shutil.rmtree(old, ignore_errors=True)
    logger.info("published %s (%s)", out, ", ".join(files))
    return out


# ---------------------------------------------------------------------------------------------- files in place
def _journal_names(folder: str) -> list[tuple[str, int]]:
    out = []
    try:
        names = os.listdir(folder)
    except OSError:
        return out
    for name in names:
        m = re.fullmatch(re.escape(JOURNAL_PREFIX) + r"\.tmp-(\d+)", name)
        if m:
            out.append((name, int(m.group(1))))
    return out


def _apply_journal(folder: str, journal: str) -> None:
    names = sorted(n for n in os.listdir(journal) if n != MANIFEST_NAME)
    for name in names:
        os.replace(os.path.join(journal, name), os.path.join(folder, name))
    if os.path.exists(os.path.join(journal, MANIFEST_NAME)):
        os.replace(os.path.join(journal, MANIFEST_NAME), os.path.join(folder, MANIFEST_NAME))
    fsync_dir(folder)
    os.rmdir(journal)


def recover_files(folder: str | os.PathLike) -> None:
    """Finish or drop the :func:`publish_files` journals of processes that no longer run: one with its manifest
    (committed) is completed, one without is removed (the old files were never touched)."""
    folder = os.fspath(folder)
    for name, pid in _journal_names(folder):
        if pid != os.getpid() and pid_alive(pid):
            continue
        journal = os.path.join(folder, name)
        if os.path.exists(os.path.join(journal, MANIFEST_NAME)):
            _apply_journal(folder, journal)
            logger.warning("completed the update of %s that process %d committed before it was interrupted",
                           folder, pid)
        else:
            shutil.rmtree(journal, ignore_errors=True)
            logger.info("removed %s, an update of %s interrupted before it was committed (process %d)", journal,
                        folder, pid)


def publish_files(folder: str | os.PathLike, contents: Mapping[str, bytes]) -> None:
    """Replace several files of ``folder`` as one set (journal + manifest as commit record, module docstring).

    The folder's manifest afterwards lists the new files and keeps its entries for other files.

    Raises:
        PublishError: a write failed before the commit record; the old files are untouched.
    """
    folder = os.fspath(folder)
    recover_files(folder)
    journal = os.path.join(folder, f"{JOURNAL_PREFIX}.tmp-{os.getpid()}")
    shutil.rmtree(journal, ignore_errors=True)
    try:
        os.mkdir(journal)
        for name, data in contents.items():
            _write_durably(os.path.join(journal, name), data)
        previous = read_manifest(folder)
        manifest = _manifest(journal, contents)
        if previous is not None:
            manifest["files"] = {**{k: v for k, v in previous["files"].items() if k not in contents},
                                 **manifest["files"]}
        _write_durably(os.path.join(journal, MANIFEST_NAME), json_text(manifest).encode())
        fsync_dir(journal)
    except OSError as e:
        shutil.rmtree(journal, ignore_errors=True)
        raise PublishError(f"{folder}: cannot write {', '.join(contents)} ({os_error_text(e)}); the previous files "
                           f"are unchanged") from None
    except BaseException:
        shutil.rmtree(journal, ignore_errors=True)
        raise
    _apply_journal(folder, journal)
