"""The speed baseline of the benchmarks: the AllenNLP-style ELMo (a per-time-step loop with AllenNLP's module
structure, the char-CNN on every padded position).

The implementation lives with the tests, which use it as their oracle for AllenNLP's operation order
(``tests/oracles/allennlp_style.py``): one copy, so the benchmarks time exactly the function the tests pin.
"""
from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if _TESTS not in sys.path:
    sys.path.append(_TESTS)  # appended: the tests' helper modules must not shadow anything else

from oracles.allennlp_style import AllenNlpStyleElmo as BaselineElmo  # noqa: E402

__all__ = ["BaselineElmo"]
