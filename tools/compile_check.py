"""Compile every launch the Triton backend makes, with the real compiler, for sm_80 and sm_90, on a CPU.

The host code of the ops (:mod:`elmo_fast.kernels.ops`) runs on ``meta`` tensors (shapes without memory)
under :func:`elmo_fast.kernels.launch.recording`, which collects each launch (kernel, grid, arguments,
constexprs, warps, stages) instead of running it. Each distinct launch is then specialized exactly as
``JITFunction.run`` would specialize it on a GPU (Triton's own binder: argument types, ``== 1`` and
divisible-by-16 integers, 16-byte-aligned pointers) and compiled with ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", arch, 32))`` - the Triton wheel's ``ptxas`` produces the cubin, no GPU or driver
needed. Checked per launch and architecture:

* shared memory (Triton's dynamic request + the cubin's static part) within the block limit
  (sm_90: 232,448 bytes with opt-in; sm_80: 166,912);
* registers x threads within the 65,536-register file of an SM, grid within (2^31 - 1, 65,535, 65,535);
* spills: the cubin's local memory (``cuobjdump -res-usage``: LOCAL/STACK bytes per thread); the kernels
  the GPU path picks in the default mode (``tf32x3``, :data:`elmo_fast.kernels.common.DEFAULT_PRECISION`)
  must not spill;
* tensor cores: whether the PTX has ``wgmma`` (sm_90 warpgroup MMA) or ``mma.sync`` instructions (none: FMA).

This module must run in a process where ``TRITON_INTERPRET`` was not set when triton was imported (the
interpreter replaces the kernels by Python functions); the test suite runs it in a subprocess, from the
repository root (a development tool: it is not installed with ``elmo_fast``)::

    python -m tools.compile_check --arch 90 --arch 80 --json report.json [--precision ieee]

Each specialization's result is kept in the compile-check cache (``ELMO_FAST_COMPILE_CACHE``, read through
:mod:`elmo_fast.settings`; default ``~/.cache/elmo-fast/compile-check``), keyed by the Triton version, the
kernel's source hash, the compile options and the architecture: a second run of the same checkout compiles
nothing, and an edited kernel is compiled again.

Shapes (:func:`workloads`): the ``tiny``, ``small``, ``medium`` and ``original`` presets at inference (64
sentences x 40 tokens + BOS/EOS, varied lengths) and training (128 x 20 per stream, forward + backward,
sampled softmax of 8192 negatives over 793,471 words; the full softmax over that vocabulary for
evaluation), and edge shapes at the limits of the host code's choices (see :func:`edge_workloads`).
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

import torch

__all__ = ["ARCH_LIMITS", "workloads", "edge_workloads", "record", "compile_plans", "cache_dir", "main"]

#: per architecture: max shared memory per block (opt-in), registers per SM
ARCH_LIMITS = {80: {"smem": 166_912, "regs": 65_536}, 90: {"smem": 232_448, "regs": 65_536}}
MAX_GRID = (2 ** 31 - 1, 65_535, 65_535)
VOCAB = 793_471
#: where per-specialization results are kept between runs (keyed by triton version, kernel source hash,
#: specialization, options and arch; :func:`cache_dir`); the compiler itself runs with a private
#: TRITON_CACHE_DIR so that ptxas (and its -v report) runs for every specialization not found here
CACHE_ENV = "ELMO_FAST_COMPILE_CACHE"
NEGATIVES = 8192
#: a process spawn that fails for lack of resources (EAGAIN: too many processes or threads now; ENOMEM) is
#: retried this many times, the wait doubling from SPAWN_FIRST_WAIT_S up to SPAWN_MAX_WAIT_S: a busy machine
#: must slow the check down, not fail it
SPAWN_ATTEMPTS, SPAWN_FIRST_WAIT_S, SPAWN_MAX_WAIT_S = 8, 0.25, 8.0

log = logging.getLogger(__name__)


def retry_spawn(fn: Callable[..., Any], *args: Any, attempts: int = SPAWN_ATTEMPTS,
                first_wait: float = SPAWN_FIRST_WAIT_S, sleep: Callable[[float], None] = time.sleep) -> Any:
    """``fn(*args)``, called again after a bounded, doubling wait when it fails with EAGAIN or ENOMEM (a process
    spawn refused by a busy machine: ``BlockingIOError: [Errno 11] Resource temporarily unavailable``). Other
    errors, and the last attempt's, are raised as they are."""
    wait = first_wait
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ENOMEM) or attempt == attempts:
                raise
            log.warning("%s (attempt %d of %d); retrying in %.2f s", e, attempt, attempts, wait)
            sleep(wait)
            wait = min(2 * wait, SPAWN_MAX_WAIT_S)
    raise AssertionError("unreachable")


