import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import FIXTURES, write_model  # noqa: E402


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"../shared is absent: {FIXTURES} not found (set ELMO_FAST_SHARED to run the conformance tests)")
    return FIXTURES


@pytest.fixture
def tiny_model(tmp_path):
    """(options.json, weights.hdf5) of a tiny random model."""
    return write_model(tmp_path / "model")
