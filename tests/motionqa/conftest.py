"""Fixtures of the MotionQA tests: one generated test split, shared by the tests that read files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.motionqa.support import generated


@pytest.fixture(scope="session")
def test_split(tmp_path_factory) -> Path:
    """Ten test clips: one per plan (the plan bag), rendered and encoded."""
    out = tmp_path_factory.mktemp("motionqa")
    generated(out, "test", 10, seed=3)
    return out
