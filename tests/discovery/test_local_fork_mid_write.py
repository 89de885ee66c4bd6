"""LocalRegistry: a fork while the registry's worker thread is inside a write.

SQLite keeps the locks a process holds on a file in process-wide tables
(https://sqlite.org/howtocorrupt.html section 2.6), which a forked child inherits while
the operating system's locks (fcntl) are not inherited: a child forked during a write
(a pre-fork master's heartbeat, about 1 ms of every heartbeat interval) took the write
lock for held by its own process for good, and every write it made, its workers'
register() included, failed "database is locked" after ``busy_timeout_s``, whatever the
parent did. Forks now wait (at most ``busy_timeout_s`` and a second) for the operation in
flight to end. The scenario runs in a script of its own: the test process runs grpc's
threads and is never forked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = '''
import asyncio, json, os, sys, threading
from pathlib import Path
from meshkit.discovery import Instance, LocalOptions, LocalRegistry

opts = LocalOptions(path=Path(sys.argv[1]), ttl_s=30, busy_timeout_s=1)
reg = LocalRegistry(opts)
started, release = threading.Event(), threading.Event()
pids = []


def hold(conn):  # a heartbeat's write transaction, held open until released
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE last_write SET seq = seq + 1")
    started.set()
    release.wait(10)
    conn.execute("COMMIT")


async def register_in_child():
    try:
        await reg.register(Instance(service="svc", instance_id="worker",
                                    host="127.0.0.1", port=20001))
        return "ok"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def fork():
    pid = os.fork()
    if pid == 0:
        print(json.dumps({"child": asyncio.run(register_in_child())}), flush=True)
        os._exit(0)
    pids.append(pid)


async def main():
    await reg.register(Instance(service="svc", instance_id="master", host="127.0.0.1",
                                port=20000))
    holding = asyncio.ensure_future(reg._run(hold, write=True))
    await asyncio.to_thread(started.wait, 10)
    forker = threading.Thread(target=fork)
    forker.start()  # forks now, while the write is under way (or once it has ended)
    await asyncio.sleep(0.3)
    release.set()
    await holding
    await asyncio.to_thread(forker.join, 10)
    os.waitpid(pids[0], 0)
    await reg.close()


asyncio.run(main())
'''


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_worker_forked_during_a_write_can_write(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "reg")], cwd=REPO,
                          capture_output=True, text=True, timeout=50,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert proc.returncode == 0 and lines, proc.stdout + proc.stderr[-3000:]
    assert json.loads(lines[-1]) == {"child": "ok"}


def test_a_fork_ending_in_one_thread_leaves_another_threads_locks_held(
        tmp_path: Path) -> None:
    """Two threads forking at once (pools started from threads): the locks the at-fork
    hook took for one thread's fork are released by that fork's end only. They were kept
    in one list for the process, so a fork ending in another thread (one that had
    found nothing to take: its hook ran before the registry existed, or gave up
    waiting) released those the first thread held, which then copied the process with a
    registry operation possibly under way (the fault above). The hooks run here as
    os.fork() runs them, without a fork."""
    import threading

    from meshkit.discovery import _local

    reg = _local.LocalRegistry(_local.LocalOptions(path=tmp_path))
    took, done = threading.Event(), threading.Event()

    def fork_in_another_thread() -> None:
        _local._before_fork()
        took.set()
        done.wait(10)  # its fork under way
        _local._after_fork_in_parent()

    other = threading.Thread(target=fork_in_another_thread)
    _local._after_fork_in_parent()  # this thread's own fork, ending first with nothing
    other.start()
    try:
        assert took.wait(10)
        assert reg._lock.locked()
        _local._after_fork_in_parent()  # a fork of this thread ends meanwhile
        assert reg._lock.locked(), "the other thread's fork lost its hold on the registry"
    finally:
        done.set()
        other.join(10)
    assert not reg._lock.locked()


def test_a_busy_timeout_past_what_a_lock_can_wait_still_holds_at_fork(
        tmp_path: Path) -> None:
    """busy_timeout_s=1e10 ("wait for ever") is a valid option, but the at-fork hook
    waited busy_timeout_s + 1 s on a lock, which refuses more than threading.TIMEOUT_MAX
    (OverflowError): every fork printed the hook's traceback and went on with no
    registry held (those later in its order included)."""
    from meshkit.discovery import _local

    reg = _local.LocalRegistry(_local.LocalOptions(path=tmp_path, busy_timeout_s=1e10))
    _local._before_fork()
    try:
        assert reg._lock.locked()
    finally:
        _local._after_fork_in_parent()
    assert not reg._lock.locked()


_WAITING_SCRIPT = '''
import asyncio, json, os, subprocess, sys, threading, time
from pathlib import Path
from meshkit.discovery import Instance, LocalOptions, LocalRegistry

HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""
opts = LocalOptions(path=Path(sys.argv[1]), ttl_s=30, busy_timeout_s=4)
reg = LocalRegistry(opts)
took = []


def inst(name, port):
    return Instance(service="svc", instance_id=name, host="127.0.0.1", port=port)


def fork():
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        async def child():
            try:
                await reg.register(inst("worker", 20002))
                return "ok"
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"
        print(json.dumps({"child": asyncio.run(child())}), flush=True)
        os._exit(0)
    took.append((time.monotonic() - t0, pid))


async def main():
    await reg.register(inst("master", 20000))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(opts.path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    waiting = asyncio.ensure_future(reg.register(inst("second", 20001)))
    await asyncio.sleep(0.3)  # the worker thread waits for the other process's lock
    forker = threading.Thread(target=fork)
    forker.start()
    await asyncio.to_thread(forker.join, 20)
    holder.communicate("go\\n", timeout=20)
    second = (await asyncio.gather(waiting, return_exceptions=True))[0]
    os.waitpid(took[0][1], 0)
    print(json.dumps({"fork_s": took[0][0], "second": repr(second)}), flush=True)
    await reg.close()


asyncio.run(main())
'''


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_while_a_write_waits_for_another_process_is_not_held_up(
        tmp_path: Path) -> None:
    """A fork (a pre-fork master starting its workers) while the registry's worker
    thread waits for the file's lock, held by another process: the at-fork hook waited
    for the whole wait (busy_timeout_s, 5 s by default, and more), blocking the forking
    thread (the master's event loop) for as long. No SQLite lock is held while waiting
    between two tries, so the fork now goes on there: the wait is SQLite's own, short,
    busy handler, and the registry's retries let go of the hook's lock while they
    sleep. The child still writes once the other process is done."""
    proc = subprocess.run([sys.executable, "-c", _WAITING_SCRIPT, str(tmp_path / "reg")],
                          cwd=REPO, capture_output=True, text=True, timeout=50,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert proc.returncode == 0 and lines, proc.stdout + proc.stderr[-3000:]
    merged = {k: v for line in lines for k, v in line.items()}
    assert merged.get("child") == "ok", merged
    assert merged["fork_s"] < 2.0, merged  # was busy_timeout_s (4 s) and more
    assert merged["second"] == "None", merged  # the wait went on, and its write too
