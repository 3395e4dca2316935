"""The real Triton compiler on every launch the Triton backend makes (issue 11): no GPU needed.

Runs :mod:`elmo_fast.kernels.compile_check` in a subprocess (compiled kernels, not the interpreter) for
sm_90 and sm_80: the ``tiny``, ``small``, ``medium`` and ``original`` presets at inference (64 x 40) and
training (128 x 20, sampled softmax 8192 of 793,471 words, full softmax evaluation), plus the edge shapes
of :func:`elmo_fast.kernels.compile_check.edge_workloads`. Asserts: shared memory within the block limit
of each architecture, registers x threads within the register file, grid within limits, and no register
spills (ptxas -v) in any kernel the GPU path picks in the default fp32 mode. The tf32x3 mode (Triton
matmul instead of cuBLAS, three-pass TF32 dots) is compiled for sm_90 on the original preset.

Per-specialization results are cached in ``~/.cache/elmo-fast/compile-check`` (``ELMO_FAST_COMPILE_CACHE``):
a cold run compiles ~60 specializations per architecture (a few minutes on 2 cores), a warm one takes
seconds. The table is written to ``$ELMO_FAST_COMPILE_REPORT`` when set.
"""
import json
import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")
pytestmark = [pytest.mark.gpu_compile,
              pytest.mark.skipif(not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia",
                                                                 "bin", "ptxas")),
                                 reason="this triton build ships no NVIDIA ptxas (the compile check needs it)")]

PRESETS = ("tiny", "small", "medium", "original")


def _run(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    out = tmp_path / "report.json"
    md = os.environ.get("ELMO_FAST_COMPILE_REPORT") or str(tmp_path / "report.md")
    proc = subprocess.run([sys.executable, "-m", "elmo_fast.kernels.compile_check", *args, "--jobs", "2",
                           "--json", str(out), "--markdown", md], env=env, capture_output=True, text=True,
                          timeout=1200)
    assert out.exists(), proc.stderr[-4000:]
    return json.loads(out.read_text()), proc


def test_every_launch_compiles_for_sm80_and_sm90_within_limits_without_spills(tmp_path):
    report, proc = _run(tmp_path, "--arch", "90", "--arch", "80")
    rows = report["results"]
    over = [r for r in rows if r["problems"]]
    assert not over, "\n".join(f"{r['workload']} {r['kernel']} sm_{r['arch']}: {r['problems']}" for r in over)
    spilling = [r for r in rows if r["spills"] or r["spill_stores"] < 0]
    assert not spilling, "\n".join(f"{r['workload']} {r['kernel']} sm_{r['arch']}: {r['spill_stores']} B spilled"
                                   for r in spilling)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {r["tensor_cores"] for r in rows} == {"none"}  # fp32 parity mode: IEEE dots, FMA only
    # coverage: every preset at both workloads and every edge shape, on both architectures
    for arch in (80, 90):
        names = {r["workload"] for r in rows if r["arch"] == arch}
        for p in PRESETS:
            assert {f"{p}/inference 64x40", f"{p}/training 128x20"} <= names, (p, arch)
        assert sum(n.startswith("edge/") for n in names) >= 10, names
        kernels = {r["kernel"] for r in rows if r["arch"] == arch}
        assert {"_char_cnn_fwd", "_char_cnn_bwd_w", "_char_cnn_bwd_x", "_highway_fwd", "_cell_step", "_proj_step",
                "_persistent_fwd", "_cell_step_bwd", "_hidden_step_bwd", "_sampled_fwd", "_sampled_bwd_h",
                "_sampled_bwd_w", "_full_partial", "_colsum_kernel"} <= kernels, kernels
    # the original preset runs the step kernels (no persistent launch), the tiny one the persistent kernel
    orig = {r["kernel"] for r in rows if r["workload"].startswith("original/")}
    assert "_persistent_fwd" not in orig and "_cell_step" in orig
    assert "_persistent_fwd" in {r["kernel"] for r in rows if r["workload"].startswith("tiny/")}


def test_tf32x3_mode_compiles_for_sm90(tmp_path):
    report, proc = _run(tmp_path, "--arch", "90", "--presets", "original", "--no-edges", "--precision", "tf32x3")
    rows = report["results"]
    assert not [r for r in rows if r["problems"]], proc.stdout[-3000:]
    kernels = {r["kernel"] for r in rows}
    assert "_matmul_kernel" in kernels  # tensor-core modes keep the Triton matmul (fp32 goes to cuBLAS)
    assert all(r["constexprs"].get("PREC", 4) == 4 for r in rows)
    # three-pass TF32 really compiles to tensor-core instructions (the default fp32 mode is FMA-only)
    assert {r["tensor_cores"] for r in rows if r["kernel"] in ("_matmul_kernel", "_cell_step")} <= {"mma", "wgmma"}
