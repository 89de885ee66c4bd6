"""Real OS processes sharing one LocalRegistry: SIGKILL, SIGTERM, and a live dial(); a
serving process that forks a worker, signals during a drain, a client ending at once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.balancer import RoundRobin
from meshkit.discovery import LocalOptions, LocalRegistry
from tests.support.echo import method
from tests.support.procs import children
from tests.support.wait import until

REPO = Path(__file__).resolve().parents[2]
Spawn = Callable[..., Awaitable[asyncio.subprocess.Process]]


# A launcher that starts the echo server with SIGTERM blocked, as one that ``sigwait()``s
# for signals in one thread and starts children from another hands it down (the signal
# mask survives exec). A process of its own, not a ``preexec_fn``: that runs Python in a
# child forked from this multi-threaded test process (grpc's threads), which the
# standard library warns may deadlock or die (the child once exited before READY).
_SIGTERM_BLOCKED = ("import os, signal, sys; "
                    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}); "
                    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    """Start echo server processes on the test's registry; kill leftovers at teardown."""
    procs: list[asyncio.subprocess.Process] = []
    uri = f"local://{tmp_path}?ttl_s=1&poll_interval_s=0.05"

    async def start(instance_id: str, *,
                    sigterm_blocked: bool = False) -> asyncio.subprocess.Process:
        launcher = ("-c", _SIGTERM_BLOCKED) if sigterm_blocked else ()
        errors = tmp_path / f"{instance_id}.stderr"
        with errors.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *launcher,
                "-m",
                "tests.support.echo",
                "--registry",
                uri,
                "--instance-id",
                instance_id,
                "--drain-delay-s",
                "0.3",
                cwd=REPO,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        procs.append(proc)
        assert proc.stdout is not None

        async def ready() -> None:
            while True:  # log lines may come first
                line = await proc.stdout.readline()  # type: ignore[union-attr]
                assert line, f"process exited before READY: {errors.read_text()[-2000:]}"
                if line.startswith(b"READY"):
                    return

        await asyncio.wait_for(ready(), 20)
        return proc

    yield start
    for p in procs:
        if p.returncode is None:
            p.kill()
            await p.wait()


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[LocalRegistry]:
    """The client side's view of the same registry file."""
    reg = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=1, poll_interval_s=0.05))
    yield reg
    await reg.close()


async def test_sigkilled_process_drops_out_within_ttl_and_new_one_is_used(
    spawn: Spawn, registry: LocalRegistry
) -> None:
    """A SIGKILLed instance leaves the live channel within its TTL; a new process joins it."""
    a, _ = await asyncio.gather(spawn("p1"), spawn("p2"))  # two interpreters at once
    opts = meshkit.DialOptions(
        insecure=True, balancer=RoundRobin
    )  # P2C would slow-start the newcomer
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(2, timeout_s=5)
        unary = ch.unary_unary(method("Unary"))
        a.kill()
        await a.wait()
        took = await until(
            lambda: [e.key for e in ch.endpoints()] == ["p2"], timeout_s=3, what="p1 gone"
        )
        assert took < 1.0 + 0.5  # TTL plus watch interval and slack
        assert (await unary(b"", timeout=2)).startswith(b"p2|")
        await spawn("p3")
        await ch.wait_for_endpoints(2, timeout_s=5)
        served = {(await unary(b"", timeout=2)).split(b"|")[0] for _ in range(6)}
        assert served == {b"p2", b"p3"}


async def test_sigterm_drains_exit_zero_without_failing_calls(
    spawn: Spawn, registry: LocalRegistry
) -> None:
    """SIGTERM deregisters at once, finishes in-flight work, exits 0, and no caller fails."""
    a, _ = await asyncio.gather(spawn("t1"), spawn("t2"))  # two interpreters at once
    async with meshkit.dial(
        "echo", registry=registry, options=meshkit.DialOptions(insecure=True)
    ) as ch:
        await ch.wait_for_endpoints(2, timeout_s=5)
        unary = ch.unary_unary(method("Unary"))
        sleep = ch.unary_unary(method("Sleep"))
        slow = [asyncio.ensure_future(sleep(b"300", timeout=5)) for _ in range(4)]
        await asyncio.sleep(0.05)
        a.send_signal(signal.SIGTERM)
        failures = 0
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.5
        while loop.time() < end:  # steady traffic through the drain
            try:
                await unary(b"", timeout=2)
            except grpc.aio.AioRpcError:
                failures += 1
            await asyncio.sleep(0.005)
        assert sorted(await asyncio.gather(*slow)) == [b"t1", b"t1", b"t2", b"t2"]
        assert await asyncio.wait_for(a.wait(), 10) == 0
        assert failures == 0
        assert [e.key for e in ch.endpoints()] == ["t2"]


