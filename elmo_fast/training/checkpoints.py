"""Training checkpoints (``checkpoint.pt``): atomic, finite-only, checksummed writes; verified loads.

A checkpoint is a dict saved with :func:`torch.save` and read back with ``weights_only=True`` (no pickled code
runs). Writing goes to ``checkpoint.pt.tmp-PID`` (flushed to the disk) and is renamed when complete, so the
previous checkpoint stays until a new complete one exists; the temporaries of killed runs (their PID is gone)
are removed when a run starts or resumes. Nothing is written when a weight or an optimizer state holds NaN/Inf
(:class:`NonFiniteError` names the step and the tensor). A failed write (a full disk) is one line naming the OS
error and the checkpoint that was kept (:class:`CheckpointWriteError`), not torch's archive-writer message.

**Verification.** torch does not check its archives' CRCs on load, so a flipped bit in tensor data would be
resumed silently. Every write also records the file's sha256 and size in ``checkpoint.sha256.json``
(:data:`DIGESTS_NAME`, written *before* the rename, so it always lists the checkpoint in place), and the one it
replaces is kept as ``checkpoint.prev.pt`` (:data:`PREVIOUS_NAME`, a hard link: no copy). Loading hashes the
file it parses (same open file) and refuses one whose sha256 is not listed; ``--resume`` then falls back to
the previous checkpoint when that one verifies, and says so (:func:`load_run_checkpoint`). A run folder
without the digest file (written by an older elmo-fast) loads unverified.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import pickle
from typing import IO, Any, Iterable, Mapping

import torch

from ..atomic import fsync_dir, json_text, os_error_text, pid_alive
from ..errors import MissingFileError, UserError
from ..options import options_from_dict
from .model import LanguageModel

__all__ = ["CHECKPOINT_NAME", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "PREVIOUS_NAME", "DIGESTS_NAME",
           "NonFiniteError", "CheckpointWriteError", "checkpoint_path", "load_checkpoint", "load_run_checkpoint",
           "save_checkpoint_file", "model_from_checkpoint", "first_non_finite", "remove_stale_temporaries"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "elmo-fast-checkpoint"
CHECKPOINT_VERSION = 1
#: the checkpoint the latest one replaced (the fallback when the latest does not verify)
PREVIOUS_NAME = "checkpoint.prev.pt"
#: sha256 and size of the checkpoints of the run folder (``{"checkpoints": {sha256: {"size", "step"}}}``)
DIGESTS_NAME = "checkpoint.sha256.json"
DIGESTS_FORMAT = "elmo-fast-checkpoint-digests"
#: digests kept in the file: the new checkpoint, the one it replaces, and older ones a kill may have left
_DIGESTS_KEPT = 4

_EXPECTED = "an elmo-fast training checkpoint written by `elmo-fast train`"


class NonFiniteError(UserError, RuntimeError):
    """A weight or optimizer state holds NaN/Inf: nothing is saved or exported (CLI exit 2, one line)."""


class CheckpointWriteError(UserError):
    """Writing a checkpoint failed (a full disk, a file-size limit, an I/O error); the previous one stays."""


def checkpoint_path(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINT_NAME)


def first_non_finite(tensors: Iterable[tuple[str, Any]]) -> str | None:
    """The name of the first floating-point tensor holding NaN or Inf (sparse: its values), or None."""
    for name, t in tensors:
        if not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.is_complex()):
            continue
        values = t.coalesce().values() if t.is_sparse else t
        if not bool(torch.isfinite(values).all()):
            return name
    return None


def checkpoint_tensors(obj: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    """``(name, tensor)`` of a checkpoint's model weights and optimizer states (``model/NAME``,
    ``optimizer/state/ID/KEY``), the tensors that must be finite."""
    for name, t in obj.get("model", {}).items():
        yield f"model/{name}", t
    for pid, state in obj.get("optimizer", {}).get("state", {}).items():
        for key, t in state.items():
            yield f"optimizer/state/{pid}/{key}", t


class _DigestWriter:
    """A write-only file for :func:`torch.save` that hashes what it writes and keeps the first OS error.

    torch's archive writer turns a failed write into ``[enforce fail at inline_container.cc] unexpected pos``;
    the error kept here is what the user needs to see ("No space left on device"). Writes loop until every
    byte is written (a short write near a full disk would otherwise go unnoticed).
    """

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.sha = hashlib.sha256()
        self.size = 0
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        try:
            done = 0
            while done < len(view):
                done += os.write(self.fd, view[done:])
        except OSError as e:
            self.error = self.error or e
            raise
        self.sha.update(view)
        self.size += len(view)
        return len(view)

    def flush(self) -> None:
        pass

    def sync_and_close(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as e:
            self.error = self.error or e
            raise
        finally:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _digests_path(ckpt_file: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(ckpt_file)), DIGESTS_NAME)


def read_digests(ckpt_file: str) -> dict[str, dict[str, int]] | None:
    """sha256 -> ``{"size", "step"}`` of the checkpoints written in ``ckpt_file``'s folder, or None when the
    folder has no digest file (an older elmo-fast's run)."""
    path = _digests_path(ckpt_file)
    try:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e}); expected the checksums elmo-fast writes with each checkpoint "
                        f"(delete it to load the checkpoint unverified)") from None
    entries = payload.get("checkpoints") if isinstance(payload, dict) else None
    if not isinstance(payload, dict) or payload.get("format") != DIGESTS_FORMAT or not isinstance(entries, dict):
        raise UserError(f"{path}: not an elmo-fast checkpoint digest file (expected 'format': '{DIGESTS_FORMAT}')")
    return entries


