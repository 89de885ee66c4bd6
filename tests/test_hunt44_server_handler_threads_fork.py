"""A server's handler thread pool in a child made by ``os.fork()``.

:class:`meshkit._threads.HandlerThreads` kept its parent's state in a forked child: the
list of threads (none of which exist there: only the forking thread is copied), the idle
permits those threads had released, and the lock as it was at the fork. A call submitted
in the child took an idle thread's permit and was queued for a thread that is not there:
its future never completed (a plain-function handler's call hung until its deadline);
with the pool full in the parent it was only counted owed, the same; with another thread
holding the pool's lock at the fork, ``submit()`` blocked for ever. Now the pool starts
afresh in the child (``meshkit._fork.reset_in_forked_child``), as the registries and the
random sources do.

The fork runs in a subprocess of its own (the test process has threads a fork would
copy); the child exits 0 when its call ran, the parent of the fork prints that status.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(90),
              pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")]

_REPO = Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent("""
    import os, sys, threading, warnings
    warnings.simplefilter("ignore")  # (3.12: fork of a process with threads)
    from concurrent.futures import TimeoutError as FutureTimeout
    from meshkit._threads import HandlerThreads

    case = sys.argv[1]
    pool = HandlerThreads(2, "hunt44-fork")
    # in use in the parent: threads started, idle again (their permits released)
    assert [pool.submit(lambda i=i: i).result(timeout=10) for i in range(2)] == [0, 1]
    if case == "full":  # both threads busy at the fork: a new call is owed one
        release = threading.Event()
        busy = [pool.submit(release.wait, 30) for _ in range(2)]
    held = threading.Event()
    free = threading.Event()
    if case == "locked":  # another thread holds the pool's lock at the fork
        def hold():
            with pool._lock:
                held.set()
                free.wait(30)
        threading.Thread(target=hold, daemon=True).start()
        held.wait(10)

    pid = os.fork()
    if pid == 0:  # the child: one call, bounded, on a thread of its own pool
        status = [3]
        try:
            done = threading.Event()
            def call():
                try:
                    if pool.submit(lambda: 42).result(timeout=5) == 42:
                        status[0] = 0
                except FutureTimeout:
                    status[0] = 4  # queued for a thread that is not there
                except BaseException:
                    status[0] = 5
                done.set()
            threading.Thread(target=call, daemon=True).start()
            if not done.wait(10):
                status[0] = 6  # submit() itself blocked
        finally:
            os._exit(status[0])
    free.set()
    if case == "full":
        release.set()
    _, raw = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(raw), flush=True)
""")


@pytest.mark.parametrize("case", ["idle", "full", "locked"],
                         ids=["idle-threads", "busy-threads", "lock-held"])
def test_a_forked_childs_pool_runs_its_calls(case: str) -> None:
    """The child's call runs on a thread of the child's (status 0), whether the parent's
    threads were idle, busy, or one held the pool's lock at the fork."""
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, case], cwd=_REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "child 0", (proc.stdout, proc.stderr)
