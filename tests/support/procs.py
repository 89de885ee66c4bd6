"""Child processes for tests that SIGKILL them: started with asyncio, stdout lines
collected as they come, stderr to a file, killed (never left behind) at the end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

from tests.support.wait import until

_ROOT = Path(__file__).resolve().parents[2]


class Child:
    """One running ``python -m <module> <args>``; ``lines`` holds its stdout so far."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def stderr(self) -> str:
        """What it wrote to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    async def wait_line(self, prefix: str, timeout_s: float = 10.0) -> str:
        """The first stdout line starting with ``prefix``, waiting up to ``timeout_s``;
        AssertionError (with its stderr tail) if the process exits or time runs out."""
        found: list[str] = []

        def seen() -> bool:
            found[:] = [ln for ln in self.lines if ln.startswith(prefix)]
            if not found and self.proc.returncode is not None:
                raise AssertionError(f"exited {self.proc.returncode} before {prefix!r}: "
                                     f"{self.stderr()[-2000:]}")
            return bool(found)

        await until(seen, timeout_s=timeout_s, what=f"line {prefix!r}")
        return found[0]

    async def kill(self) -> int:
        """SIGKILL it (if still running) and reap it; returns the exit status."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        code = await asyncio.wait_for(self.proc.wait(), 10)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._reader, 5)
        return code

    async def wait_exit(self, timeout_s: float = 10.0) -> int:
        """Wait for it to exit by itself; returns the exit status."""
        code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        await asyncio.wait_for(self._reader, 5)
        return code


class Children:
    """Starts :class:`Child` processes; :meth:`close` kills the ones still running."""

    def __init__(self, log_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.started: list[Child] = []

    async def start(self, module: str, *args: str) -> Child:
        """Start ``python -m module args`` in the repository root."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / f"{module.rsplit('.', 1)[-1]}-{len(self.started)}.err"
        with path.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", module, *args, stdout=asyncio.subprocess.PIPE,
                stderr=err, env=self.env, cwd=_ROOT)
        child = Child(proc, path)
        self.started.append(child)
        return child

    async def close(self) -> None:
        """Kill and reap every child still running."""
        for c in self.started:
            await c.kill()


@contextlib.asynccontextmanager
async def children(log_dir: Path, env: Mapping[str, str] | None = None,
                   ) -> AsyncIterator[Children]:
    """A :class:`Children` whose processes are all killed when the block ends."""
    kids = Children(log_dir, env)
    try:
        yield kids
    finally:
        await kids.close()


def lines_matching(lines: Sequence[str], prefix: str) -> list[list[str]]:
    """The whitespace-split fields of the lines starting with ``prefix``."""
    return [ln.split() for ln in lines if ln.startswith(prefix)]


def stop_process(pid: int, timeout_s: float = 5.0) -> None:
    """SIGSTOP ``pid`` and return once every one of its threads is stopped (state ``T``
    in ``/proc/<pid>/task/*/stat``).

    ``kill()`` returns when the signal is queued: a thread running on another CPU stops
    only when it next returns to user space, which on a loaded VM can be milliseconds
    later (a NATS server answered a publish sent after ``kill(SIGSTOP)`` returned).
    Raises ``TimeoutError`` if a thread is still running after ``timeout_s`` seconds."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout_s
    while True:
        states = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                stat = (task / "stat").read_text()
                states.append(stat[stat.rindex(")") + 2])
        if all(s in "Tt" for s in states):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} not stopped after {timeout_s} s: {states}")
        time.sleep(0.001)


@contextlib.contextmanager
def pidfd_child_watcher() -> Iterator[None]:
    """asyncio's pidfd child watcher for the block on Python 3.11 (3.12's default; later
    Pythons keep theirs): the threaded 3.11 one, blocked in ``waitpid`` already, reaps an
    exiting child first, which hides the window where a ``Popen.poll()`` reaps it and the
    watcher then reports 255."""
    if sys.version_info >= (3, 12):
        yield
        return
    policy = asyncio.get_event_loop_policy()
    old = policy.get_child_watcher()
    policy.set_child_watcher(asyncio.PidfdChildWatcher())
    try:
        yield
    finally:
        policy.set_child_watcher(old)


def until_exited(pid: int, what: str = "the child", timeout_s: float = 30.0) -> None:
    """Block (the loop does not run: its child watcher reads nothing meanwhile) until
    child ``pid`` has exited, without reaping it (``WNOWAIT``); at most ``timeout_s``
    seconds, then AssertionError "``what`` did not exit"."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return
        except ChildProcessError:  # the watcher read it already (the loop ran meanwhile)
            return
        assert time.monotonic() < deadline, f"{what} did not exit"
        time.sleep(0.01)  # blocking the loop is the point