@dataclass
class Workload:
    """One host-code call to record: a name, the preset/shape it stands for, and the callable."""

    name: str
    run: Callable[[], None]
    precision: str = "tf32x3"  # the kernels' default (common.DEFAULT_PRECISION)


# ---------------------------------------------------------------------------------------------- workloads
def _modules(char_opts, lstm_opts, P):
    from elmo_fast.nn.lstm import BiLSTM
    from elmo_fast.nn.token_encoder import CharCNNTokenEncoder
    with torch.device("meta"):
        enc = CharCNNTokenEncoder(char_opts, P)
        lstm = BiLSTM(lstm_opts)
    return enc, lstm


def _lengths(B: int, T: int) -> torch.Tensor:
    return torch.tensor([T - (i % max(1, T // 2)) for i in range(B)], dtype=torch.int64, device="meta")


def _inference(enc, lstm, B: int, T: int, L: int) -> None:
    from elmo_fast.kernels import ops
    P = lstm.options.projection_dim
    with torch.no_grad():
        ops.token_encoder(enc, torch.empty(B * T, L, dtype=torch.int64, device="meta"))
        x = torch.empty(B, T, P, device="meta")
        ops.bilstm(lstm, x, _lengths(B, T), lstm.zero_state(B, x), 0.0)


def _training(enc, lstm, B: int, T: int, L: int, V: int, S: int, dropout: float = 0.1) -> None:
    from elmo_fast.kernels import ops
    P = lstm.options.projection_dim
    ids = torch.empty(2 * B * T, L, dtype=torch.int64, device="meta")
    tok = ops.token_encoder(enc, ids).view(2, B, T, P)
    state = lstm.zero_state(B, tok)
    fw, bw, _ = ops.bilstm_streams(lstm, tok[0], tok[1], state, dropout)
    h = torch.cat([fw[-1], bw[-1]]).reshape(-1, P)
    with torch.device("meta"):
        W = torch.empty(V, P, requires_grad=True)
        b = torch.empty(V, requires_grad=True)
    N = h.shape[0]
    loss = ops.sampled_softmax_loss(h, torch.empty(N, dtype=torch.int64, device="meta"), W, b,
                                    torch.empty(S, dtype=torch.int64, device="meta"), torch.empty(N, device="meta"),
                                    torch.empty(S, device="meta"), True)
    loss.sum().backward()
    with torch.no_grad():
        ops.full_softmax_loss(h.detach()[:B * T], torch.empty(B * T, dtype=torch.int64, device="meta"), W, b)


def workloads(presets: Iterable[str] = ("tiny", "small", "medium", "original"),
              precision: str = "tf32x3") -> list[Workload]:
    """Inference 64 x 40 (+ BOS/EOS) and training 128 x 20 (+ sampled/full softmax) per preset."""
    from elmo_fast.options import preset
    out = []
    for name in presets:
        o = preset(name)
        P = o.lstm.projection_dim
        L = o.char_cnn.max_characters_per_token

        def inf(o=o, P=P, L=L):
            _inference(*_modules(o.char_cnn, o.lstm, P), B=64, T=42, L=L)

        def train(o=o, P=P, L=L):
            _training(*_modules(o.char_cnn, o.lstm, P), B=128, T=20, L=L, V=VOCAB, S=NEGATIVES)
        out += [Workload(f"{name}/inference 64x40", inf, precision),
                Workload(f"{name}/training 128x20", train, precision)]
    return out


def _lstm_layer(B: int, T: int, P: int, C: int, persistent: bool | None, train: bool, residual: bool = True,
                reverse: bool = True) -> None:
    from elmo_fast.kernels.lstm_cell import lstm_bidirectional_layer
    with torch.device("meta"):
        x = torch.empty(2, B, T, P, requires_grad=train)
        W0 = torch.empty(2, 2 * P, 4 * C, requires_grad=train)
        bias = torch.empty(2, 4 * C, requires_grad=train)
        WP = torch.empty(2, C, P, requires_grad=train)
        h0, c0 = torch.empty(2, B, P), torch.empty(2, B, C)
        lengths = torch.full((B,), T, dtype=torch.int64)
    with torch.set_grad_enabled(train):
        y, h, c = lstm_bidirectional_layer(x, W0, bias, WP, h0, c0, lengths, 3.0, 3.0, residual,
                                           persistent=persistent, reverse=reverse)
        if train:
            y.sum().backward()


def _softmax(N: int, P: int, V: int, S: int, train: bool = True) -> None:
    from elmo_fast.kernels.sampled_softmax import full_softmax_loss, sampled_softmax_loss
    with torch.device("meta"):
        h = torch.empty(N, P, requires_grad=train)
        W = torch.empty(V, P, requires_grad=train)
        b = torch.empty(V, requires_grad=train)
        t = torch.empty(N, dtype=torch.int64)
        ids = torch.empty(S, dtype=torch.int64)
        loss = sampled_softmax_loss(h, t, W, b, ids, torch.empty(N), torch.empty(S))
        if train:
            loss.sum().backward()
        with torch.no_grad():
            full_softmax_loss(h.detach(), t, W.detach(), b.detach())


def _encoder(N: int, filters, D: int, L: int, n_highway: int, P: int, activation: str = "relu",
             train: bool = True) -> None:
    from elmo_fast.kernels import ops
    from elmo_fast.nn.token_encoder import CharCNNTokenEncoder
    from elmo_fast.options import CharCNNOptions
    opts = CharCNNOptions(filters=tuple(tuple(f) for f in filters), embedding_dim=D, n_highway=n_highway,
                          activation=activation, max_characters_per_token=L)
    with torch.device("meta"):
        enc = CharCNNTokenEncoder(opts, P)
    with torch.set_grad_enabled(train):
        y = ops.token_encoder(enc, torch.empty(N, L, dtype=torch.int64, device="meta"))
        if train:
            y.sum().backward()


def edge_workloads(precision: str = "tf32x3") -> list[Workload]:
    """Shapes at the limits of the host code's choices:

    * LSTM persistent kernel at every padded (P, C) the auto choice accepts at its budget's edge, and
      forced on a tiny shape with odd sizes; step kernels at odd tiny sizes (P 19, C 23, one batch row, one
      step), at P = 1024 / C = 8192, and at B x T x 4C > 2^31 (64-bit offsets: 512 sentences x 130 tokens of
      the original model), forward and backward;
    * sampled softmax at P = 1 (padded to 16), P = 513 and P = 1024 (the largest accepted), one row, one
      sample; the full softmax at P = 1024 over a vocabulary smaller than one tile;
    * char-CNN + highway + projection at one token, 8-dim embeddings, the widest filter = token length,
      tanh activation, and F = 4096 features.
    """
    from elmo_fast.kernels.lstm_cell import persistent_edges
    w = []
    for pp, cc in persistent_edges():
        w.append(Workload(f"edge/lstm persistent P={pp} C={cc} (budget edge) fwd", lambda pp=pp, cc=cc:
                          _lstm_layer(64, 5, pp, cc, None, train=True), precision))
    w += [
        Workload("edge/lstm persistent forced P=19 C=23 B=1", lambda: _lstm_layer(1, 3, 19, 23, True, True), precision),
        Workload("edge/lstm step P=19 C=23 B=1 T=1", lambda: _lstm_layer(1, 1, 19, 23, False, True, False), precision),
        Workload("edge/lstm step P=1024 C=8192 B=200 T=3", lambda: _lstm_layer(200, 3, 1024, 8192, False, True),
                 precision),
        Workload("edge/lstm step original B=512 T=130 (B*T*4C > 2^31)",
                 lambda: _lstm_layer(512, 130, 512, 4096, None, True, True, False), precision),
        Workload("edge/sampled softmax P=1 N=1 S=1", lambda: _softmax(1, 1, 5, 1), precision),
        Workload("edge/sampled softmax P=513", lambda: _softmax(77, 513, 1000, 100), precision),
        Workload("edge/sampled softmax P=1024 (max)", lambda: _softmax(300, 1024, VOCAB, NEGATIVES), precision),
        Workload("edge/char-cnn N=1 D=8 widest=L=7 tanh", lambda: _encoder(1, [(1, 3), (7, 40)], 8, 7, 1, 5, "tanh"),
                 precision),
        Workload("edge/char-cnn D=32 F=4096 P=1024", lambda: _encoder(33, [(2, 2048), (5, 2048)], 32, 50, 1, 1024),
                 precision),
    ]
    return w


# ---------------------------------------------------------------------------------------------- record
def record(work: list[Workload]) -> list[tuple[str, Any]]:
    """Run each workload's host code on meta tensors; returns ``[(workload name, LaunchPlan), ...]``."""
    from elmo_fast.kernels.common import interpreting, set_precision
    from elmo_fast.kernels.launch import recording
    if interpreting():
        raise RuntimeError("compile_check needs compiled kernels: run it without TRITON_INTERPRET=1 "
                           "(e.g. python -m tools.compile_check)")
    out = []
    for wl in work:
        set_precision(wl.precision)
        try:
            with recording() as plans:
                wl.run()
        finally:
            set_precision(None)
        out += [(wl.name, p) for p in plans]
    return out


class _FakePointer:
    """What Triton's binder needs of a tensor argument: its dtype and an address (16-byte alignment as the
    CUDA caching allocator gives, plus the view's storage offset)."""

    def __init__(self, t: torch.Tensor) -> None:
        self.dtype = t.dtype
        self._ptr = (1 << 20) + t.storage_offset() * t.element_size()

    def data_ptr(self) -> int:
        return self._ptr


def _specialize(plan, arch: int):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature
    kernel = plan.kernel
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    args = [_FakePointer(a) if isinstance(a, torch.Tensor) else a for a in plan.args]
    kwargs = dict(plan.constexprs, num_warps=plan.num_warps, num_stages=plan.num_stages)
    bound, spec, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, spec, options)
    key = (plan.name, str(spec), str(options), arch)
    return key, target, options, signature, constexprs, attrs


def _resource_usage(cubin: bytes) -> dict[str, int]:
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        text = retry_spawn(lambda: subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True,
                                                  check=True).stdout)
    finally:
        os.unlink(f.name)
    line = next(ln for ln in text.splitlines() if "REG:" in ln)
    fields = dict(item.split(":", 1) for item in line.split() if ":" in item)
    return {k: int(fields[k]) for k in ("REG", "STACK", "SHARED", "LOCAL")}


def cache_dir() -> str:
    """The folder of the per-specialization results: ``ELMO_FAST_COMPILE_CACHE`` when set (validated by
    :mod:`elmo_fast.settings`), else ``~/.cache/elmo-fast/compile-check``."""
    from elmo_fast import settings
    return settings.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "elmo-fast", "compile-check")


def _compile_one(job) -> dict[str, Any]:
    """Compile one specialized launch (in a worker process); returns its resource usage."""
    kernel_module, kernel_name, arch, signature, constexprs, attrs, options = job
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import hashlib

    from triton import knobs
    kernel = getattr(importlib.import_module(kernel_module), kernel_name)
    t0 = time.perf_counter()
    src = ASTSource(kernel, signature, constexprs, attrs)
    folder = cache_dir()
    key = hashlib.sha256(f"v2-{triton.__version__}-{src.hash()}-{sorted(options.items())}-{arch}".encode()
                         ).hexdigest()
    cached = os.path.join(folder, key + ".json")
    if os.path.exists(cached):
        with open(cached) as f:
            return dict(json.load(f), compile_s=0.0)
    # ptxas -v's report (Triton prints it to stdout with dump_ptxas_log): captured at the file-descriptor level
    with tempfile.TemporaryFile(mode="w+") as log:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)
        try:
            with knobs.nvidia.scope():
                knobs.nvidia.dump_ptxas_log = True
                ck = retry_spawn(triton.compile, src, GPUTarget("cuda", arch, 32), options)
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        ptxas = log.read()
    usage = _resource_usage(ck.asm["cubin"])
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", ptxas)
    spill_stores, spill_loads = (int(m.group(1)), int(m.group(2))) if m else (-1, -1)
    ptx = ck.asm["ptx"]
    # tensor-core instructions in the PTX: wgmma (sm_90 warpgroup MMA) or mma.sync; none means FMA-only dots
    tensor_cores = "wgmma" if "wgmma.mma_async" in ptx else ("mma" if "mma.sync" in ptx else "none")
    out = {"dyn_smem": int(ck.metadata.shared), "regs": usage["REG"], "static_smem": usage["SHARED"],
           "local": usage["LOCAL"], "stack": usage["STACK"], "spill_stores": spill_stores,
           "spill_loads": spill_loads, "tensor_cores": tensor_cores}
    if m:  # a complete ptxas report: keep the result for the next run
        os.makedirs(folder, exist_ok=True)
        tmp = cached + f".{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(out, f)
        os.replace(tmp, cached)
    return dict(out, compile_s=time.perf_counter() - t0)


