"""``MESHKIT_TEST_LOOP=eager`` (Python 3.12+) runs every async test on asyncio's loop with
``asyncio.eager_task_factory``: a task runs its first step inside ``create_task()``, an
ordering the default factory never shows. It is how tests/test_write_racing_a_cancel.py
was seen to hang a write (tests/test_hunt42_py313_write_waiting_for_metadata_cancel.py).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import loops

REPO = Path(__file__).resolve().parents[1]
NEEDS_EAGER = pytest.mark.skipif(not hasattr(asyncio, "eager_task_factory"),
                                 reason="asyncio.eager_task_factory is Python 3.12+")


async def test_the_running_loop_is_of_the_suites_kind() -> None:
    """The loop pytest-asyncio gives a test: eager tasks exactly under the knob."""
    factory = asyncio.get_running_loop().get_task_factory()
    eager = getattr(asyncio, "eager_task_factory", object())
    assert (factory is eager) == (os.environ.get("MESHKIT_TEST_LOOP") == "eager")


@NEEDS_EAGER
def test_new_loop_under_the_knob_runs_a_task_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHKIT_TEST_LOOP", "eager")
    steps: list[str] = []

    async def child() -> None:
        steps.append("child")

    async def main() -> None:
        task = asyncio.create_task(child())
        steps.append("after create_task")
        await task

    loops.run(main())
    assert steps == ["child", "after create_task"]


@pytest.mark.skipif(hasattr(asyncio, "eager_task_factory"), reason="Python 3.11 only")
def test_the_knob_before_python_312_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHKIT_TEST_LOOP", "eager")
    with pytest.raises(RuntimeError, match=r"needs Python 3\.12\+"):
        loops.new_loop()


@NEEDS_EAGER
def test_the_suite_runs_its_async_tests_eagerly_under_the_knob() -> None:
    """conftest.py's loop factory hook under ``MESHKIT_TEST_LOOP=eager``."""
    env = {**os.environ, "MESHKIT_TEST_LOOP": "eager"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:randomly",
         "-p", "no:cacheprovider",
         f"{Path(__file__).relative_to(REPO)}::test_the_running_loop_is_of_the_suites_kind"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "1 passed" in out.stdout