async def test_sigterm_drains_a_server_started_with_sigterm_blocked(
    spawn: Spawn, registry: LocalRegistry
) -> None:
    """A server started with SIGTERM blocked in its inherited signal mask (a launcher that
    ``sigwait()``s in one thread and execs children from another; the mask survives fork
    and exec) installed its SIGTERM handler and left the signal blocked: ``kill <pid>``
    did nothing, the server never drained and was SIGKILLed at the end of the grace
    period, still registered. As Go's ``signal.Notify``, ``serve()`` now unblocks the
    signals it handles: it deregisters and exits 0."""
    proc = await spawn("b1", sigterm_blocked=True)
    async with meshkit.dial(
        "echo", registry=registry, options=meshkit.DialOptions(insecure=True)
    ) as ch:
        await ch.wait_for_endpoints(1, timeout_s=5)
        proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            code = None
        assert code == 0, "SIGTERM never reached serve() (still running 15 s later)"
        await until(lambda: not ch.endpoints(), timeout_s=5, what="b1 deregistered")


_SLOW_ANNOUNCE = """
import asyncio, sys
import meshkit
from tests.support.echo import add_echo

async def announce(server):
    print(f"READY {server.port}", flush=True)
    await asyncio.sleep(5.0)  # the slow rest of the announcement

async def main():
    await meshkit.serve(
        "echo", [add_echo("a1")], registry=meshkit.registry_from_uri(sys.argv[1]),
        options=meshkit.ServeOptions(insecure=True, instance_id="a1", admin=None,
                                     drain_delay_s=0.0, grace_s=1.0),
        on_started=announce)
    print("DRAINED", flush=True)

meshkit.run(main())
"""


