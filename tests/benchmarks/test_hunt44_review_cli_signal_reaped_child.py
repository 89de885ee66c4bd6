"""The harness signals no process but its own unreaped worker (review of 6a147c92).

``_Proc.signal`` and ``Supervisor.kill_all`` sent ``os.kill`` while ``returncode`` was
``None``; asyncio's child watcher reaps the worker (the threaded watcher in its thread,
the pidfd one in a loop callback) before the loop runs the callback that sets
``returncode``, and in that window the pid can already be another process's. The
signal now goes through a pidfd checked to be still an unreaped child
(:func:`examples.ecom._child.signal_child`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from benchmarks.procs import Supervisor, _Proc
from examples.ecom import _child

pytestmark = pytest.mark.timeout(60)


def _reap(pid: int, *, keep: bool = False) -> None:
    """Block the loop until child ``pid`` exited and is reaped (by us, or by the threaded
    watcher's thread): what the watcher does before the loop learns of it; with ``keep``
    until it exited, not reaping it."""
    deadline = time.monotonic() + 30.0
    flags = os.WEXITED | os.WNOHANG | (os.WNOWAIT if keep else 0)
    while True:
        try:
            if os.waitid(os.P_PID, pid, flags) is not None:
                return
        except ChildProcessError:
            return
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)  # blocking the loop is the point


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every signal sent (os.kill, signal.pidfd_send_signal) is recorded, none delivered."""
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: calls.append(("kill", pid)))
    if hasattr(signal, "pidfd_send_signal"):
        monkeypatch.setattr(signal, "pidfd_send_signal",
                            lambda fd, sig, *a: calls.append(("pidfd", fd)))
    return calls


async def _reaped_worker(tmp_path: Path) -> _Proc:
    if type(asyncio.get_running_loop()).__module__.startswith("uvloop"):
        # libuv reaps a child in its SIGCHLD handler and sets returncode in the same
        # callback (UVProcess._on_exit): the window staged here does not exist there, and a
        # child reaped by another (this test's waitid) is never reported (libuv ignores
        # ECHILD), so proc.wait() would never end
        pytest.skip("uvloop sets returncode when it reaps: no reaped-but-unknown window")
    proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", "exit 3")
    worker = _Proc("w", proc, tmp_path / "w.log")
    _reap(proc.pid)
    assert proc.returncode is None  # the loop has not run the watcher's callback
    return worker


async def test_signal_sends_nothing_to_a_reaped_worker(
        tmp_path: Path, sent: list[tuple[str, int]]) -> None:
    """A worker reaped before the loop saw it: _Proc.signal sends no signal."""
    worker = await _reaped_worker(tmp_path)
    worker.signal(signal.SIGTERM)
    assert sent == []
    await asyncio.wait_for(worker.proc.wait(), 30)


async def test_kill_all_sends_nothing_to_a_reaped_worker(
        tmp_path: Path, sent: list[tuple[str, int]]) -> None:
    """Supervisor.kill_all (an interrupted run) sends no SIGKILL to a reaped worker."""
    worker = await _reaped_worker(tmp_path)
    supervisor = Supervisor(tmp_path, tmp_path)
    supervisor.procs = [worker]
    supervisor.kill_all()
    assert sent == []
    await asyncio.wait_for(worker.proc.wait(), 30)


async def test_a_running_worker_is_still_signalled(tmp_path: Path) -> None:
    """A running worker gets its SIGTERM (and reads -15)."""
    proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", "sleep 30")
    worker = _Proc("w", proc, tmp_path / "w.log")
    worker.signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == -signal.SIGTERM


async def test_signal_child_of_an_exited_unreaped_child_sends_nothing() -> None:
    """An exited child not read yet: no signal, and its status is kept for the watcher."""
    proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", "exit 3")
    _reap(proc.pid, keep=True)
    assert _child.signal_child(proc.pid, signal.SIGTERM) is False
    assert await asyncio.wait_for(proc.wait(), 30) == 3