def _kept(path: str, kept_step: int | None) -> str:
    if kept_step is not None and os.path.exists(path):
        return f"{path} keeps step {kept_step}"
    return f"{path} keeps the previous checkpoint" if os.path.exists(path) else "no checkpoint was written yet"


def save_checkpoint_file(obj: dict[str, Any], path: str, check_finite: bool = True,
                         current_digest: str | None = None, kept_step: int | None = None) -> str:
    """Write a checkpoint dict (format and version added) to ``path`` atomically, with its sha256.

    Order (each step flushed): the new file under a temporary name; the digest file listing it and the
    checkpoint in place; the checkpoint in place becomes ``checkpoint.prev.pt`` (when it is the verified one,
    ``current_digest``); the new file is renamed to ``path``. A kill at any step leaves ``path`` verifiable.

    Args:
        current_digest: sha256 of the checkpoint now at ``path`` when it was verified or written by this run
            (None: not known good, so it is not kept as the previous checkpoint).
        kept_step: its step, for the error message of a failed write.

    Returns:
        the new checkpoint's sha256.

    Raises:
        NonFiniteError: a model weight or optimizer state is not finite; ``path`` is left as it was.
        CheckpointWriteError: the write failed (one line with the OS error and the checkpoint that was kept).
    """
    bad = first_non_finite(checkpoint_tensors(obj)) if check_finite else None
    if bad is not None:
        raise NonFiniteError(f"step {obj.get('step')}: tensor '{bad}' holds NaN/Inf; checkpoint not written "
                             f"({path} keeps the last finite one). Lower --learning-rate or --clip-norm, or check "
                             f"the data")
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp-{os.getpid()}"
    digests = _digests_path(path)
    digests_tmp = f"{digests}.tmp-{os.getpid()}"
    writer: _DigestWriter | None = None
    try:
        writer = _DigestWriter(tmp)
        try:
            torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **obj}, writer)
        finally:
            writer.sync_and_close()
        sha, size = writer.sha.hexdigest(), writer.size
        old = read_digests(path) or {}
        entries = {sha: {"size": size, "step": int(obj.get("step", 0))}}
        if current_digest is not None and current_digest in old:
            entries[current_digest] = old[current_digest]
        for key, value in old.items():
            if len(entries) < _DIGESTS_KEPT:
                entries.setdefault(key, value)
        with open(digests_tmp, "w", encoding="utf-8") as f:
            f.write(json_text({"format": DIGESTS_FORMAT, "version": 1, "checkpoints": entries}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(digests_tmp, digests)
        if current_digest is not None and os.path.exists(path):
            previous = os.path.join(folder, PREVIOUS_NAME)
            link = f"{previous}.tmp-{os.getpid()}"
            try:
                os.link(path, link)
                os.replace(link, previous)
            except OSError:  # no hard links here: the old checkpoint moves (loading falls back to it meanwhile)
                os.replace(path, previous)
        os.replace(tmp, path)
        fsync_dir(folder)
    except (OSError, RuntimeError) as e:
        error = (writer.error if writer is not None else None) or (e if isinstance(e, OSError) else None)
        if error is None:
            raise
        raise CheckpointWriteError(f"step {obj.get('step')}: cannot write the checkpoint {path} "
                                   f"({os_error_text(error)}); {_kept(path, kept_step)}. Free some space and "
                                   f"resume (`elmo-fast train --out {folder} --resume`)") from None
    finally:
        for leftover in (tmp, digests_tmp, f"{os.path.join(folder, PREVIOUS_NAME)}.tmp-{os.getpid()}"):
            if os.path.exists(leftover):
                os.remove(leftover)
    return sha


def remove_stale_temporaries(path: str) -> list[str]:
    """Remove ``PATH.tmp-PID`` files whose process no longer runs (left by a killed write); returns them.

    A temporary of a live process (another run writing now) is kept.
    """
    removed = []
    for tmp in glob.glob(glob.escape(path) + ".tmp-*"):
        suffix = tmp.rsplit(".tmp-", 1)[1]
        if not suffix.isdigit() or int(suffix) == os.getpid() or pid_alive(int(suffix)):
            continue
        try:
            os.remove(tmp)
        except OSError:
            continue
        removed.append(tmp)
        logger.info("removed %s: the temporary file of a run that no longer runs (process %s)", tmp, suffix)
    return removed


# ---------------------------------------------------------------------------------------------- loading
def _require(path: str, obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in obj:
        raise UserError(f"{path}: checkpoint field '{key}' is missing; expected {what} ({_EXPECTED})")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise UserError(f"{path}: checkpoint field '{key}' is {type(value).__name__}; expected {what}")
    return value


def _validate(path: str, ckpt: Mapping[str, Any]) -> None:
    _require(path, ckpt, "step", int, "an integer >= 0")
    _require(path, ckpt, "tokens", int, "an integer >= 0")
    model = _require(path, ckpt, "model", dict, "a non-empty dict of weight tensors")
    if not model:
        raise UserError(f"{path}: checkpoint field 'model' is empty; expected the model's weight tensors")
    for name, t in model.items():
        if not isinstance(t, torch.Tensor):
            raise UserError(f"{path}: checkpoint field 'model/{name}' is {type(t).__name__}; expected a tensor")
    for name in ("softmax_weight", "softmax_bias"):
        if name not in model:
            raise UserError(f"{path}: checkpoint field 'model/{name}' is missing; expected {_EXPECTED}")
    opt = _require(path, ckpt, "optimizer", dict, "the optimizer's state dict")
    if not isinstance(opt.get("state"), dict) or not isinstance(opt.get("param_groups"), list) \
            or not opt["param_groups"]:
        raise UserError(f"{path}: checkpoint field 'optimizer' has no 'state' dict or an empty 'param_groups' "
                        f"list; expected Adagrad's state dict")
    _require(path, ckpt, "options", dict, "the model options (a dict)")
    vocab_size = _require(path, ckpt, "vocab_size", int, "a positive integer")
    if vocab_size < 1 or ckpt["step"] < 0 or ckpt["tokens"] < 0:
        raise UserError(f"{path}: checkpoint fields step/tokens/vocab_size are negative or zero "
                        f"({ckpt['step']}/{ckpt['tokens']}/{vocab_size})")
    if int(model["softmax_weight"].shape[0]) != vocab_size:
        raise UserError(f"{path}: 'model/softmax_weight' has {model['softmax_weight'].shape[0]} rows, field "
                        f"'vocab_size' says {vocab_size}")
    _require(path, ckpt, "vocab_digest", str, "a string")
    world = _require(path, ckpt, "world_size", int, "a positive integer")
    ranks = _require(path, ckpt, "ranks", list, f"a list of {world} per-process states")
    if world < 1 or len(ranks) != world:
        raise UserError(f"{path}: checkpoint field 'ranks' has {len(ranks)} entries; expected world_size = {world}")
    for r, state in enumerate(ranks):
        if not isinstance(state, dict):
            raise UserError(f"{path}: checkpoint field 'ranks[{r}]' is {type(state).__name__}; expected a dict")
        for key, kind in (("torch_rng", torch.Tensor), ("sampler_rng", torch.Tensor), ("data", dict)):
            if not isinstance(state.get(key), kind):
                raise UserError(f"{path}: checkpoint field 'ranks[{r}].{key}' is missing or "
                                f"{type(state.get(key)).__name__}; expected a {kind.__name__}")
    if ckpt.get("max_steps") is not None and not isinstance(ckpt["max_steps"], int):
        raise UserError(f"{path}: checkpoint field 'max_steps' is {type(ckpt['max_steps']).__name__}; expected an "
                        f"integer or None")


def _read_verified(path: str, verify: bool) -> tuple[dict[str, Any], str | None]:
    """Parse, validate and (when the folder has a digest file) verify one checkpoint -> (dict, sha256 or None).

    The digest is computed over the same open file torch reads (a concurrent rename cannot slip another file in
    between), and the digest file is read after the checkpoint was opened: it is written before each rename, so
    it lists whatever checkpoint was opened. The fields are checked before the checksum, so a file that is not a
    checkpoint at all is named as such rather than as a checksum mismatch.
    """
    if not os.path.exists(path):
        raise MissingFileError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory; expected {_EXPECTED}")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: empty file (0 bytes); expected {_EXPECTED}")
    try:
        f: IO[bytes] = open(path, "rb")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({os_error_text(e)})") from None
    with f:
        digests = read_digests(path) if verify else None
        sha = None
        try:
            if digests is not None:
                h = hashlib.sha256()
                while True:
                    block = f.read(1 << 20)
                    if not block:
                        break
                    h.update(block)
                sha = h.hexdigest()
                f.seek(0)
            ckpt = torch.load(f, map_location="cpu", weights_only=True)
        except OSError as e:
            raise UserError(f"{path}: cannot read ({os_error_text(e)})") from None
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError, KeyError,
                IndexError, UnicodeDecodeError, ImportError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{path}: not a readable torch checkpoint ({first[:160]}); expected {_EXPECTED}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not an elmo-fast training checkpoint (no 'format': '{CHECKPOINT_FORMAT}' field); "
                        f"expected {_EXPECTED}")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"{path}: checkpoint version {ckpt.get('version')!r}, this elmo-fast reads "
                        f"{CHECKPOINT_VERSION}")
    _validate(path, ckpt)
    if digests is not None and sha not in digests:
        raise UserError(f"{path}: its sha256 ({sha[:16]}...) is not one written with the run's checkpoints "
                        f"({DIGESTS_NAME}): the file is damaged or was replaced; refusing to use it")
    return ckpt, sha


