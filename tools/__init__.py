"""Development tools of the Triton backend, run from a checkout and never installed with ``elmo_fast``.

* :mod:`tools.compile_check` -- compiles every launch of the Triton backend with the real compiler for sm_80 and
  sm_90 on a CPU and checks shared memory, registers, spills and tensor-core use
  (``python -m tools.compile_check`` from the repository root; ``tests/test_gpu_compile.py``).
* :mod:`tools.emulation` -- the kernels' TF32 product precisions emulated in PyTorch
  (``tests/test_tf32_emulation.py``, ``benchmarks/tf32_emulation.py``, ``benchmarks/gpu_check.py``).

Tests and benchmarks import them with the repository root on ``sys.path`` (``python -m pytest`` from the root
puts it there; the scripts under ``benchmarks/`` add it themselves).
"""
