"""Training checkpoints (``checkpoint.pt``): atomic finite-only writes, validated loads, stale temporaries.

A checkpoint is a dict saved with :func:`torch.save` and read back with ``weights_only=True`` (no pickled code
runs). Writing goes to ``checkpoint.pt.tmp-PID`` and is renamed when complete, so the previous checkpoint stays
until a new complete one exists; the temporaries of killed runs (their PID is gone) are removed when a run
starts or resumes. Nothing is written when a weight or an optimizer state holds NaN/Inf
(:class:`NonFiniteError` names the step and the tensor).
"""
from __future__ import annotations

import glob
import logging
import os
import pickle
from typing import Any, Iterable, Mapping

import torch

from ..atomic import atomic_path
from ..errors import MissingFileError, UserError
from ..options import options_from_dict
from .model import LanguageModel

__all__ = ["CHECKPOINT_NAME", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "NonFiniteError", "checkpoint_path",
           "load_checkpoint", "save_checkpoint_file", "model_from_checkpoint", "first_non_finite",
           "remove_stale_temporaries"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "elmo-fast-checkpoint"
CHECKPOINT_VERSION = 1

_EXPECTED = "an elmo-fast training checkpoint written by `elmo-fast train`"


class NonFiniteError(UserError, RuntimeError):
    """A weight or optimizer state holds NaN/Inf: nothing is saved or exported (CLI exit 2, one line)."""


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


def save_checkpoint_file(obj: dict[str, Any], path: str, check_finite: bool = True) -> None:
    """Write a checkpoint dict (format and version added) to ``path`` atomically.

    Raises:
        NonFiniteError: a model weight or optimizer state is not finite; ``path`` is left as it was.
    """
    bad = first_non_finite(checkpoint_tensors(obj)) if check_finite else None
    if bad is not None:
        raise NonFiniteError(f"step {obj.get('step')}: tensor '{bad}' holds NaN/Inf; checkpoint not written "
                             f"({path} keeps the last finite one). Lower --learning-rate or --clip-norm, or check "
                             f"the data")
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **obj}, tmp)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    return True


def remove_stale_temporaries(path: str) -> list[str]:
    """Remove ``PATH.tmp-PID`` files whose process no longer runs (left by a killed write); returns them.

    A temporary of a live process (another run writing now) is kept.
    """
    removed = []
    for tmp in glob.glob(glob.escape(path) + ".tmp-*"):
        suffix = tmp.rsplit(".tmp-", 1)[1]
        if not suffix.isdigit() or int(suffix) == os.getpid() or _pid_alive(int(suffix)):
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


def load_checkpoint(path: str) -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True`` and check its fields.

    Raises:
        FileNotFoundError: no such file.
        UserError: a directory, an empty or unreadable file, not a checkpoint, a field missing or of the wrong
            type (one line naming the file and the field).
    """
    if not os.path.exists(path):
        raise MissingFileError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory; expected {_EXPECTED}")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: empty file (0 bytes); expected {_EXPECTED}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
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
    return ckpt


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