def load_checkpoint(path: str, verify: bool = True) -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True``, check its fields and (``verify``, when its folder
    has ``checkpoint.sha256.json``) its sha256.

    Raises:
        FileNotFoundError: no such file.
        UserError: a directory, an empty or unreadable file, not a checkpoint, a field missing or of the wrong
            type, a checksum that does not match (one line naming the file and the field).
    """
    return _read_verified(path, verify)[0]


def load_run_checkpoint(run_dir: str, fallback: bool = False) -> tuple[dict[str, Any], str | None, str]:
    """The run folder's latest checkpoint, verified -> ``(checkpoint, sha256 or None, file it came from)``.

    With ``fallback`` (``--resume``), a latest checkpoint that is missing, unreadable or fails its checksum is
    replaced by ``checkpoint.prev.pt`` when that one verifies, with a warning naming both; without it (export,
    evaluate: the user asked for the latest) the error stands.
    """
    ckpt_file = checkpoint_path(run_dir)
    previous = os.path.join(run_dir, PREVIOUS_NAME)
    try:
        ckpt, sha = _read_verified(ckpt_file, True)
        return ckpt, sha, ckpt_file
    except (UserError, FileNotFoundError) as e:
        if not fallback or not os.path.exists(previous) or read_digests(ckpt_file) is None:
            raise
        try:
            ckpt, sha = _read_verified(previous, True)
        except (UserError, FileNotFoundError):
            raise e from None
        logger.warning("%s; falling back to %s (step %d), the previous verified checkpoint", e, previous,
                       ckpt["step"])
        return ckpt, sha, previous


def model_from_checkpoint(ckpt: dict[str, Any], backend: str | None = None, source: str = "checkpoint"
                          ) -> LanguageModel:
    """The :class:`LanguageModel` a (validated) checkpoint describes, with its weights."""
    options = options_from_dict(ckpt["options"], source=f"{source} options")
    has_proj = any(k.endswith("W_proj") for k in ckpt["model"])
    model = LanguageModel(options, int(ckpt["vocab_size"]), backend=backend, has_projection=has_proj)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else first[0] if first else ""
        raise UserError(f"{source}: the weights do not fit the model its options describe ({detail[:200]})") from None
    return model
