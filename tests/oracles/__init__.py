"""Oracles of the test suite: independent restatements of a computation that the tests compare elmo-fast with.

* :mod:`oracles.allennlp_style` -- ELMo with AllenNLP's module structure and floating-point operation order
  (the benchmarks time the same class as their speed baseline, ``benchmarks/baseline.py``).

``tests/conftest.py`` puts ``tests/`` on ``sys.path``, so tests import ``oracles.<name>``.
"""
