"""The harness reads a worker's real exit status, not 255.

``_Proc.signal`` (``stop()``'s SIGTERM and SIGKILL after the grace for the EOF) used
``Process.send_signal``, i.e. ``Popen.send_signal``, whose ``poll()`` reaps a worker that
exited (on the EOF) before asyncio's child watcher read it: the watcher then found none
and reported 255 (the threaded watcher's "Unknown child process pid ..., will report
returncode 255" that a ``make bench`` printed after the fan-out scenario). It now
signals with ``os.kill``, which reaps nothing. The pidfd watcher (Python 3.12's
default; set here on 3.11) leaves the window open for as long as the loop is busy.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.procs import _Proc
from tests.support.procs import pidfd_child_watcher, until_exited

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pidfd_watcher() -> Iterator[None]:
    """The pidfd child watcher on Python 3.11 (3.12's default; later Pythons keep
    theirs)."""
    with pidfd_child_watcher():
        yield


@pytest.mark.usefixtures("pidfd_watcher")
async def test_signal_to_a_worker_that_exited_keeps_its_status(tmp_path: Path) -> None:
    """A worker that exited 3 before its SIGTERM reads 3, five times out of five."""
    codes = []
    for _ in range(5):
        proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", "sleep 0.2; exit 3")
        worker = _Proc("w", proc, tmp_path / "w.log")
        until_exited(proc.pid)
        worker.signal(signal.SIGTERM)
        codes.append(await asyncio.wait_for(proc.wait(), 30))
    assert codes == [3] * 5, codes
