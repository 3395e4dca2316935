"""Peak RSS and tokens/s of ``elmo-fast embed`` at several input sizes (memory must not grow).

Generates whitespace-tokenized text of the requested sizes (random words from a 5,000-word vocabulary,
5-30 tokens per line, fixed seed), writes a tiny random model (the ``tiny`` preset: 2P = 32), and runs the
CLI in a child process for each size; the child's peak RSS comes from ``wait4`` (``ru_maxrss``) and the
wall time from the parent. Output files are deleted after each run (``--top`` keeps them smallest).

    .venv/bin/python benchmarks/embed_scale.py --sizes 10M 200M --modes stateless stateful --threads 1

This machine's numbers are in benchmarks/RESULTS.md (Corpus-scale embed).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def write_text(path: str, size: int, seed: int = 0) -> tuple[int, int]:
    """Write about ``size`` bytes of text; (lines, tokens)."""
    rng = np.random.default_rng(seed)
    vocab = ["".join(chr(97 + c) for c in rng.integers(0, 26, rng.integers(2, 10))) for _ in range(5000)]
    lines = tokens = written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            lengths = rng.integers(5, 31, 1000)
            words = rng.integers(0, len(vocab), int(lengths.sum()))
            pos, block = 0, []
            for n in lengths:
                block.append(" ".join(vocab[w] for w in words[pos:pos + n]))
                pos += n
            text = "\n".join(block) + "\n"
            f.write(text)
            written += len(text)
            lines += len(block)
            tokens += int(lengths.sum())
    return lines, tokens


def write_tiny_model(folder: str) -> tuple[str, str]:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from elmo_fast.options import PRESETS, options_from_dict
    from elmo_fast.weights import expected_shapes, write_weights
    opts = PRESETS["tiny"]
    rng = np.random.default_rng(0)
    weights = {name: rng.normal(0, 0.3, shape).astype(np.float32)
               for name, shape in expected_shapes(options_from_dict(opts)).items()}
    opt_path, w_path = os.path.join(folder, "options.json"), os.path.join(folder, "weights.hdf5")
    with open(opt_path, "w") as f:
        json.dump(opts, f)
    write_weights(w_path, weights)
    return opt_path, w_path


def _rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _phase(out: str) -> str:
    """What the embed is doing, from its files: ``chunks N`` (chunk files written so far) or ``merge``."""
    folder = os.path.dirname(out) or "."
    base = os.path.basename(out)
    if any(name.startswith(base + ".tmp-") for name in os.listdir(folder)):
        return "merge"
    work = out + ".embed-work"
    n = sum(1 for name in os.listdir(work) if name.endswith(".h5")) if os.path.isdir(work) else 0
    return f"chunks {n}"


def run_embed(src: str, out: str, opt: str, w: str, stateless: bool, threads: int, batch: int,
              extra: list[str], rss_log: str | None = None, every: float = 5.0) -> dict:
    cmd = [sys.executable, "-m", "elmo_fast.cli", "--log-level", "WARNING", "embed", src, out, "--top",
           "--options-file", opt, "--weight-file", w, "--batch-size", str(batch), "--quiet", "--overwrite",
           "--threads", str(threads)] + (["--stateless"] if stateless else []) + extra
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    if rss_log:  # RSS over time with the phase, to find where memory grows (one line per sample)
        with open(rss_log, "a") as log:
            log.write(f"# {' '.join(cmd)}\n")
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                rss = _rss_kb(proc.pid)
                if rss:
                    log.write(f"{time.perf_counter() - start:.0f}\t{rss / 1024:.1f}\t{_phase(out)}\n")
                    log.flush()
                time.sleep(every)
    else:
        _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    stderr = proc.stderr.read() if proc.stderr else ""
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise SystemExit(f"embed failed (exit {rc}): {stderr[-2000:]}\ncommand: {' '.join(cmd)}")
    return {"seconds": elapsed, "peak_rss_mb": usage.ru_maxrss / 1024, "command": " ".join(cmd)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["10M"], help="input sizes (bytes; K/M/G suffixes)")
    p.add_argument("--modes", nargs="+", choices=["stateless", "stateful"], default=["stateless", "stateful"])
    p.add_argument("--threads", type=int, default=1, help="torch threads of the embed process")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workdir", default=None, help="folder for the generated files (default: a temporary one)")
    p.add_argument("--rss-log", default=None,
                   help="append the embed's RSS every --every seconds (seconds, MB, phase: 'chunks N' or 'merge') here")
    p.add_argument("--every", type=float, default=5.0, help="sampling period of --rss-log, seconds")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more embed flags")
    args = p.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="embed_scale-")
    os.makedirs(work, exist_ok=True)
    opt, w = write_tiny_model(work)
    rows = []
    for size_text in args.sizes:
        size = parse_size(size_text)
        src = os.path.join(work, f"input-{size_text}.txt")
        lines, tokens = write_text(src, size)
        for mode in args.modes:
            out = os.path.join(work, f"out-{size_text}-{mode}.hdf5")
            res = run_embed(src, out, opt, w, mode == "stateless", args.threads, args.batch_size, args.extra,
                            args.rss_log, args.every)
            out_mb = os.path.getsize(out) / (1 << 20)
            os.remove(out)
            row = {"size": size_text, "bytes": os.path.getsize(src), "lines": lines, "tokens": tokens, "mode": mode,
                   "seconds": round(res["seconds"], 1), "tokens_per_s": round(tokens / res["seconds"]),
                   "peak_rss_mb": round(res["peak_rss_mb"], 1), "output_mb": round(out_mb, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        os.remove(src)
    print("\n| input | lines | tokens | mode | wall s | tokens/s | peak RSS MB | output MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['lines']} | {r['tokens']} | {r['mode']} | {r['seconds']} | {r['tokens_per_s']} | "
              f"{r['peak_rss_mb']} | {r['output_mb']} |")


if __name__ == "__main__":
    main()
