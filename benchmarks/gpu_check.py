"""One-shot device check of the Triton backend: run it first whenever a CUDA GPU is available.

    make gpu-check                       # = python benchmarks/gpu_check.py --out gpu-check-report
    python benchmarks/gpu_check.py --out DIR [--budget-s 480] [--skip PART ...]
    python benchmarks/gpu_check.py --out DIR --cpu-smoke   # no GPU: every part on tiny shapes, interpreter

Parts, in order, each with its own time limit inside the overall budget (default 480 s, compilation
included; a part that does not fit is reported as skipped, never silently dropped):

1. ``kernel_suite``: ``tests/test_kernels_*.py`` compiled on the GPU (no interpreter): every kernel, GPU
   tiles, vs the float32/float64 references.
2. ``backend_parity``: ``tests/test_backend.py``: BiLM/ElmoEmbedder parity with the reference, the shared
   TensorFlow fixtures through the Triton backend, and a short training run tracking the reference.
3. ``training_original``: 50 training steps of the ``original`` preset (128 x 20, 8192 sampled negatives)
   on the Triton backend and on the reference backend, same seeds: per-step losses and their differences.
4. ``kernel_suite_ieee``: the kernel suite again with ``ELMO_FAST_TRITON_PRECISION=ieee`` (the default is
   three-pass TF32, ``tf32x3``, chosen by emulation: ``benchmarks/tf32_emulation.py``; parts 1-3 check it on
   the device, this part the IEEE mode that stays selectable).
5. ``lstm_cuda_graphs``: the ``original`` biLSTM layer (128 x 20, both directions), forward and forward +
   backward, with the step loops replayed from CUDA graphs and launched eagerly
   (``ELMO_FAST_CUDA_GRAPHS``): outputs and gradients must be bitwise identical; times per layer and per step.
   ``--no-cuda-graphs`` skips this part and runs every other part with capture off.
6. ``gpu_kernels``: ``benchmarks/gpu_kernels.py`` (kernels vs the reference and cuDNN
   ``torch.nn.LSTM(proj_size=...)``), original preset, forward and forward+backward.

Part 0, ``tf32_reading``, comes first (a second): it checks the one assumption the no-GPU measurement of
tf32x3 rests on (``tools/emulation.py``): that the tensor core reads the unconverted remainders of the
three-pass products by their TF32 bits (truncation). On the hand case of ``tests/test_tf32_emulation.py``
truncation, rounding and exact remainders give three different exact results; a random product is compared
with each emulation variant too.

Writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` (one report), also after a failing part. Exit
status: 0 when every part that ran passed, 1 otherwise, 2 when there is no CUDA device (without
``--cpu-smoke``: that mode only checks this script, its times and results say nothing about a GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tools/ (the TF32 emulation) is a folder of the checkout, not installed
PARTS = ("tf32_reading", "kernel_suite", "backend_parity", "training_original", "kernel_suite_ieee",
         "lstm_cuda_graphs", "gpu_kernels")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory for gpu_check.json and gpu_check.md (created)")
    p.add_argument("--budget-s", type=float, default=480.0, help="overall time budget in seconds (default 480)")
    p.add_argument("--skip", action="append", default=[], choices=PARTS, help="skip a part (repeatable)")
    p.add_argument("--steps", type=int, default=50, help="training steps of the original-preset run (default 50)")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="launch the LSTM step loops eagerly everywhere (ELMO_FAST_CUDA_GRAPHS=0); "
                        "skips lstm_cuda_graphs")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="no GPU: run every part on tiny shapes under the Triton interpreter (checks the script)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- parts
def _pytest(targets: list[str], timeout: float, extra_env: dict[str, str] | None = None,
            select: str | None = None) -> dict[str, Any]:
    """Run pytest in a subprocess; counts and failing test ids from its JUnit XML."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = os.path.join(tmp, "junit.xml")
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", f"--junitxml={xml}",
               "-m", "not gpu_compile", *targets]
        if select:
            cmd += ["-k", select]
        env = dict(os.environ, **(extra_env or {}))
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "detail": f"pytest exceeded {timeout:.0f} s"}
        counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
        failing = []
        if os.path.exists(xml):
            for case in ET.parse(xml).getroot().iter("testcase"):
                tid = f"{case.get('classname')}::{case.get('name')}"
                if case.find("failure") is not None:
                    counts["failed"] += 1
                    failing.append(tid)
                elif case.find("error") is not None:
                    counts["errors"] += 1
                    failing.append(tid)
                elif case.find("skipped") is not None:
                    counts["skipped"] += 1
                else:
                    counts["passed"] += 1
    ok = proc.returncode == 0 and counts["passed"] > 0
    return {"status": "ok" if ok else "failed", **counts, "failing": failing,
            "tail": "" if ok else proc.stdout[-3000:] + proc.stderr[-2000:]}


