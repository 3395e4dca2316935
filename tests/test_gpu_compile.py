"""The real Triton compiler on every launch the Triton backend makes: no GPU needed.

Runs :mod:`tools.compile_check` (a development tool of the checkout, not installed) in a subprocess (compiled
kernels, not the interpreter) for sm_90 and sm_80: the ``tiny``, ``small``, ``medium`` and ``original`` presets at
inference (64 x 40) and training (128 x 20, sampled softmax 8192 of 793,471 words, full softmax evaluation), plus
the edge shapes of :func:`tools.compile_check.edge_workloads`. Asserts: shared memory within the block limit of each
architecture, registers x threads within the register file, grid within limits, no register spills (ptxas -v) in any
kernel the GPU path picks in the default mode (three-pass TF32, ``tf32x3``), and tensor-core instructions (``wgmma``
/ ``mma.sync``) in every kernel with a product. The IEEE mode (FMA-only dots, plain matmuls on cuBLAS) is compiled
too, for the same shapes: no tensor-core instruction, no spills.

Per-specialization results are cached in ``~/.cache/elmo-fast/compile-check`` (``ELMO_FAST_COMPILE_CACHE``):
a cold run compiles ~60 specializations per architecture (a few minutes on 2 cores), a warm one takes
seconds. The table is written to ``$ELMO_FAST_COMPILE_REPORT`` when set.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import triton_helpers  # noqa: F401  (sets TRITON_INTERPRET before triton is first imported: the kernel tests that
# may run later in this process need the interpreter; the compile check runs in a subprocess without it)

triton = pytest.importorskip("triton")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tools/ is a folder of the checkout, not installed
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
NEEDS_PTXAS = [pytest.mark.gpu_compile,
               pytest.mark.skipif(not os.path.exists(PTXAS),
                                  reason="this triton build ships no NVIDIA ptxas (the compile check needs it)")]

PRESETS = ("tiny", "small", "medium", "original")


def _run(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    out = tmp_path / "report.json"
    md = os.environ.get("ELMO_FAST_COMPILE_REPORT") or str(tmp_path / "report.md")
    proc = subprocess.run([sys.executable, "-m", "tools.compile_check", *args, "--jobs", "2",
                           "--json", str(out), "--markdown", md], env=env, capture_output=True, text=True,
                          timeout=1200, cwd=REPO)
    assert out.exists(), proc.stderr[-4000:]
    return json.loads(out.read_text()), proc


#: kernels whose launches contain a product (tl.dot): in the default mode each must use tensor cores
DOT_KERNELS = {"_char_cnn_fwd", "_char_cnn_bwd_x", "_highway_fwd", "_cell_step", "_proj_step", "_persistent_fwd",
               "_cell_step_bwd", "_hidden_step_bwd", "_sampled_fwd", "_sampled_bwd_h", "_sampled_bwd_w",
               "_full_partial", "_matmul_kernel"}


def _check_limits_and_spills(report, proc):
    rows = report["results"]
    over = [r for r in rows if r["problems"]]
    assert not over, "\n".join(f"{r['workload']} {r['kernel']} sm_{r['arch']}: {r['problems']}" for r in over)
    spilling = [r for r in rows if r["spills"] or r["spill_stores"] < 0]
    assert not spilling, "\n".join(f"{r['workload']} {r['kernel']} sm_{r['arch']}: {r['spill_stores']} B spilled"
                                   for r in spilling)
    assert proc.returncode == 0, proc.stderr[-2000:]
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
    # the original preset runs the step kernels (no persistent launch); the tiny one the persistent kernel in
    # the IEEE mode only (three-pass TF32 spills there: kernels/lstm_cell.persistent_fits); forced, it compiles
    orig = {r["kernel"] for r in rows if r["workload"].startswith("original/")}
    assert "_persistent_fwd" not in orig and "_cell_step" in orig
    tiny = {r["kernel"] for r in rows if r["workload"].startswith("tiny/")}
    assert ("_persistent_fwd" in tiny) == (report["precision"] == "ieee"), tiny
    assert "_persistent_fwd" in {r["kernel"] for r in rows if r["workload"].startswith("edge/lstm persistent forced")}
    return rows


@NEEDS_PTXAS[0]
@NEEDS_PTXAS[1]
def test_every_launch_compiles_for_sm80_and_sm90_within_limits_without_spills(tmp_path):
    """The default mode (tf32x3): every launch of every preset and edge shape, sm_90 and sm_80."""
    report, proc = _run(tmp_path, "--arch", "90", "--arch", "80")
    assert report["precision"] == "tf32x3"
    rows = _check_limits_and_spills(report, proc)
    assert all(r["constexprs"].get("PREC", 4) == 4 for r in rows)
    # three-pass TF32 really compiles to tensor-core instructions: wgmma on sm_90 where a tile has 64 rows,
    # mma.sync on sm_80 (and on sm_90 for tiles below a warpgroup's M)
    no_tc = {(r["kernel"], r["arch"]) for r in rows if r["kernel"] in DOT_KERNELS and r["tensor_cores"] == "none"}
    assert not no_tc, sorted(no_tc)
    assert {r["tensor_cores"] for r in rows if r["arch"] == 80} <= {"mma", "none"}
    assert {r["tensor_cores"] for r in rows if r["arch"] == 90 and r["kernel"] in ("_cell_step", "_matmul_kernel")} \
        == {"wgmma"}
    assert "_matmul_kernel" in {r["kernel"] for r in rows}  # plain matmuls stay in Triton (cuBLAS has no tf32x3)


@NEEDS_PTXAS[0]
@NEEDS_PTXAS[1]
def test_ieee_mode_compiles_without_tensor_cores_and_without_spills(tmp_path):
    """``ELMO_FAST_TRITON_PRECISION=ieee`` stays selectable: the same shapes compile, FMA only, no spills,
    plain matmuls on cuBLAS (no Triton matmul launch)."""
    report, proc = _run(tmp_path, "--arch", "90", "--arch", "80", "--precision", "ieee")
    rows = _check_limits_and_spills(report, proc)
    assert {r["tensor_cores"] for r in rows} == {"none"}
    assert all(r["constexprs"].get("PREC", 0) == 0 for r in rows)
    assert "_matmul_kernel" not in {r["kernel"] for r in rows}


# ------------------------------------------------------------------------------------ a busy machine
def _flaky(failures: int, error: OSError):
    calls = []

    def fn(x):
        calls.append(x)
        if len(calls) <= failures:
            raise error
        return x * 2
    return fn, calls


def test_a_refused_spawn_is_retried_with_a_doubling_bounded_wait():
    from tools import compile_check as cc
    fn, calls = _flaky(3, BlockingIOError(11, "Resource temporarily unavailable", "ptxas"))
    waits = []
    assert cc.retry_spawn(fn, 21, sleep=waits.append) == 42
    assert len(calls) == 4
    assert waits == [cc.SPAWN_FIRST_WAIT_S * 2 ** k for k in range(3)]
    fn, calls = _flaky(20, BlockingIOError(11, "Resource temporarily unavailable", "ptxas"))
    waits = []
    with pytest.raises(BlockingIOError):
        cc.retry_spawn(fn, 1, attempts=10, sleep=waits.append)
    assert len(calls) == 10 and len(waits) == 9 and max(waits) == cc.SPAWN_MAX_WAIT_S


def test_other_errors_are_not_retried():
    from tools import compile_check as cc
    fn, calls = _flaky(1, FileNotFoundError(2, "No such file or directory", "ptxas"))
    with pytest.raises(FileNotFoundError):
        cc.retry_spawn(fn, 1, sleep=lambda s: None)
    assert len(calls) == 1
