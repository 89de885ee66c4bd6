"""Worker processes as the runner sees them: start, talk to, measure, and always stop.

:class:`Supervisor` starts every process of a run (:mod:`benchmarks._worker` servers and
clients) and stops all of them in :meth:`Supervisor.close` (stdin closed, then SIGTERM,
then SIGKILL), which the runner calls in a ``finally``; :meth:`Supervisor.kill_all` is the
synchronous last resort for an interrupted run. CPU time and peak RSS of a process come
from the OS (``/proc/<pid>/stat`` and ``/proc/<pid>/status``; psutil where there is no
``/proc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from examples.ecom._child import signal_child

__all__ = ["LOOP_ENV", "ClientProc", "ServerProc", "Supervisor", "WorkerError",
           "WorkerUnavailable", "cpu_seconds", "peak_rss_kb"]

REPO = Path(__file__).resolve().parents[1]
LOOP_ENV = "MESHKIT_BENCH_LOOP"  # "uvloop": workers run on uvloop's event loop
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_LINE_LIMIT = 1 << 27


class WorkerError(RuntimeError):
    """A worker failed to start or to answer; the message ends with its log's last lines."""


class WorkerUnavailable(WorkerError):
    """A worker could not build its stack because a layer is unavailable."""


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all threads), or ``None`` if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            rest = f.read().rsplit(b")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / _TICK
    except FileNotFoundError:
        return None
    except OSError:
        pass
    try:
        import psutil  # type: ignore[import-untyped]

        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except Exception:
        return None


def peak_rss_kb(pid: int) -> int | None:
    """Peak resident set size of ``pid`` in KiB (``VmHWM``), or ``None`` if unknown."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss // 1024)
    except Exception:
        return None


class _Proc:
    """A worker process with a JSON-lines channel and a log file."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log
        self.pid = proc.pid
        self._lock = asyncio.Lock()

    def tail(self, lines: int = 12) -> str:
        """The last lines of the worker's log."""
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    @property
    def alive(self) -> bool:
        """Whether the process has not exited."""
        return self.proc.returncode is None

    async def read(self, timeout_s: float) -> dict[str, Any]:
        """The next JSON line from the worker.

        Raises:
            WorkerError: it exited, or said nothing within ``timeout_s``.
        """
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        except TimeoutError:
            raise WorkerError(f"{self.name}: no answer within {timeout_s:.0f}s\n"
                              + self.tail()) from None
        if not line:
            await asyncio.sleep(0.05)
            raise WorkerError(f"{self.name}: exited ({self.proc.returncode})\n" + self.tail())
        msg: dict[str, Any] = json.loads(line)
        if "error" in msg:
            cls = WorkerUnavailable if msg.get("unavailable") else WorkerError
            raise cls(f"{self.name}: {msg['error']}")
        return msg

    async def request(self, cmd: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one command and wait for its answer (one at a time per worker)."""
        async with self._lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
            await self.proc.stdin.drain()
            return await self.read(timeout_s)

    def cpu_s(self) -> float | None:
        """CPU seconds used so far (from the OS)."""
        return cpu_seconds(self.pid)

    def peak_rss_kb(self) -> int | None:
        """Peak RSS so far, KiB (from the OS)."""
        return peak_rss_kb(self.pid)

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` if the process still runs, with
        :func:`examples.ecom._child.signal_child`: not ``Process.send_signal``
        (``Popen.send_signal``), whose ``poll()`` reaps a worker that exited before
        asyncio's child watcher read it, which then reports 255 ("Unknown child process
        pid ..., will report returncode 255"); nor a bare ``os.kill``, which signals
        whichever process has the pid once the watcher reaped the worker but before the
        loop set its ``returncode``. ``signal_child`` reaps nothing and signals only this
        worker, through a pidfd, while it is not reaped."""
        if self.alive:
            signal_child(self.pid, sig)

    async def stop(self, grace_s: float = 3.0) -> None:
        """Close stdin (the worker exits on EOF), then SIGTERM, then SIGKILL."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
        for sig, wait_s in ((None, grace_s), (signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            if not self.alive:
                break
            if sig is not None:
                self.signal(sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), wait_s)


class ServerProc(_Proc):
    """An echo server worker; ``port`` and ``t_ready`` (monotonic s) once started."""

    port: int = 0
    t_ready: float = 0.0
    instance_id: str = ""

    async def go(self, timeout_s: float = 30.0) -> float:
        """Let a server started with ``hold=True`` bind and register; returns the monotonic
        time its registration completed."""
        ready = await self.request({"op": "go"}, timeout_s)
        self.port = int(ready["port"])
        self.t_ready = float(ready["t"])
        return self.t_ready

    async def wait_draining(self, timeout_s: float) -> float:
        """After SIGTERM: the monotonic time the worker started draining."""
        return float((await self.read(timeout_s))["t"])


class ClientProc(_Proc):
    """A load-generating client worker."""


class Supervisor:
    """Starts the worker processes of a run and guarantees they are stopped.

    Args:
        workdir: where logs (``<name>.log``) go.
        secrets_dir: the :class:`benchmarks.stacks.Secrets` directory passed to workers.
    """

    def __init__(self, workdir: Path, secrets_dir: Path, *, loop: str = "asyncio") -> None:
        self.workdir = workdir
        self.secrets_dir = secrets_dir
        self.loop = loop  # the event loop of every worker: "asyncio" or "uvloop"
        self.drain_delay_s = 1.0  # servers' default; the run sets its plan's
        self.procs: list[_Proc] = []
        (workdir / "logs").mkdir(parents=True, exist_ok=True)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        env[LOOP_ENV] = self.loop
        return env

    async def _spawn(self, cls: type[_Proc], name: str, args: Sequence[str]) -> Any:
        log = self.workdir / "logs" / f"{name}.log"
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "benchmarks._worker", *args, cwd=REPO, env=self._env(),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
                limit=_LINE_LIMIT)
        p = cls(name, proc, log)
        self.procs.append(p)
        return p

    async def server(self, name: str, *, kind: str, layers: Sequence[str] = (),
                     service: str = "bench", registry: str = "", instance_id: str | None = None,
                     delay_s: float = 0.0, drain_delay_s: float | None = None,
                     tracing: bool = True,
                     hold: bool = False, timeout_s: float = 60.0) -> ServerProc:
        """Start an echo server worker and wait until it serves (and is registered), or,
        with ``hold``, until it is ready to (then :meth:`ServerProc.go`). ``drain_delay_s``:
        default :attr:`drain_delay_s`.

        Raises:
            WorkerUnavailable: a layer of its stack cannot be built here.
            WorkerError: it failed to start.
        """
        iid = instance_id or name
        if drain_delay_s is None:
            drain_delay_s = self.drain_delay_s
        args = ["server", "--kind", kind, "--layers", ",".join(layers), "--service", service,
                "--registry", registry, "--instance-id", iid, "--delay-s", str(delay_s),
                "--drain-delay-s", str(drain_delay_s), "--secrets", str(self.secrets_dir),
                "--tracing" if tracing else "--no-tracing", *(["--hold"] if hold else [])]
        p: ServerProc = await self._spawn(ServerProc, name, args)
        try:
            ready = await p.read(timeout_s)
        except WorkerError:
            await p.stop(1.0)
            raise
        p.instance_id = iid
        if not hold:
            p.port = int(ready["port"])
            p.t_ready = float(ready["t"])
        return p

    async def client(self, name: str, timeout_s: float = 60.0) -> ClientProc:
        """Start a client worker.

        Raises:
            WorkerError: it failed to start.
        """
        p: ClientProc = await self._spawn(ClientProc, name,
                                          ["client", "--secrets", str(self.secrets_dir)])
        await p.read(timeout_s)
        return p

    async def oneshot(self, name: str, args: Sequence[str], timeout_s: float) -> dict[str, Any]:
        """Run a worker that prints one JSON answer and exits (e.g. ``fanout``)."""
        p: _Proc = await self._spawn(_Proc, name, args)
        try:
            return await p.read(timeout_s)
        finally:
            await p.stop(2.0)

    async def close(self) -> None:
        """Stop every worker started (concurrently), however the run ended. A worker is
        forgotten once it stopped: when the close is interrupted, :meth:`kill_all` still
        kills the others."""
        procs = list(self.procs)
        try:
            await asyncio.gather(*(p.stop(1.0) for p in procs), return_exceptions=True)
        finally:
            self.procs = [p for p in self.procs if p.alive]

    def kill_all(self) -> None:
        """SIGKILL every worker still running, synchronously (interrupted runs)."""
        for p in self.procs:
            if p.proc.returncode is None:
                signal_child(p.pid, signal.SIGKILL)


async def wait_until(pred: Any, timeout_s: float, interval_s: float = 0.02) -> bool:
    """Poll ``pred()`` until true or ``timeout_s`` passes; returns whether it became true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(interval_s)
    return bool(pred())
