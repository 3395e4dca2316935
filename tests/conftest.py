import os
import re
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# The test models are tiny: one intra-op thread is faster than two, and two threads that compete with any
# other job on a 2-core machine slow the per-time-step loops down by an order of magnitude.
# ELMO_FAST_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("ELMO_FAST_TEST_THREADS", "1")))
# commands run in-process (cli.main) and in subprocesses keep that count instead of choosing automatically
os.environ.setdefault("ELMO_FAST_THREADS", os.environ.get("ELMO_FAST_TEST_THREADS", "1"))
# crash reports of internal errors provoked by tests go to a temporary folder, not the user's cache
os.environ.setdefault("ELMO_FAST_CRASH_DIR", tempfile.mkdtemp(prefix="elmo-fast-test-crashes-"))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import FIXTURES, SHARED, write_model  # noqa: E402

from elmo_fast.fast import native  # noqa: E402


@pytest.fixture
def bf16_arithmetic(monkeypatch):
    """precision="bf16" computes in bf16 on any CPU: where it has no bf16 products (users get float32 there),
    through torch's bfloat16 matmul, the same arithmetic (elmo_fast.fast.packing.BF16_EMULATE)."""
    from elmo_fast.fast import packing
    if not packing.BF16_NATIVE:
        monkeypatch.setattr(packing, "BF16_EMULATE", True)


@pytest.fixture(params=native.host_levels())
def native_level(request):
    """Run the test on the native kernels built for each instruction-set level this CPU runs (on an AVX-512
    machine: baseline, v3 and v4, so the AVX2 build is tested there too)."""
    with native.use_level(request.param):
        yield request.param


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"../shared is absent: {FIXTURES} not found (set ELMO_FAST_SHARED to run the conformance tests)")
    return FIXTURES


@pytest.fixture
def tiny_model(tmp_path):
    """(options.json, weights.hdf5) of a tiny random model."""
    return write_model(tmp_path / "model")


#: a skip reason that means "the shared fixtures are not beside the repository" (the fixture's and test_probe's)
SHARED_ABSENT = re.compile(r"\.\./shared (is )?absent")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say in the summary how many tests skipped because ../shared is absent, and where to put it: those are
    the conformance tests against the TensorFlow fixtures, and a green run without them proves less."""
    skipped = terminalreporter.stats.get("skipped", [])
    reasons = [str(r.longrepr[2]) if isinstance(r.longrepr, tuple) else str(r.longrepr) for r in skipped]
    n = sum(bool(SHARED_ABSENT.search(reason)) for reason in reasons)
    if n:
        terminalreporter.write_line(
            f"{n} test{'s' if n != 1 else ''} skipped because ../shared is absent ({SHARED} not found): put the shared "
            f"folder (data/elmo-test-fixtures, data/ud-english-ewt) beside the repository as ../shared, or set "
            f"ELMO_FAST_SHARED=/path/to/shared, to run the conformance tests", yellow=True)