async def test_sigterm_while_on_started_runs_drains_and_exits_zero(
    tmp_path: Path, registry: LocalRegistry
) -> None:
    """SIGTERM once serve() has registered, while its on_started hook still runs (a
    supervisor stopping a process it just saw ready): the hook is cancelled, the server
    drains and deregisters, serve() returns and the process exits 0, not killed by the
    signal's default action."""
    uri = f"local://{tmp_path}?ttl_s=30&poll_interval_s=0.05"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SLOW_ANNOUNCE, uri, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = b""
        while not line.startswith(b"READY"):  # log lines may come first
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line, "process exited before READY"
        assert [i.instance_id for i in await registry.instances("echo")] == ["a1"]
        await asyncio.sleep(0.3)  # well inside on_started
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stdout.read(), 10)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert b"DRAINED" in rest
        assert await registry.instances("echo") == frozenset()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _run_script(tmp_path: Path, name: str, source: str, *args: str,
                timeout_s: float = 90.0) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as a Python script of its own in the repository root (a process
    that may fork: never this one, whose grpc threads could hold a lock at the fork);
    its exit status, stdout and stderr."""
    script = tmp_path / name
    script.write_text(source)
    return subprocess.run(
        [sys.executable, str(script), *args], cwd=REPO, capture_output=True, text=True,
        timeout=timeout_s, env={**os.environ, "PYTHONPATH": str(REPO),
                                "MESHKIT_LOCAL_DIR": str(tmp_path / "default-registry")})


def _last_json(out: str) -> dict[str, Any]:
    """The last line of ``out`` that is a JSON object."""
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert lines, f"no result line in {out!r}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


_FORKED_WORKER = r'''
import asyncio, json, multiprocessing, sys, time
import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from tests.support.echo import add_echo

def work(running):  # a CPU worker of the service (multiprocessing, ProcessPoolExecutor)
    running.set()
    time.sleep(60)

async def main():
    reg = LocalRegistry(LocalOptions(path=sys.argv[1], ttl_s=5, poll_interval_s=0.05))
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=reg, options=meshkit.ServeOptions(
        insecure=True, admin=None, drain_delay_s=0.0, grace_s=1.0))
    result = {}

    async def operate():
        while srv.instance is None:
            await asyncio.sleep(0.05)
        fork = multiprocessing.get_context("fork")
        running = fork.Event()
        p = fork.Process(target=work, args=(running,), daemon=True)
        p.start()
        # the worker at work (its at-fork reset long done), as a fixed 0.5 s used to
        # assume; waited for off the loop, as the join below (bounded: a worker that
        # never starts is terminated all the same and the result says so)
        await asyncio.get_running_loop().run_in_executor(None, running.wait, 20.0)
        p.terminate()  # SIGTERM to the worker, not to the server
        await asyncio.get_running_loop().run_in_executor(None, p.join, 20.0)
        result["child_exitcode"] = p.exitcode
        # time for a signal relayed to this loop to act: its byte is in the wakeup fd
        # before the child exits, so the loop reads it at its next turn (ms)
        await asyncio.sleep(0.5)
        result["server_draining"] = srv.draining
        if p.is_alive():
            p.kill()
            p.join(10)
        if not srv.draining:
            await srv.drain()

    task = asyncio.create_task(operate())
    await srv.run_until_signal()
    await task
    await reg.close()
    print(json.dumps(result), flush=True)

(meshkit.run if sys.argv[2] == "meshkit.run" else asyncio.run)(main())
'''


@pytest.mark.timeout(120)
@pytest.mark.parametrize("runner", ["asyncio.run", "meshkit.run"])
def test_sigterm_to_a_forked_worker_neither_drains_the_server_nor_is_ignored(
        tmp_path: Path, runner: str) -> None:
    """A service serving with ``run_until_signal()`` (what ``serve()`` runs) forks a CPU
    worker (``multiprocessing``'s 'fork' start method, Linux's default before Python
    3.14, and ``ProcessPoolExecutor``'s) and ends it with ``Process.terminate()``
    (SIGTERM to the worker). The worker dies of it (exit -15) and the server goes on
    serving: meshkit undoes its signal handlers and the loop's wakeup fd in forked
    children (``os.register_at_fork``). The worker used to inherit asyncio's set-up (a
    no-op Python handler for SIGTERM, the wakeup fd: a socket shared with the parent's
    loop), so it ignored SIGTERM and ran on, and the signal number was written into the
    parent's socket: the parent drained and left the mesh although nobody signalled
    it. Under asyncio's loop and ``meshkit.run``'s (uvloop's when installed) alike."""
    proc = _run_script(tmp_path, "forked_worker.py", _FORKED_WORKER, str(tmp_path / "reg"),
                       runner)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _last_json(proc.stdout)
    assert result["server_draining"] is False, (
        f"SIGTERM to a forked worker drained the serving parent: {result}")
    assert result["child_exitcode"] == -signal.SIGTERM, (
        f"the forked worker ignored SIGTERM: {result}")


_SIGNAL_AT_THE_FORK = r"""
import os, signal, sys

ARMED = False

def signal_myself():  # SIGTERM to the child in the instant after fork()
    if ARMED:
        os.kill(os.getpid(), signal.SIGTERM)

# registered before meshkit is imported: after_in_child hooks run in registration
# order, so this one runs in the child before meshkit's reset of serve()'s signals
os.register_at_fork(after_in_child=signal_myself)

import asyncio, json, multiprocessing, time
import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from tests.support.echo import add_echo

def work():
    time.sleep(60)

async def main():
    global ARMED
    reg = LocalRegistry(LocalOptions(path=sys.argv[1], ttl_s=5, poll_interval_s=0.05))
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=reg, options=meshkit.ServeOptions(
        insecure=True, admin=None, drain_delay_s=0.0, grace_s=1.0))
    result = {}

    async def operate():
        global ARMED
        while srv.instance is None:
            await asyncio.sleep(0.05)
        p = multiprocessing.get_context("fork").Process(target=work, daemon=True)
        ARMED = True
        p.start()
        ARMED = False
        await asyncio.get_running_loop().run_in_executor(None, p.join, 20.0)
        result["child_exitcode"] = p.exitcode
        # time for a signal relayed to this loop to act: its byte is in the wakeup fd
        # before the child exits, so the loop reads it at its next turn (ms)
        await asyncio.sleep(0.5)
        result["server_draining"] = srv.draining
        if p.is_alive():
            p.kill()
            p.join(10)
        if not srv.draining:
            await srv.drain()

    task = asyncio.create_task(operate())
    await srv.run_until_signal()
    await task
    await reg.close()
    print(json.dumps(result), flush=True)

(meshkit.run if sys.argv[2] == "meshkit.run" else asyncio.run)(main())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and signal masks")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("runner", ["asyncio.run", "meshkit.run"])
def test_sigterm_to_a_worker_in_the_instant_after_its_fork_is_the_workers(
        tmp_path: Path, runner: str) -> None:
    """The worker of the test above gets SIGTERM in the instant between ``fork()`` and
    meshkit's reset of the signal handling it inherited (a process-group SIGTERM, a pool
    ended as it starts a worker): an ``after_in_child`` hook registered before meshkit's
    signals the child before meshkit's hook runs. The signal is the worker's: it dies of
    it, and the serving parent goes on. meshkit blocks the signals it handles across the
    fork (a ``before`` hook), so one arriving in the window stays pending until the child's
    reset has given them their handlers from before. It used to go through the inherited
    handler and wakeup fd: the parent drained and the child, whose handler was reset
    before the signal was run, ran on."""
    proc = _run_script(tmp_path, "signal_at_fork.py", _SIGNAL_AT_THE_FORK,
                       str(tmp_path / "reg"), runner)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _last_json(proc.stdout)
    assert result["server_draining"] is False, (
        f"SIGTERM to a worker just forked drained the serving parent: {result}")
    assert result["child_exitcode"] == -signal.SIGTERM, (
        f"the worker just forked ignored SIGTERM: {result}")


@pytest.mark.timeout(120)
async def test_a_second_signal_during_the_drain_does_not_kill_in_flight_calls(
        tmp_path: Path) -> None:
    """An echo service run with ``serve()`` (``drain_delay_s`` 0.5, ``grace_s`` 10) has a
    3 s call in flight when it gets SIGINT and, 0.3 s later, SIGTERM (Ctrl-C reaches the
    whole foreground group, then honcho/foreman/overmind send SIGTERM to their children;
    or an operator presses Ctrl-C, then runs ``kill``). The drain under way goes on: the
    call completes, the second signal is logged, the process exits 0 (README: "give
    in-flight ones grace_s, then exit 0"). serve() used to remove its signal handlers
    before draining, so the second signal met the default disposition: the process was
    killed at once (exit -15) and the in-flight call failed ``UNAVAILABLE``."""
    reg_dir = tmp_path / "reg"
    async with children(tmp_path / "logs") as kids:
        child = await kids.start(
            "tests.support.echo", "--registry",
            f"local://{reg_dir}?ttl_s=5&poll_interval_s=0.05", "--instance-id", "e1",
            "--drain-delay-s", "0.5", "--grace-s", "10")
        await child.wait_line("READY", timeout_s=30)
        reg = LocalRegistry(LocalOptions(path=reg_dir, ttl_s=5.0, poll_interval_s=0.05))
        try:
            async with meshkit.dial("echo", registry=reg,
                                    options=meshkit.DialOptions(insecure=True)) as ch:
                assert (await ch.unary_unary(method("Unary"))(b"x", timeout=20)
                        ).startswith(b"e1|")
                call = asyncio.ensure_future(
                    ch.unary_unary(method("Sleep"))(b"3000", timeout=30))
                await asyncio.sleep(0.5)
                assert not call.done()
                child.proc.send_signal(signal.SIGINT)
                await asyncio.sleep(0.3)
                child.proc.send_signal(signal.SIGTERM)
                answer: Any
                try:
                    answer = await call
                except Exception as exc:
                    answer = exc
                code = await child.wait_exit(timeout_s=40)
        finally:
            await reg.close()
    assert answer == b"e1", f"the in-flight call failed within grace_s: {answer!r}"
    assert code == 0, f"exit code {code} (stderr: {child.stderr()[-1500:]})"
    assert "SIGTERM" in child.stderr(), "the second signal was not logged"


_TWO_SERVES = r'''
import asyncio, json, signal, sys
import meshkit
from tests.support.echo import add_echo

def own_sigterm(signum, frame):  # the process's own SIGTERM handler from before serve()
    print("OWN-HANDLER", flush=True)

signal.signal(signal.SIGTERM, own_sigterm)

async def main(mode):
    reg = meshkit.registry_from_uri(sys.argv[1])
    opts = meshkit.ServeOptions(insecure=True, admin=None, drain_delay_s=0.0, grace_s=1.0)
    servers = {}
    both_started = asyncio.Event()
    returned = {"alpha": asyncio.Event(), "beta": asyncio.Event()}

    def on_started(server):
        servers[server.service] = server
        if len(servers) == 2:
            both_started.set()

    async def one(service):
        await meshkit.serve(service, [add_echo(service)], registry=reg, options=opts,
                            on_started=on_started)
        print("DRAINED", service, flush=True)
        returned[service].set()

    async def operate():
        await both_started.wait()
        if mode == "one-drained-first":  # alpha drained by the process, its serve() over
            await servers["alpha"].drain()
            await returned["alpha"].wait()
        print("STARTED", flush=True)

    await asyncio.gather(one("alpha"), one("beta"), operate())
    restored = signal.getsignal(signal.SIGTERM) is own_sigterm
    await reg.close()
    print(json.dumps({"sigterm_handler_restored": restored}), flush=True)

(meshkit.run if sys.argv[3] == "meshkit.run" else asyncio.run)(main(sys.argv[2]))
'''


@pytest.mark.timeout(150)
@pytest.mark.parametrize("runner", ["asyncio.run", "meshkit.run"])
@pytest.mark.parametrize("mode", ["together", "one-drained-first"])
async def test_sigterm_drains_every_serve_of_the_process(
        tmp_path: Path, mode: str, runner: str) -> None:
    """Two services served by one process, ``asyncio.gather(serve("alpha"),
    serve("beta"))`` (a process hosting two services; the README's TaskGroup example is
    the same shape), then SIGTERM, as Kubernetes sends at pod deletion: both drain
    (deregister, stop), ``gather`` returns and the process exits 0; with one of them
    drained by the process first ("one-drained-first"), SIGTERM still drains the other.
    Once the last ``serve()`` has returned, SIGTERM has the process's own handler from
    before back. Under asyncio's loop and ``meshkit.run``'s (uvloop's when installed).

    The fault: ``run_until_signal`` installed its handler with
    ``loop.add_signal_handler(sig, ...)``, and the loop keeps ONE handler per signal: the
    second serve() replaced the first's. SIGTERM drained "beta" only; its ``finally``
    then removed the SIGTERM/SIGINT handlers for both, so "alpha" kept serving (and
    registered) with no handler at all: the process never exited on its own, and the next
    SIGTERM killed it without a drain. Likewise the first serve() to end removed the
    handler of the one still serving (killed by SIGTERM's default action, exit -15).
    serve()'s docstring and the README promise "On SIGTERM/SIGINT: health NOT_SERVING and
    deregister first, ... then exit 0" for every server run by serve()."""
    mods, reg_dir = tmp_path / "mods", tmp_path / "reg"
    mods.mkdir()
    (mods / "two_serves.py").write_text(_TWO_SERVES)
    uri = f"local://{reg_dir}?ttl_s=30&poll_interval_s=0.05"
    env = {"PYTHONPATH": f"{mods}{os.pathsep}{REPO}"}
    reg = LocalRegistry(LocalOptions(path=reg_dir, ttl_s=30, poll_interval_s=0.05))
    try:
        async with children(tmp_path / "logs", env) as kids:
            child = await kids.start("two_serves", uri, mode, runner)
            await child.wait_line("STARTED", timeout_s=60)
            serving = {s for s in ("alpha", "beta") if await reg.instances(s)}
            assert serving == ({"beta"} if mode == "one-drained-first"
                               else {"alpha", "beta"})
            child.proc.send_signal(signal.SIGTERM)
            try:
                code: int | None = await child.wait_exit(timeout_s=40)
            except TimeoutError:
                code = None
            assert code == 0, (
                f"one SIGTERM did not end both serve() of the process (exit {code}; "
                f"stdout {child.lines}; stderr tail {child.stderr()[-1500:]!r})")
            assert {ln for ln in child.lines if ln.startswith("DRAINED")} == {
                "DRAINED alpha", "DRAINED beta"}, child.lines
            assert "OWN-HANDLER" not in child.lines, child.lines
            assert _last_json("\n".join(child.lines)) == {"sigterm_handler_restored": True}
        assert await reg.instances("alpha") == frozenset()
        assert await reg.instances("beta") == frozenset()
    finally:
        await reg.close()


_ACCESS_LOG_THEN_WORK = r'''
import asyncio, os, sys, time
import meshkit
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from meshkit.observability import configure_logging
from tests.support.echo import handler, method, raw_server

configure_logging(json=True, access_log_flush_interval_s=0.2)

async def client():
    async with raw_server(handler("e9")) as (server, port):
        reg = LocalRegistry(LocalOptions(path=sys.argv[1], ttl_s=5, poll_interval_s=0.05))
        await reg.register(Instance(service="raw", instance_id="r1", host="127.0.0.1",
                                    port=port))
        async with meshkit.dial("raw", registry=reg,
                                options=meshkit.DialOptions(insecure=True)) as ch:
            for i in range(3):
                await ch.unary_unary(method("Unary"))(f"call{i}".encode(), timeout=20)
        await reg.close()

asyncio.run(client())
time.sleep(0.6)  # 3x the flush interval; the process goes on with other work
sys.stderr.write("MARK 0.6 s after the run\n")
sys.stderr.flush()
os._exit(0)  # e.g. killed, or ended by a framework with os._exit
'''


@pytest.mark.timeout(90)
def test_access_lines_are_written_when_the_channel_closes(tmp_path: Path) -> None:
    """A client (a CLI tool, a batch job) with JSON logging (access-log flush interval
    0.2 s) makes three calls through ``dial()`` inside ``asyncio.run()``, closes the
    channel and goes on with other work, then ends with ``os._exit``. The three access
    lines are on stderr before it goes on: ``MeshChannel.close()`` flushes the access log
    as ``MeshServer.drain()`` does. They used to wait for a timer armed on the loop
    ``asyncio.run()`` then closed, which never fired: nothing was written 1.5 s later
    (the test waits 0.6 s, three flush intervals, before its mark),
    and a process ended by ``os._exit`` (or SIGKILL) lost them, where the README promises
    them "at most ``MESHKIT_ACCESS_LOG_FLUSH_S`` seconds late"."""
    proc = _run_script(tmp_path, "late_access.py", _ACCESS_LOG_THEN_WORK,
                       str(tmp_path / "reg"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    before_mark = proc.stderr.split("MARK", 1)[0]
    rpc_lines = [ln for ln in before_mark.splitlines() if '"event":"rpc"' in ln]
    assert len(rpc_lines) == 3, (
        f"access lines not written when the channel closed: {proc.stderr[-2000:]}")


_ACCESS_LOG_THEN_FORK = r'''
import asyncio, os, sys
from meshkit.observability import configure_logging
from meshkit.observability._logging import access_logger

configure_logging(json=True, access_log_flush_interval_s=30.0)  # lines wait in the buffer

async def main() -> str:
    for n in range(3):
        access_logger().info("rpc", n=n)  # what each call's access record does
    pid = os.fork()
    if pid == 0:
        return "child"
    os.waitpid(pid, 0)
    return "parent"

asyncio.run(main())
sys.exit(0)  # parent and child both end normally: atexit flushes each
'''


@pytest.mark.timeout(90)
def test_access_lines_buffered_at_a_fork_are_written_once(tmp_path: Path) -> None:
    """A process with JSON access logging has three access lines buffered (the flush
    interval not reached) when it forks a child (a pre-fork worker, a daemon's double
    fork) that ends normally. The child's copy of the buffer was written by its atexit
    flush, and the parent's at its own exit: each call logged twice, once more per child
    (access logs feed billing, audits and error-rate alerts). The buffer is written
    before the fork and the child's copy dropped: three lines."""
    proc = _run_script(tmp_path, "fork_access.py", _ACCESS_LOG_THEN_FORK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if '"event":"rpc"' in ln]
    assert len(lines) == 3, proc.stderr[-2500:]


async def test_a_blocked_signal_is_unblocked_while_handled_and_blocked_again_after() -> None:
    """The unblocking above lasts while meshkit handles the signal: the last listener's
    removal puts the signal back in the mask the thread had (a launcher's mask is its
    business once meshkit is done with the signal). A signal that was not blocked is left
    unblocked."""
    from meshkit.server import _listen_for_signal, _stop_listening

    loop = asyncio.get_running_loop()
    sig = signal.SIGUSR2
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {sig})
    try:
        _listen_for_signal(loop, sig, print)
        assert sig not in signal.pthread_sigmask(signal.SIG_BLOCK, ())
        _stop_listening(loop, sig, print)
        assert sig in signal.pthread_sigmask(signal.SIG_BLOCK, ())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        _listen_for_signal(loop, sig, print)
        _stop_listening(loop, sig, print)
        assert sig not in signal.pthread_sigmask(signal.SIG_BLOCK, ())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
