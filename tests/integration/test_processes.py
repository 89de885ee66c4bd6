"""Real OS processes sharing one LocalRegistry: SIGKILL, SIGTERM, and a live dial()."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

import meshkit
from meshkit.balancer import RoundRobin
from meshkit.discovery import LocalOptions, LocalRegistry
from tests.support.echo import method
from tests.support.wait import until

REPO = Path(__file__).resolve().parents[2]
Spawn = Callable[[str], Awaitable[asyncio.subprocess.Process]]


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    """Start echo server processes on the test's registry; kill leftovers at teardown."""
    procs: list[asyncio.subprocess.Process] = []
    uri = f"local://{tmp_path}?ttl_s=1&poll_interval_s=0.05"

    async def start(instance_id: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
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
            stderr=asyncio.subprocess.DEVNULL,
        )
        procs.append(proc)
        assert proc.stdout is not None

        async def ready() -> None:
            while True:  # log lines may come first
                line = await proc.stdout.readline()  # type: ignore[union-attr]
                assert line, "process exited before READY"
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
    a = await spawn("p1")
    await spawn("p2")
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
    a = await spawn("t1")
    await spawn("t2")
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
