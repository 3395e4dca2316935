"""What glibc's handling of large blocks costs, with and without ``elmo_fast.retain_freed_memory``.

    .venv/bin/python benchmarks/allocator.py [--rounds 8]

Each setting runs in a fresh interpreter (the setting is process-wide): allocate one gate-sized float32 tensor
(2560 x 16384 = 168 MB, an original-size training step's gates of one direction), fill it, free it; repeated.
Prints milliseconds and minor page faults per round.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROUND = r"""
import json, resource, sys, time
import torch
from elmo_fast.runtime import retain_freed_memory
on = retain_freed_memory()
torch.set_num_threads(2)
out = []
for _ in range(int(sys.argv[1])):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = time.perf_counter()
    x = torch.empty(2560, 16384)
    x.fill_(1.0)
    del x
    out.append((round((time.perf_counter() - t) * 1e3, 1), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0))
print(json.dumps({"retained": on, "rounds": out}))
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8, help="allocate-fill-free rounds per setting")
    args = parser.parse_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for value in ("0", "1"):
        env = dict(os.environ, ELMO_FAST_RETAIN_MEMORY=value, PYTHONPATH=root)
        res = json.loads(subprocess.run([sys.executable, "-c", ROUND, str(args.rounds)], env=env, check=True,
                                        capture_output=True, text=True).stdout.strip().splitlines()[-1])
        label = "retained" if res["retained"] else "glibc default"
        print(f"{label:>14}: " + ", ".join(f"{ms} ms / {faults} faults" for ms, faults in res["rounds"]))


if __name__ == "__main__":
    main()
