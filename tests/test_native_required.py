"""Under ``make test`` (and so in CI) the native CPU kernels (LSTM cell, sampled softmax rows, char-CNN scatter) must
build: otherwise tests/test_native*.py would skip as a whole and a broken kernel build would pass unnoticed. Users
without a C compiler get the torch path (its
fallback tests are in tests/test_native.py); ``make test`` sets ELMO_FAST_REQUIRE_NATIVE=1."""
from __future__ import annotations

import os

import pytest

from elmo_fast.fast import native


def test_fused_cell_builds_where_required():
    if os.environ.get("ELMO_FAST_REQUIRE_NATIVE", "") in ("", "0"):
        pytest.skip("ELMO_FAST_REQUIRE_NATIVE is not set (make test sets it): a machine without a C compiler runs "
                    "the torch path")
    assert native.library() is not None, "the native CPU kernels did not build (see the warning logged above)"
