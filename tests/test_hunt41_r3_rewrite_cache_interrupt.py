"""Ctrl-C while tests/support/rewrite_cache.py's forked pool rewrites a clean checkout's
test modules (the first seconds of a ``make test``): each pool process took the SIGINT
too and died printing ``Process ForkPoolWorker-N:`` and its traceback into the run's
output, beside pytest's own one-line ``KeyboardInterrupt``. The pool's processes now
leave SIGINT to the process that started them, which ends the pool and the session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
        reason="the pool runs only with two CPUs or more (Linux)",
    ),
]

_REPO = Path(__file__).resolve().parents[1]

# A session whose rewrites are slow (0.3 s each), so the pool is surely at work when
# the SIGINT comes.
_CONFTEST = """
import time
from tests.support import rewrite_cache

_real = rewrite_cache._REWRITE_TEST

def _slow(path, config):
    time.sleep(0.3)
    return _real(path, config)

rewrite_cache._REWRITE_TEST = _slow

def pytest_sessionstart(session):
    rewrite_cache.rewrite_ahead(session.config)
"""


def _children(pid: int) -> list[str]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return found.stdout.split()


def test_ctrl_c_during_the_pool_prints_no_pool_process_traceback(tmp_path: Path) -> None:
    """SIGINT to the session's process group while the pool rewrites: pytest's own
    interruption only, no ``ForkPoolWorker`` line, no process of the session left."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(_CONFTEST)
    for i in range(60):
        (tmp_path / f"test_m{i:02d}.py").write_text(f"def test_{i}():\n    assert {i} == {i}\n")
    env = {**os.environ, "PYTHONPATH": str(_REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_children(proc.pid)) >= 2, "the pool never started"
        time.sleep(0.5)  # the pool's processes at work
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    text = out.decode(errors="replace")
    assert "KeyboardInterrupt" in text, text
    assert "ForkPoolWorker" not in text, text
    assert "Traceback" not in text, text
    time.sleep(0.5)
    left = subprocess.run(
        ["pgrep", "-s", str(proc.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert left == [], left


def test_a_pool_process_killed_leaves_the_rest_to_the_collection(tmp_path: Path) -> None:
    """One pool process SIGKILLed while the pool rewrites (the OOM killer of a loaded CI
    box): multiprocessing.Pool lost its task and waited for it for ever (the session
    hung: nothing in 40 s); now the session goes on, the collection rewriting what the
    pool did not, and every test runs."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(_CONFTEST)
    for i in range(60):
        (tmp_path / f"test_m{i:02d}.py").write_text(f"def test_{i}():\n    assert {i} == {i}\n")
    env = {**os.environ, "PYTHONPATH": str(_REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        kids = _children(proc.pid)
        assert len(kids) >= 2, "the pool never started"
        time.sleep(0.5)  # the pool's processes at work
        os.kill(int(kids[0]), signal.SIGKILL)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the session hung after a pool process was killed")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "60 passed" in text, text
