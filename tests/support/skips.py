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


def require_uvloop() -> None:
    """Skip (fail under ``CI=true``) a test that needs uvloop when it is not installed
    (``meshkit[fast]``, in the dev extras, installs it)."""
    import importlib.util

    if importlib.util.find_spec("uvloop") is None:
        skip_or_fail("uvloop is not installed (meshkit[fast], in the dev extras, installs it)")


def asyncio_loop_only(reason: str) -> pytest.MarkDecorator:
    """A mark skipping the test when the suite runs on uvloop (``MESHKIT_TEST_LOOP=uvloop``)
    because it can only look where asyncio's loop lets it (``reason``: its ready queue, its
    signal handlers, a patched ``socket.getaddrinfo`` that uvloop's resolver in libuv
    never calls). What it checks holds on uvloop too; it is not seen from there."""
    return pytest.mark.skipif(os.environ.get("MESHKIT_TEST_LOOP", "asyncio") == "uvloop",
                              reason=f"on uvloop: {reason}")
