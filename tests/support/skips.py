"""Skip a test for a missing real component, or fail it under ``CI=true``."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """Skip the test, or fail it when running under ``CI=true`` (a missing real component
    is a failure there, never a skip)."""
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)
