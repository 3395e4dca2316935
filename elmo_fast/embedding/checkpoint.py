"""Resume fingerprints: a completed chunk is reused only when everything that made it is unchanged.

A chunk file ``chunk-NNNNNN.h5`` in the work folder carries, as the hdf5 attribute ``fingerprint``, the JSON of
its *components*:

* ``input``: SHA-256 of the chunk's input lines, and ``lines``: its line range (keys are line numbers);
* ``model``: SHA-256 of the model files' contents (:func:`model_fingerprint`), and ``backend`` (the ops' backends and
  the fast path's precision and order);
* ``format`` (all/top/average), ``keys`` (line index or sentence text);
* ``stateful``; for stateful runs also ``batch_size`` and ``previous``: the fingerprint of the chunk before it
  in the same process's block (``"start"`` at a block start), so a change anywhere earlier invalidates every
  later chunk, whose carried LSTM state depends on it. A stateless chunk depends on its own lines only.

A stateful chunk file also stores the model's carried state after its last batch (group ``_state``), so a
resumed stateful run continues from exactly the state the uninterrupted run had: the output is identical.
When the model's state cannot be saved (a biLM-like module without ``states.h``/``states.c``), a stateful run
resumes only from the start of a block.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable

__all__ = ["model_fingerprint", "chunk_components", "fingerprint_of", "why_stale"]

_ORDER = ["input", "lines", "model", "backend", "format", "keys", "stateful", "batch_size", "previous"]
_WHY = {
    "input": "its input lines changed",
    "lines": "its line range changed (other chunk size or batch size)",
    "model": "the model files changed",
    "backend": "the backend or its arithmetic (precision, order) changed",
    "format": "the output format changed",
    "keys": "the key mode (--use-sentence-keys) changed",
    "stateful": "statefulness (--stateless) changed",
    "batch_size": "the batch size changed (stateful: batches decide the carried state)",
    "previous": "an earlier chunk changed (stateful: the carried state differs)",
}


def _hash_file(h: "hashlib._Hash", path: str) -> None:
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            h.update(block)


def model_fingerprint(files: Iterable[str] | None, module: Any = None) -> str:
    """SHA-256 over the model files' contents (in the given order); without files, over the module's tensors."""
    h = hashlib.sha256()
    files = list(files or [])
    if files:
        for path in files:
            h.update(os.path.basename(path).encode() + b"\0")
            if os.path.isdir(path):
                for root, _dirs, names in sorted(os.walk(path)):
                    for name in sorted(names):
                        h.update(os.path.relpath(os.path.join(root, name), path).encode() + b"\0")
                        _hash_file(h, os.path.join(root, name))
            else:
                _hash_file(h, path)
        return h.hexdigest()
    if module is None:
        raise ValueError("model_fingerprint: expected model files or a module")
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode() + b"\0" + str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    h.update(type(module).__name__.encode())
    return h.hexdigest()


def chunk_components(*, input_sha: str, first_line: int, n_lines: int, model: str, backend: str,
                     output_format: str, sentence_keys: bool, stateful: bool, batch_size: int,
                     previous: str | None) -> dict[str, Any]:
    """The fingerprint components of one chunk (see the module docstring)."""
    return {"input": input_sha, "lines": f"{first_line}+{n_lines}", "model": model, "backend": backend,
            "format": output_format, "keys": "sentence" if sentence_keys else "line", "stateful": bool(stateful),
            "batch_size": int(batch_size) if stateful else None,
            "previous": (previous or "start") if stateful else None}


def fingerprint_of(components: dict[str, Any]) -> str:
    """SHA-256 of the components' canonical JSON."""
    return hashlib.sha256(json.dumps(components, sort_keys=True).encode()).hexdigest()


def why_stale(stored: dict[str, Any] | None, wanted: dict[str, Any]) -> str | None:
    """None when ``stored`` matches ``wanted``; else the reason the chunk must be recomputed."""
    if stored is None:
        return "it has no readable fingerprint"
    for key in _ORDER:
        if stored.get(key) != wanted.get(key):
            return _WHY[key]
    if stored != wanted:
        return "its fingerprint differs"
    return None
