"""The native kernels give the same bits at every instruction-set level (elmo_fast.fast.native).

Each level this CPU runs (``baseline``, ``v3``, ``v4`` on x86-64; ``baseline`` on aarch64) plus ``native``
(``-march=native``) is built, and every kernel runs on the same fresh random inputs of awkward sizes (odd widths,
one row, a width that is not a multiple of the 16 reduction lanes, rows longer than one sum block, NaN and Inf,
bfloat16 logits, accidental hits): every output must equal the ``baseline`` build's bit for bit. That is what
lets a result computed on an AVX-512 server be reproduced on an AVX2 laptop. The per-kernel accuracy tests run
at every level too (the ``native_level`` fixture of tests/conftest.py). Also here: which levels a CPU gets from
its feature flags, and the forcing variable's validation.
"""
from __future__ import annotations

import pytest
import torch

from elmo_fast.fast import native

pytestmark = pytest.mark.skipif(native.library() is None, reason="no C compiler: the native kernels are off here "
                                "(the torch ops run instead)")

LEVELS = [*native.host_levels(), "native"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cell(seed: int, D: int, n: int, C: int, clip: float | None) -> list[torch.Tensor]:
    g = _gen(seed)
    gates = torch.randn(D, n, 4 * C, generator=g) * 4
    c_prev = torch.randn(D, n + 3, C, generator=g)[:, :n] * 3   # another row stride than the outputs
    gates[0, 0, 0] = float("nan")
    gates[-1, -1, -1] = float("inf")
    c_raw, c, tc, hc = (torch.empty(D, n, C) for _ in range(4))
    act = gates.clone()
    native.cell_forward(act, c_prev, c_raw, c, tc, hc, clip)
    dc = torch.randn(D, n, C, generator=g)
    dc_state = torch.randn(D, n, C, generator=g)
    dc_out = torch.randn(D, n, C, generator=g)
    mask = (c_raw.abs() < clip) if clip is not None else None
    dz = torch.empty(D, n, 4 * C)
    native.cell_backward(dc, act, dz, tc, c_prev, dc_state, dc_out, mask)
    return [act, c_raw, c, tc, hc, dz, dc_state]


def _softmax(seed: int, N: int, S: int, dtype: torch.dtype) -> list[torch.Tensor]:
    g = _gen(seed)
    logits = (torch.randn(N, S + 5, generator=g) * 6).to(dtype)[:, :S]
    shift = torch.randn(S, generator=g)
    true = torch.randn(N, generator=g) * 6
    hits = torch.randint(-1, S, (N,), generator=g)
    if N > 2:
        logits[1, S // 2] = float("nan")
        true[2] = float("-inf")
    out = torch.empty(N, S)
    stats = native.softmax_forward(logits, shift, true, hits, out)
    scale = torch.randn(N, generator=g)
    d16 = torch.empty(N, S, dtype=torch.bfloat16)
    colsum = torch.empty(S)
    scaled = torch.nan_to_num(out, nan=0.5)
    native.softmax_backward(scaled, scale, d16, colsum)
    return [out, *stats, scaled, d16, colsum]


def _scatter(seed: int, U: int, width: int, F: int, w_max: int, n_sym: int) -> list[torch.Tensor]:
    g = _gen(seed)
    ids = torch.randint(0, n_sym, (U, width), generator=g)
    argmax = torch.randint(0, width - w_max + 1, (U, F), generator=g).to(torch.uint8)
    grad = torch.randn(U, F, generator=g)
    A = torch.randn(w_max, n_sym, F, generator=g)
    native.char_scatter(A, ids, argmax, grad)
    return [A]


def _activations(seed: int, rows: int, cols: int) -> list[torch.Tensor]:
    x = torch.randn(rows, cols + 7, generator=_gen(seed))[:, :cols] * 9
    x[0, 0] = float("nan")
    out = []
    for kind in ("sigmoid", "tanh"):
        y = x.clone()
        native.activation_(y, kind)
        out.append(y)
    return out


CASES = {
    "cell C=37 clip": lambda: _cell(1, 2, 5, 37, 3.0),
    "cell C=1 no clip": lambda: _cell(2, 1, 1, 1, None),
    "cell C=130 n=33": lambda: _cell(3, 2, 33, 130, 50.0),
    "softmax S=1": lambda: _softmax(4, 3, 1, torch.float32),
    "softmax S=17": lambda: _softmax(5, 4, 17, torch.float32),
    "softmax S=1025 bf16": lambda: _softmax(6, 5, 1025, torch.bfloat16),
    "softmax S=8193": lambda: _softmax(7, 9, 8193, torch.float32),
    "scatter": lambda: _scatter(8, 13, 50, 257, 7, 262),
    "activations": lambda: _activations(9, 33, 301),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_level_gives_the_baseline_bits(case):
    results = {}
    for level in LEVELS:
        with native.use_level(level) as lib:
            assert lib is not None and native.level() == level
            results[level] = CASES[case]()
    base = results["baseline"]
    for level, got in results.items():
        for k, (a, b) in enumerate(zip(got, base)):
            assert a.dtype == b.dtype and a.shape == b.shape
            same = torch.equal(a.view(torch.int16) if a.dtype == torch.bfloat16 else a.view(torch.int32),
                               b.view(torch.int16) if b.dtype == torch.bfloat16 else b.view(torch.int32))
            assert same, f"{case}: output {k} at level {level} differs from baseline"


def test_the_levels_a_cpu_gets_from_its_flags(monkeypatch):
    if "v3" not in native.LEVELS:
        pytest.skip(f"{native.LEVELS} has no x86-64 levels on this architecture")
    avx2 = frozenset("sse sse2 avx avx2 fma bmi1 bmi2 f16c movbe".split())
    monkeypatch.setattr(native, "_cpu_flags", lambda: avx2)
    assert native.host_levels() == ("baseline", "v3")
    avx512 = avx2 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
    monkeypatch.setattr(native, "_cpu_flags", lambda: avx512)
    assert native.host_levels() == ("baseline", "v3", "v4")
    monkeypatch.setattr(native, "_cpu_flags", lambda: frozenset({"sse2", "avx"}))
    assert native.host_levels() == ("baseline",)


def test_default_is_the_best_level_and_the_variable_forces_one(monkeypatch):
    monkeypatch.delenv(native.ISA_ENV, raising=False)
    assert native.requested_level() == native.host_levels()[-1]
    monkeypatch.setenv(native.ISA_ENV, "baseline")
    assert native.requested_level() == "baseline"
    monkeypatch.setenv(native.ISA_ENV, "native")
    assert native.requested_level() == "native"
    monkeypatch.setenv(native.ISA_ENV, "avx9")
    with pytest.raises(ValueError, match=f"{native.ISA_ENV}='avx9'.*expected one of baseline"):
        native.requested_level()


def test_a_level_this_cpu_cannot_run_is_refused(monkeypatch):
    if "v3" not in native.LEVELS:
        pytest.skip(f"{native.LEVELS} has no x86-64 levels on this architecture")
    monkeypatch.setattr(native, "_cpu_flags", lambda: frozenset({"sse2"}))
    monkeypatch.setenv(native.ISA_ENV, "v4")
    with pytest.raises(ValueError, match="this CPU cannot run it"):
        native.requested_level()


def test_the_environment_variable_selects_the_library(monkeypatch):
    monkeypatch.setenv(native.ISA_ENV, "baseline")
    native.reset()
    try:
        assert native.library() is not None and native.level() == "baseline"
    finally:
        monkeypatch.delenv(native.ISA_ENV)
        native.reset()
    assert native.level() == native.host_levels()[-1]
