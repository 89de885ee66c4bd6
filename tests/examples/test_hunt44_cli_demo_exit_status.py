"""The demo reports an early-exiting service's real exit status, not 255.

``Stack.stop_all`` (and ``Stack.kill``) signalled a process it did not know to be done
with ``Process.terminate()``/``kill()``, i.e. ``subprocess.Popen.send_signal``, which
first calls ``poll()``: ``waitpid(WNOHANG)`` reaps a child that has exited and that
asyncio's child watcher has not read yet, and the watcher then finds none and reports
255 ("exit status already read: will report returncode 255"; the threaded watcher's
"Unknown child process pid"). With the pidfd watcher (Python 3.12's default; set here
on 3.11) a service that exited while the loop was busy read 255 in 12 of 20 tries. The
demo now signals with ``os.kill``, which reaps nothing.

Run as ``python -m`` this module is the "service": it says READY and exits 3.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import pidfd_child_watcher, until_exited

pytestmark = pytest.mark.timeout(120)

if __name__ == "__main__":  # the service: READY, then exit 3 at once
    print("READY exits-1 127.0.0.1:1", flush=True)
    raise SystemExit(3)


@pytest.fixture
def pidfd_watcher() -> Iterator[None]:
    """The pidfd child watcher (3.12's default) on Python 3.11, where the threaded one,
    blocked in ``waitpid`` already, reaps the child first; later Pythons keep theirs."""
    with pidfd_child_watcher():
        yield


@pytest.mark.usefixtures("pidfd_watcher")
async def test_stop_all_reports_the_exit_status_of_a_service_that_exited(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A service that exited 3 while the loop was busy reads 3 in stop_all's codes."""
    from examples.ecom import demo

    monkeypatch.setitem(demo.SERVICES, "exits", __name__)
    codes: list[int | None] = []
    for n in range(8):  # each try: 255 more often than not before
        stack = demo.Stack(tmp_path / f"w{n}", f"local://{tmp_path / 'registry'}", None)
        (tmp_path / f"w{n}").mkdir()
        p = await stack.start("exits", "exits-1", timeout_s=30)
        until_exited(p.proc.pid, "the service")
        codes.append((await asyncio.wait_for(stack.stop_all(5.0), 30))["exits-1"])
    assert codes == [3] * 8, codes


@pytest.mark.usefixtures("pidfd_watcher")
async def test_kill_of_a_service_that_exited_keeps_its_status(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stack.kill of an instance that exited already: its own status is kept."""
    from examples.ecom import demo

    monkeypatch.setitem(demo.SERVICES, "exits", __name__)
    stack = demo.Stack(tmp_path, f"local://{tmp_path / 'registry'}", None)
    p = await stack.start("exits", "exits-1", timeout_s=30)
    until_exited(p.proc.pid, "the service")
    stack.kill("exits-1")
    codes = await asyncio.wait_for(stack.stop_all(5.0), 30)
    assert codes == {"exits-1": 3}, codes
