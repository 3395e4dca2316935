"""One line naming the machine a benchmark ran on: CPU model, architecture, the instruction sets that matter here
and what each layer dispatched to (torch's kernels, the native kernels' level, oneDNN's bf16 products), so every
results table says which CPU produced it."""
from __future__ import annotations

import os
import platform

import torch

#: the feature flags worth naming (from /proc/cpuinfo), in this order
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "asimd", "sve", "bf16")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` where that cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "CPU part")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    """E.g. ``AMD EPYC (x86_64, 2 CPUs; avx2 fma avx512f avx512_bf16); torch kernels AVX512, native kernels v4,
    oneDNN bf16 products yes``."""
    from elmo_fast.fast import native, packing
    flags = native._cpu_flags()
    named = " ".join(f for f in FLAGS_OF_INTEREST if f in flags) or "no flags read"
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        capability = "?"
    level = native.level() or "off"
    return (f"{cpu_model()} ({platform.machine()}, {os.cpu_count()} CPUs; {named}); torch kernels {capability}, "
            f"native kernels {level}, oneDNN bf16 products {'yes' if packing.BF16_NATIVE else 'no (bf16 runs fp32)'}")


if __name__ == "__main__":
    print(describe())
