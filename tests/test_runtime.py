"""elmo_fast.runtime.retain_freed_memory: glibc keeps freed blocks, so a reallocation does not fault pages in.

Each case runs in a fresh interpreter: the setting is process-wide and cannot be undone inside pytest.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

import pytest

PROBE = r"""
import json, resource, sys
import torch
from elmo_fast.runtime import retain_freed_memory
on = retain_freed_memory()
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(64 << 20, dtype=torch.uint8)   # 64 MB: above glibc's largest mmap threshold
    t.fill_(1)                                      # touch every page
    del t
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"on": on, "faults": faults}))
"""


def _probe(env_value: str | None) -> dict:
    env = dict(os.environ)
    env.pop("ELMO_FAST_RETAIN_MEMORY", None)
    if env_value is not None:
        env["ELMO_FAST_RETAIN_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is a glibc interface; elsewhere retain_freed_memory changes nothing")
def test_retained_memory_is_reused_without_page_faults():
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    off = _probe("0")
    assert off["on"] is False
    # glibc's default: every 64 MB block is a fresh mmap, faulted in page by page each time
    assert min(off["faults"]) > pages // 2, off
    on = _probe(None)
    assert on["on"] is True
    # retained: the heap grows to a steady state in the first rounds (glibc's aligned allocation cannot
    # always reuse a freed block of exactly its own size; how many rounds depends on what the process allocated
    # before, e.g. which modules it imported), after which blocks are reused without faults
    assert on["faults"][0] > pages // 2, on
    assert max(on["faults"][-4:]) < pages // 20, on


# ---------------------------------------------------------------------------------------------- threads
@pytest.mark.parametrize("cpus,busy,want", [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 2.0, 1), (2, 5.0, 1),
                                            (8, 3.0, 5), (8, 0.0, 8), (1, 0.0, 1)])
def test_governor_uses_the_cores_others_leave(cpus, busy, want):
    from elmo_fast.runtime import ThreadGovernor
    assert ThreadGovernor.choose(cpus, busy) == want


def test_governor_changes_only_when_two_measurements_agree(monkeypatch):
    import torch
    from elmo_fast import runtime
    gov = runtime.ThreadGovernor(None, interval=0.0, cpus=2)
    samples = iter([
        (0.0, 0, 0, 0), (1.0, 0, 200, 0),        # start: nothing busy elsewhere -> 2 threads
        (2.0, 200, 400, 0),                      # others kept 2 cores busy: pending, not applied yet
        (3.0, 200, 600, 0),                      # idle again: pending dropped
        (4.0, 400, 800, 0), (5.0, 600, 1000, 0),  # busy twice in a row -> 1 thread
    ])
    monkeypatch.setattr(gov, "_sample", lambda: next(samples))
    monkeypatch.setattr(runtime.time, "sleep", lambda s: None)
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 2)
    before = torch.get_num_threads()
    try:
        assert gov.start() == 2
        assert gov.tick() == 2
        assert gov.tick() == 2
        assert gov.tick() == 2
        assert gov.tick() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_fixed_thread_count_and_bad_values(monkeypatch):
    import torch
    from elmo_fast.runtime import ThreadGovernor, configure_threads
    before = torch.get_num_threads()
    try:
        assert configure_threads(1).threads == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("ELMO_FAST_THREADS", "1")
        gov = configure_threads(None)
        assert gov.requested == 1 and gov.tick() == 1
        monkeypatch.setenv("ELMO_FAST_THREADS", "many")
        with pytest.raises(ValueError, match="ELMO_FAST_THREADS: expected a positive integer or 'auto', found 'many'"):
            configure_threads(None)
        for bad in (0, -2, 1.5, True):
            with pytest.raises(ValueError, match="threads: expected a positive integer"):
                ThreadGovernor(bad)
    finally:
        torch.set_num_threads(before)


def test_governor_sees_a_real_competing_load():
    """Busy loops on this machine (one per CPU, two at most): the automatic choice leaves them their cores."""
    import multiprocessing as mp
    from elmo_fast.runtime import ThreadGovernor, available_cpus
    cpus = available_cpus()
    loops = min(2, cpus)
    procs = [mp.Process(target=_spin, daemon=True) for _ in range(loops)]
    for p in procs:
        p.start()
    try:
        time.sleep(0.3)
        gov = ThreadGovernor(None, cpus=cpus)
        busy = gov._busy_elsewhere(gov._sample(), (time.sleep(0.5), gov._sample())[1])
        assert busy > 0.5 * loops, f"{loops} busy loops measured as {busy:.2f} busy cores"
        assert ThreadGovernor.choose(cpus, busy) <= max(1, cpus - loops + 1)
    finally:
        for p in procs:
            p.terminate()


def _spin() -> None:
    while True:
        pass