def _training(steps: int, smoke: bool) -> dict[str, Any]:
    """Same-seed training on the triton and reference backends; per-step losses and relative differences."""
    import numpy as np
    import torch

    from elmo_fast.data import TrainingBatches, Vocabulary
    from elmo_fast.options import preset
    from elmo_fast.train import LanguageModel, TrainConfig, Trainer, init_weights

    name, batch, unroll, negatives, n_words = ("tiny", 2, 4, 8, 30) if smoke else ("original", 128, 20, 8192, 20000)
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(n_words)]
    # Zipf-like word frequencies, as a real corpus (the sampler is log-uniform over frequency ranks)
    p = 1.0 / np.arange(1, n_words + 1)
    p /= p.sum()
    dev = "cpu" if smoke else "cuda"
    out: dict[str, Any] = {"preset": name, "batch": batch, "unroll": unroll, "negatives": negatives,
                           "vocab": n_words, "steps": steps}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        n_lines = max(50, steps * batch * unroll // 8)
        corpus.write_text("\n".join(" ".join(rng.choice(words, size=int(rng.integers(3, 15)), p=p))
                                    for _ in range(n_lines)) + "\n")
        vocab = Vocabulary.build([str(corpus)])
        losses: dict[str, list[float]] = {}
        for backend in ("reference", "triton"):
            model = LanguageModel(preset(name), len(vocab), backend=backend)
            init_weights(model.bilm, model.softmax_weight, model.softmax_bias, torch.Generator().manual_seed(0))
            model.to(dev)
            trainer = Trainer(model, TrainConfig(batch_size=batch, unroll_steps=unroll,
                                                 n_negative_samples=negatives, seed=0))
            data = TrainingBatches([str(corpus)], vocab, batch, unroll, seed=0)
            torch.manual_seed(0)
            t0 = time.perf_counter()
            losses[backend] = [float(trainer.step(data.next_batch()).loss) for _ in range(steps)]
            if dev == "cuda":
                torch.cuda.synchronize()
            out[f"{backend}_s"] = time.perf_counter() - t0
            del model, trainer
    ref, tri = np.array(losses["reference"]), np.array(losses["triton"])
    rel = np.abs(tri - ref) / np.maximum(np.abs(ref), 1e-12)
    out.update(reference_losses=ref.tolist(), triton_losses=tri.tolist(), max_rel_diff=float(rel.max()),
               max_rel_diff_first10=float(rel[:10].max()), final_rel_diff=float(rel[-1]))
    # float32 summation-order differences grow through Adagrad but must stay small; both must train
    ok = rel[:10].max() <= 1e-3 and rel.max() <= 2e-2 and np.isfinite(tri).all()
    out["status"] = "ok" if ok else "failed"
    return out


def _tf32_reading(smoke: bool) -> dict[str, Any]:
    """The compiled tf32x3 matmul (the interpreter's emulated one in the smoke run) on the hand case and on a
    random product, against the PyTorch emulation with truncated / rounded / exact remainders."""
    import torch

    from elmo_fast.kernels.common import matmul
    from tools.emulation import product

    dev = "cpu" if smoke else "cuda"
    code = 5 if smoke else 4
    a0, b0 = 1 + 2 ** -11 + 2 ** -20 + 2 ** -23, 1 + 2 ** -12
    # one nonzero term per output: the sum adds exact zeros only, so no summation order (or FMA) enters the value
    a_hand = torch.zeros(16, 16, device=dev)
    a_hand[:, 3] = a0
    b_hand = torch.zeros(16, 16, device=dev)
    b_hand[3, :] = b0
    hand = float(matmul(a_hand, b_hand, prec=code)[0, 0])
    expected = {"trunc": 1 + 3078 * 2 ** -22, "rna": 1 + 3077 * 2 ** -22, "exact": 1 + 3077.5 * 2 ** -22}
    g = torch.Generator().manual_seed(0)
    a = torch.randn(256, 512, generator=g).to(dev)
    b = torch.randn(512, 256, generator=g).to(dev)
    got = matmul(a, b, prec=code).double().cpu()
    exact = (a.double() @ b.double()).cpu()
    diffs = {read: float((got - product(torch.mm, a, b, "tf32x3", read).double().cpu()).abs().max())
             for read in ("trunc", "rna", "exact")}
    matched = [k for k, v in expected.items() if v == hand]
    out = {"hand_case": hand, "hand_expected": expected, "hand_matches": matched,
           "random_max_diff_to_emulation": diffs, "random_max_err_vs_float64": float((got - exact).abs().max()),
           "random_max_err_ieee_vs_float64": float(((a @ b).double().cpu() - exact).abs().max())}
    out["status"] = "ok" if matched == ["trunc"] else "failed"
    if out["status"] != "ok":
        out["detail"] = (f"the tensor core's reading of the remainders is not truncation (hand case {hand!r}, "
                         f"matches {matched}): rerun benchmarks/tf32_emulation.py with that reading")
    return out


def _lstm_graphs(smoke: bool, repeats: int = 10) -> dict[str, Any]:
    """The biLSTM layer with the step loops from CUDA graphs vs eager launches: identical results, times."""
    import torch

    from elmo_fast.kernels import launch as launch_mod
    from elmo_fast.kernels.lstm_cell import lstm_bidirectional_layer
    from elmo_fast.options import preset

    name, B, T = ("tiny", 3, 4) if smoke else ("original", 128, 20)
    o = preset(name).lstm
    P, C = o.projection_dim, o.dim
    dev = "cpu" if smoke else "cuda"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, P, generator=g).to(dev).requires_grad_()
    W0 = (torch.randn(2, 2 * P, 4 * C, generator=g) * (2 * P) ** -0.5).to(dev).requires_grad_()
    bias = torch.zeros(2, 4 * C, device=dev, requires_grad=True)
    WP = (torch.randn(2, C, P, generator=g) * C ** -0.5).to(dev).requires_grad_()
    h0, c0 = torch.zeros(2, B, P, device=dev), torch.zeros(2, B, C, device=dev)
    lengths = torch.tensor([T - (i % 3) for i in range(B)], device=dev)

    def layer(backward: bool):
        with torch.set_grad_enabled(backward):
            y, h, c = lstm_bidirectional_layer(x.unsqueeze(0).expand(2, B, T, P), W0, bias, WP, h0, c0, lengths,
                                               o.cell_clip, o.proj_clip, False, persistent=False)
            if not backward:
                return [y, h, c]
            return [y, h, c] + list(torch.autograd.grad(y.sum(), [x, W0, bias, WP]))

    def timed(backward: bool) -> tuple[list, float]:
        out = layer(backward)  # warm-up: compile; with graphs on, the second call captures
        out = layer(backward)
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            out = layer(backward)
        if dev == "cuda":
            torch.cuda.synchronize()
        return [t.detach().cpu() for t in out], 1e3 * (time.perf_counter() - t0) / repeats

    res: dict[str, Any] = {"preset": name, "batch": B, "steps": T, "repeats": repeats}
    saved = os.environ.get(launch_mod.GRAPHS_ENV)
    same = True
    try:
        for backward in (False, True):
            mode = "forward_backward" if backward else "forward"
            os.environ[launch_mod.GRAPHS_ENV] = "0"
            eager, t_eager = timed(backward)
            os.environ[launch_mod.GRAPHS_ENV] = "1"
            before = dict(launch_mod.GRAPHS.stats)
            graphs, t_graphs = timed(backward)
            stats = {k: launch_mod.GRAPHS.stats[k] - before[k] for k in before}
            identical = all(torch.equal(a, b) for a, b in zip(eager, graphs))
            same &= identical
            res[mode] = {"eager_ms": t_eager, "graphs_ms": t_graphs, "eager_ms_per_step": t_eager / T,
                         "graphs_ms_per_step": t_graphs / T, "identical": identical, "graph_stats": stats}
            if not smoke and stats["replayed"] == 0:
                same = False
                res[mode]["detail"] = "no loop was replayed from a graph (addresses changed between calls?)"
    finally:
        if saved is None:
            os.environ.pop(launch_mod.GRAPHS_ENV, None)
        else:
            os.environ[launch_mod.GRAPHS_ENV] = saved
    res["status"] = "ok" if same else "failed"
    return res


