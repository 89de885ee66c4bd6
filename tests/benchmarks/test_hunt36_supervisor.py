"""The supervisor's last resort (``kill_all``) still knows the workers that an interrupted
``close`` had not stopped yet."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from benchmarks.procs import Supervisor, _Proc
from tests.support.wait import until

_STUCK = ("import signal, sys, time\n"
          "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
          "print('{}', flush=True)\n"
          "time.sleep(60)\n")


@pytest.mark.timeout(30)
async def test_kill_all_after_an_interrupted_close_kills_what_it_left(tmp_path: Path) -> None:
    """``close`` emptied its list of workers before stopping them: a second Ctrl-C while
    it waited (a worker ignoring stdin's end and SIGTERM takes up to 2 s before its
    SIGKILL) left ``kill_all`` an empty list, and the stuck worker outlived the run."""
    sup = Supervisor(tmp_path, tmp_path / "secrets")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _STUCK, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    stuck = _Proc("stuck", proc, tmp_path / "stuck.log")
    sup.procs.append(stuck)
    try:
        await stuck.read(10)  # it runs, with SIGTERM ignored
        closing = asyncio.ensure_future(sup.close())
        await asyncio.sleep(0.3)  # within its grace: stdin closed, no signal yet
        closing.cancel()  # the run interrupted again
        with pytest.raises(asyncio.CancelledError):
            await closing
        sup.kill_all()
        await until(lambda: proc.returncode is not None, timeout_s=5,
                    what="the stuck worker killed")
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, 9)
            await proc.wait()