@dataclass
class Result:
    workload: str
    kernel: str
    arch: int
    grid: tuple[int, ...]
    num_warps: int
    num_stages: int
    constexprs: dict[str, Any]
    launches: int
    regs: int
    smem: int
    local: int
    stack: int
    spill_stores: int
    spill_loads: int
    tensor_cores: str
    compile_s: float
    cached: bool
    problems: list[str]

    @property
    def spills(self) -> bool:
        return self.spill_stores != 0 or self.spill_loads != 0 or self.local > 0


def compile_plans(recorded: list[tuple[str, Any]], archs: Iterable[int] = (90, 80), jobs: int = 1
                  ) -> list[Result]:
    """Compile every recorded launch for every architecture (each distinct specialization once) and check
    it against the limits; returns one :class:`Result` per (workload, launch, arch)."""
    pending: dict[tuple, tuple] = {}
    rows = []
    for wname, plan in recorded:
        for arch in archs:
            key, target, options, signature, constexprs, attrs = _specialize(plan, arch)
            module = getattr(plan.kernel, "fn", plan.kernel).__module__
            if key not in pending:
                pending[key] = (module, plan.name, arch, signature, constexprs, attrs, options.__dict__)
            rows.append((wname, plan, arch, key))
    keys = list(pending)
    # bounded by the cores: more compilers than cores only add processes for a busy machine to refuse
    jobs = max(1, min(jobs, os.cpu_count() or 1, len(keys)))
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as ex:
            usages = dict(zip(keys, ex.map(_compile_one, [pending[k] for k in keys])))
    else:
        usages = {k: _compile_one(pending[k]) for k in keys}
    seen: set = set()
    results = []
    for wname, plan, arch, key in rows:
        u = usages[key]
        smem = u["dyn_smem"] + u["static_smem"]
        limits = ARCH_LIMITS[arch]
        threads = 32 * plan.num_warps
        problems = []
        if smem > limits["smem"]:
            problems.append(f"shared memory {smem} B > {limits['smem']} B")
        if u["regs"] * threads > limits["regs"]:
            problems.append(f"{u['regs']} registers x {threads} threads > {limits['regs']}")
        grid = tuple(plan.grid) + (1,) * (3 - len(plan.grid))
        if any(g < 1 or g > m for g, m in zip(grid, MAX_GRID)):
            problems.append(f"grid {grid} outside (1..{MAX_GRID})")
        results.append(Result(wname, plan.name, arch, grid, plan.num_warps, plan.num_stages,
                              {k: v for k, v in plan.constexprs.items()}, plan.count, u["regs"], smem, u["local"],
                              u["stack"], u["spill_stores"], u["spill_loads"], u["tensor_cores"], u["compile_s"],
                              key in seen, problems))
        seen.add(key)
    return results