def _gpu_kernels(timeout: float, smoke: bool) -> dict[str, Any]:
    results = {}
    for mode in ("backward",) if smoke else ("forward", "backward"):  # smoke: the backward mode runs both
        with tempfile.TemporaryDirectory() as tmp:
            js = os.path.join(tmp, "k.json")
            cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_kernels.py"), "--json", js]
            cmd += ["--smoke"] if smoke else ["--skip-reference-lstm", "--repeats", "10"]
            if mode == "backward":
                cmd.append("--backward")
            try:
                proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout / 2)
            except subprocess.TimeoutExpired:
                results[mode] = {"status": "timeout"}
                continue
            if proc.returncode != 0 or not os.path.exists(js):
                results[mode] = {"status": "failed", "tail": proc.stdout[-2000:] + proc.stderr[-2000:]}
                continue
            with open(js) as f:
                results[mode] = dict(json.load(f), status="ok")
    status = "ok" if all(r.get("status") == "ok" for r in results.values()) else "failed"
    return {"status": status, **results}


# ---------------------------------------------------------------------------------------------- report
def _markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"# gpu-check report ({'CPU SMOKE RUN: says nothing about a GPU' if report['cpu_smoke'] else 'device'})",
             "", f"- device: {env.get('device')}; torch {env.get('torch')}; triton {env.get('triton')}; "
             f"python {env.get('python')}; kernel precision {env.get('precision')}; CUDA graphs "
             f"{'on' if env.get('cuda_graphs') else 'off'}",
             f"- total: {report['total_s']:.0f} s of a {report['budget_s']:.0f} s budget",
             "", "| part | status | time (s) | summary |", "|---|---|---|---|"]
    for name, part in report["parts"].items():
        summary = ""
        if "passed" in part:
            summary = (f"{part['passed']} passed, {part['failed']} failed, {part['errors']} errors, "
                       f"{part['skipped']} skipped" + (f"; failing: {', '.join(part['failing'][:5])}"
                                                       if part.get("failing") else ""))
        elif name == "training_original" and "max_rel_diff" in part:
            summary = (f"{part['preset']} {part['batch']}x{part['unroll']}, {part['steps']} steps: max rel. loss diff "
                       f"{part['max_rel_diff']:.2e} (first 10: {part['max_rel_diff_first10']:.2e}); reference "
                       f"{part.get('reference_s', 0):.1f} s, triton {part.get('triton_s', 0):.1f} s")
        elif name == "tf32_reading" and "hand_case" in part:
            summary = (f"hand case {part['hand_case']!r} matches {part['hand_matches']}; random product, max diff to "
                       f"the emulation: " + ", ".join(f"{k} {v:.2e}" for k, v in
                                                      part["random_max_diff_to_emulation"].items()))
        elif name == "lstm_cuda_graphs" and "forward" in part:
            summary = "; ".join(
                f"{m}: eager {part[m]['eager_ms']:.2f} ms, graphs {part[m]['graphs_ms']:.2f} ms "
                f"({part[m]['graphs_ms_per_step']:.3f} ms/step), identical {part[m]['identical']}"
                for m in ("forward", "forward_backward") if m in part)
        elif part.get("detail"):
            summary = part["detail"]
        lines.append(f"| {name} | {part['status']} | {part.get('seconds', 0):.0f} | {summary} |")
    for mode in ("forward", "backward"):
        k = report["parts"].get("gpu_kernels", {}).get(mode)
        if k and k.get("rows"):
            lines += ["", f"## gpu_kernels ({mode}; {k['device']}; preset {k['preset']}, {k['batch']} x {k['steps']}, "
                          f"precision {k['precision']})", "",
                      "| kernel | reference ms | triton ms | cuDNN ms | floor ms | bound |",
                      "|---|---|---|---|---|---|"]
            fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            for r in k["rows"]:
                lines.append(f"| {r['kernel']} | {fmt(r['reference_ms'])} | {fmt(r['triton_ms'])} | "
                             f"{fmt(r['cudnn_ms'])} | {fmt(r['floor_ms'])} | {r['bound']} |")
    errors = [(n, p["error"]) for n, p in report["parts"].items() if p.get("error")]
    for n, e in errors:
        lines += ["", f"## {n}: error", "", "```", e[-3000:], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    smoke = args.cpu_smoke
    if smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported, here and in the subprocesses
    if args.no_cuda_graphs:
        os.environ["ELMO_FAST_CUDA_GRAPHS"] = "0"  # here and in the subprocesses
        args.skip.append("lstm_cuda_graphs")
    import torch
    if not smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); this check needs a GPU. "
              "Use --cpu-smoke to exercise the script itself on CPU.", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    env = {"torch": torch.__version__, "triton": triton_version, "python": platform.python_version(),
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not smoke else "CPU (smoke)",
           "capability": list(torch.cuda.get_device_capability()) if torch.cuda.is_available() and not smoke else None}
    from elmo_fast.kernels.common import precision
    env["precision"] = precision()
    env["cuda_graphs"] = not args.no_cuda_graphs
    report: dict[str, Any] = {"cpu_smoke": smoke, "budget_s": args.budget_s, "environment": env, "parts": {}}
    kernel_tests = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_kernels_*.py")
                          if p.name != "test_kernels_gpu_check.py")  # (this script's own CPU test)
    left = lambda: args.budget_s - (time.perf_counter() - t_start)  # noqa: E731
    # (name, share of the remaining budget it may use, minimum seconds to start it, callable)
    plan: list[tuple[str, float, float, Callable[[float], dict[str, Any]]]] = [
        ("tf32_reading", 0.1, 10, lambda t: _tf32_reading(smoke)),
        ("kernel_suite", 0.35, 30, lambda t: _pytest(
            ["tests/test_kernels_launch.py"] if smoke else kernel_tests, t)),
        ("backend_parity", 0.35, 30, lambda t: _pytest(
            ["tests/test_backend.py"], t, select="public" if smoke else None)),
        ("training_original", 0.5, 60, lambda t: _training(2 if smoke else args.steps, smoke)),
        ("kernel_suite_ieee", 0.5, 30, lambda t: _pytest(
            ["tests/test_kernels_launch.py"] if smoke else kernel_tests, t,
            {"ELMO_FAST_TRITON_PRECISION": "ieee"})),
        ("lstm_cuda_graphs", 0.3, 20, lambda t: _lstm_graphs(smoke, repeats=1 if smoke else 10)),
        ("gpu_kernels", 1.0, 30, lambda t: _gpu_kernels(t, smoke)),
    ]
    for name, share, minimum, fn in plan:
        if name in args.skip:
            report["parts"][name] = {"status": "skipped", "detail": "--skip"}
            continue
        remaining = left()
        if remaining < minimum and not smoke:
            report["parts"][name] = {"status": "skipped", "detail": f"budget: {remaining:.0f} s left"}
            continue
        t0 = time.perf_counter()
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        try:
            part = fn(max(minimum, share * remaining))
        except Exception as e:  # report and go on with the other parts
            part = {"status": "error", "error": "".join(traceback.format_exception(type(e), e, e.__traceback__))}
        part["seconds"] = time.perf_counter() - t0
        report["parts"][name] = part
        print(f"gpu_check: {name}: {part['status']} ({part['seconds']:.0f} s)", file=sys.stderr, flush=True)
    report["total_s"] = time.perf_counter() - t_start
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (out_dir / "gpu_check.md").write_text(_markdown(report))
    print(_markdown(report))
    failed = [n for n, p in report["parts"].items() if p["status"] not in ("ok", "skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
