"""Speed under contention: torch's default threads vs ``--threads 1`` vs the automatic governor, idle and loaded.

Starts its own competing load (one CPU-bound busy-loop process per core, stopped at the end) and runs each
workload in a fresh child process per thread policy, so nothing carries over between rows::

    .venv/bin/python benchmarks/contention.py            # markdown table on stdout
    .venv/bin/python benchmarks/contention.py --seconds 4 --workloads train-tiny

Policies: ``all-cores`` = ``torch.set_num_threads(cpus)`` (torch's default, the project's old default);
``one`` = ``--threads 1``; ``auto`` = :func:`elmo_fast.runtime.configure_threads` (the commands' default now),
ticked every step/batch as the commands do. Workloads: ``train-tiny`` (Trainer step, tiny preset, 32 x 20,
1,024 negatives) and ``embed-small`` (BiLM inference, small preset, 32 sentences of ~20 tokens, stateless).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
sys.path.insert(0, {repo!r})
import numpy as np, torch
policy, workload, seconds, cpus = {policy!r}, {workload!r}, {seconds!r}, {cpus!r}
from elmo_fast.runtime import configure_threads, retain_freed_memory, thread_tick
retain_freed_memory()
if policy == "all-cores":
    torch.set_num_threads(cpus); tick = lambda: None
elif policy == "one":
    torch.set_num_threads(1); tick = lambda: None
else:
    configure_threads(None); tick = thread_tick
from benchmarks.run import VOCAB, _Batch, make_sentences, make_words, random_model
rng = np.random.default_rng(7)
if workload == "train-tiny":
    from elmo_fast.data import Batch
    from elmo_fast.options import preset
    from elmo_fast.train import LanguageModel, TrainConfig, Trainer
    rows, steps = 32, 20
    b = _Batch(rows, steps, make_words(VOCAB, rng), rng)
    data = Batch(b.token_chars, b.fw_inputs, b.bw_inputs, b.fw_targets, b.bw_targets)
    torch.manual_seed(0)
    trainer = Trainer(LanguageModel(preset("tiny"), VOCAB), TrainConfig(batch_size=rows, unroll_steps=steps,
                                                                        n_negative_samples=1024))
    work, tokens = (lambda: trainer.step(data)), rows * steps
else:
    from elmo_fast.chars import batch_to_ids
    model = random_model("small", "fast").eval()
    model.stateful = False
    sents = make_sentences(32, seed=1)
    ids = batch_to_ids(sents)
    tokens = sum(len(s) for s in sents)
    def work():
        with torch.no_grad():
            model(ids)
for _ in range(2):
    work()
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    work(); tick(); n += 1
dt = time.perf_counter() - t0
print(json.dumps({{"tokens_per_s": n * tokens / dt, "threads_at_end": torch.get_num_threads(), "steps": n}}))
"""


def _busy() -> None:  # a CPU-bound competitor
    while True:
        pass


def run_child(policy: str, workload: str, seconds: float, cpus: int) -> dict:
    code = CHILD.format(repo=str(REPO), policy=policy, workload=workload, seconds=seconds, cpus=cpus)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                              "ELMO_FAST_THREADS", "ELMO_FAST_BACKEND")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{policy}/{workload} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per row (default 6)")
    ap.add_argument("--workloads", nargs="+", default=["train-tiny", "embed-small"],
                    choices=["train-tiny", "embed-small"], help="workloads to time (default both)")
    ap.add_argument("--competitors", type=int, default=None,
                    help="busy-loop processes in the loaded rows (default: one per core)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed children per cell; the policies take turns (rotated order each round) so that a "
                         "drift of the machine does not favour one column; the table shows the median (default 3)")
    ap.add_argument("--json", default=None, help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    competitors = args.competitors if args.competitors is not None else cpus
    load0 = os.getloadavg()[0]
    rows = []
    for loaded in (False, True):
        procs = [mp.Process(target=_busy, daemon=True) for _ in range(competitors if loaded else 0)]
        for p in procs:
            p.start()
        try:
            time.sleep(1.0 if loaded else 0.0)
            policies = ["all-cores", "one", "auto"]
            for workload in args.workloads:
                for rnd in range(max(1, args.repeats)):
                    for policy in policies[rnd % 3:] + policies[:rnd % 3]:
                        r = run_child(policy, workload, args.seconds, cpus)
                        rows.append({"load": f"{competitors} busy loops" if loaded else "idle", "workload": workload,
                                     "policy": policy, "round": rnd, **r})
                        print(f"# {rows[-1]}", file=sys.stderr, flush=True)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.join()
    print(f"Contention benchmark: {cpus} CPUs, load average at start {load0:.2f}, {args.seconds:.0f} s per child, "
          f"{args.repeats} children per cell (policies in turn); tokens/s, median (min-max)\n")
    print("| load | workload | all cores (torch default) | --threads 1 | auto (default) | auto / --threads 1 | "
          "auto threads at end |")
    print("|---|---|---|---|---|---|---|")

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"

    for load in ("idle", f"{competitors} busy loops"):
        for workload in args.workloads:
            sel = {pol: [r for r in rows if r["load"] == load and r["workload"] == workload and r["policy"] == pol]
                   for pol in ("all-cores", "one", "auto")}
            tps = {pol: [r["tokens_per_s"] for r in rs] for pol, rs in sel.items()}
            ratio = statistics.median(tps["auto"]) / statistics.median(tps["one"])
            ends = sorted({r["threads_at_end"] for r in sel["auto"]})
            print(f"| {load} | {workload} | {cell(tps['all-cores'])} | {cell(tps['one'])} | {cell(tps['auto'])} | "
                  f"{ratio:.2f} | {'/'.join(map(str, ends))} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