# ---------------------------------------------------------------------------------------------- report
def table(results: list[Result]) -> str:
    """Markdown table: one row per (workload, kernel, constexprs, arch)."""
    lines = ["| workload | kernel | arch | grid | warps | stages | regs | smem (B) | spill st/ld (B) | tensor cores | "
             "problems |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    done = set()
    for r in results:
        k = (r.workload, r.kernel, r.arch, r.regs, r.smem, r.local, r.grid)
        if k in done:
            continue
        done.add(k)
        lines.append(f"| {r.workload} | {r.kernel} | sm_{r.arch} | {r.grid} | {r.num_warps} | {r.num_stages} | "
                     f"{r.regs} | {r.smem} | {r.spill_stores}/{r.spill_loads} | {r.tensor_cores} | "
                     f"{'; '.join(r.problems) or '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, action="append", choices=sorted(ARCH_LIMITS),
                   help="compute capability to compile for (repeatable; default 90 and 80)")
    p.add_argument("--presets", default="tiny,small,medium,original", help="comma-separated presets")
    p.add_argument("--no-edges", action="store_true", help="skip the edge shapes")
    p.add_argument("--precision", default=None,
                   help="matmul precision mode of the recorded launches (default: the kernels' default, tf32x3)")
    p.add_argument("--jobs", type=int, default=1, help="compiler processes (default 1)")
    p.add_argument("--json", help="write the results (one object per launch and arch) to this file")
    p.add_argument("--markdown", help="write the table to this file")
    args = p.parse_args(argv)
    archs = args.arch or [90, 80]
    t0 = time.perf_counter()
    if "TRITON_CACHE_DIR" not in os.environ:  # a private compiler cache: ptxas must run to report spills
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="elmo-fast-triton-")
    from elmo_fast.kernels.common import DEFAULT_PRECISION
    args.precision = args.precision or DEFAULT_PRECISION
    work = workloads([s for s in args.presets.split(",") if s], args.precision)
    if not args.no_edges:
        work += edge_workloads(args.precision)
    recorded = record(work)
    results = compile_plans(recorded, archs, args.jobs)
    elapsed = time.perf_counter() - t0
    md = table(results)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"elapsed_s": elapsed, "precision": args.precision, "archs": archs,
                       "results": [dict(asdict(r), spills=r.spills) for r in results]}, f, indent=1)
    print(md)
    bad = [r for r in results if r.problems]
    print(f"{len(results)} launches x archs checked, {sum(not r.cached for r in results)} compiled, "
          f"{len(bad)} over a limit, {sum(r.spills for r in results)} spilling; {elapsed:.0f} s", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
