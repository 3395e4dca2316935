"""elmo_fast.runtime.retain_freed_memory: glibc keeps freed blocks, so a reallocation does not fault pages in.

Each case runs in a fresh interpreter: the setting is process-wide and cannot be undone inside pytest.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

PROBE = r"""
import json, resource, sys
import torch
from elmo_fast.runtime import retain_freed_memory
on = retain_freed_memory()
faults = []
for _ in range(8):
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
    # always reuse a freed block of exactly its own size), after which blocks are reused without faults
    assert on["faults"][0] > pages // 2, on
    assert max(on["faults"][-4:]) < pages // 20, on
