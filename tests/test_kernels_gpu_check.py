"""benchmarks/gpu_check.py (``make gpu-check``): without CUDA it fails at once with a clear message; its
--cpu-smoke mode runs every part (pytest parts, same-seed training of both backends, gpu_kernels.py) on tiny
shapes under the interpreter and writes the JSON + markdown report, so the device run has been exercised."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from triton_helpers import TRITON_MARKS  # noqa: E402

pytestmark = TRITON_MARKS
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_without_cuda_it_refuses_quickly(tmp_path):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "r")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "--cpu-smoke" in proc.stderr
    assert time.perf_counter() - t0 < 60
    assert not (tmp_path / "r" / "gpu_check.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="--cpu-smoke is the CPU stand-in for the device run")
def test_cpu_smoke_runs_every_part_and_writes_the_report(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ELMO_FAST_BACKEND"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--cpu-smoke"], capture_output=True,
                          text=True, timeout=900, env=env)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    assert list(parts) == ["tf32_reading", "kernel_suite", "backend_parity", "training_original",
                           "kernel_suite_ieee", "lstm_cuda_graphs", "gpu_kernels"]
    bad = {n: p for n, p in parts.items() if p["status"] != "ok"}
    assert not bad, json.dumps(bad)[-3000:]
    assert proc.returncode == 0
    assert parts["kernel_suite"]["passed"] > 0 and parts["kernel_suite"]["failed"] == 0
    train = parts["training_original"]
    assert len(train["triton_losses"]) == len(train["reference_losses"]) == 2
    assert train["max_rel_diff"] < 1e-3  # same seeds: the two backends agree step by step
    rows = parts["gpu_kernels"]["backward"]["rows"]
    assert {r["kernel"].split(" ")[0] for r in rows} >= {"char-CNN", "highway", "projection", "biLSTM", "sampled",
                                                          "full"}
    assert any(r["cudnn_ms"] for r in rows)  # the torch.nn.LSTM(proj_size=...) comparison ran
    # the interpreter's emulated tf32x3 reads the remainders by truncation, like the emulation assumes
    assert parts["tf32_reading"]["hand_matches"] == ["trunc"]
    graphs = parts["lstm_cuda_graphs"]
    assert graphs["forward"]["identical"] and graphs["forward_backward"]["identical"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "CPU SMOKE RUN" in md and "| training_original | ok |" in md
