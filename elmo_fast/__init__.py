"""elmo-fast: a fast, AllenNLP-compatible ELMo engine.

Drop-in API: :func:`batch_to_ids`, :class:`Elmo`, :class:`ElmoEmbedder`, :class:`ScalarMix`, :class:`BiLM`.

The public names are imported on first use (PEP 562), not when the package is: ``elmo-fast --help`` and
``--version`` then answer without loading torch, which takes seconds on a busy machine. ``from elmo_fast import
ElmoEmbedder`` and ``elmo_fast.numerics`` work as with eager imports.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "CharacterMapper": ".chars", "batch_to_ids": ".chars",
    "ElmoEmbedder": ".embedder",
    "BiLM": ".nn.bilm", "add_sentence_boundaries": ".nn.bilm", "remove_sentence_boundaries": ".nn.bilm",
    "Elmo": ".nn.elmo", "ScalarMix": ".nn.scalar_mix",
    "full_softmax_loss": ".functional", "sampled_softmax_loss": ".functional",
    "log_uniform_sample": ".nn.softmax",
    "ElmoOptions": ".options", "load_options": ".options", "preset": ".options",
    "retain_freed_memory": ".runtime",
    "read_vocab": ".vocab", "write_vocab": ".vocab",
    "read_softmax_weights": ".weights", "read_weights": ".weights", "write_softmax_weights": ".weights",
    "write_weights": ".weights",
}

__all__ = ["batch_to_ids", "CharacterMapper", "Elmo", "ElmoEmbedder", "ScalarMix", "BiLM", "ElmoOptions",
           "load_options", "preset", "read_weights", "write_weights", "read_softmax_weights",
           "write_softmax_weights", "read_vocab", "write_vocab", "add_sentence_boundaries",
           "remove_sentence_boundaries", "sampled_softmax_loss", "full_softmax_loss", "log_uniform_sample",
           "retain_freed_memory"]


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use; any other name is tried as a submodule, as the
    eager imports used to make ``elmo_fast.numerics`` and friends reachable after ``import elmo_fast``."""
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
