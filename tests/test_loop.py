"""meshkit.run(): the event loop a service runs on, and the mesh working end to end on
uvloop's loop as on asyncio's."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from tests.support.echo import add_echo, method
from tests.support.skips import require_uvloop


@pytest.fixture(autouse=True)
def _needs_uvloop() -> None:
    require_uvloop()


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_run_takes_uvloop_when_installed_and_asyncio_when_asked() -> None:
    """By default the loop is uvloop's (installed here); ``use_uvloop=False`` keeps
    asyncio's; the coroutine's result comes back as from ``asyncio.run``."""
    assert meshkit.uvloop_installed()
    assert meshkit.run(_loop_module()).startswith("uvloop")
    assert meshkit.run(_loop_module(), use_uvloop=True).startswith("uvloop")
    assert meshkit.run(_loop_module(), use_uvloop=False).startswith("asyncio")


def test_run_without_uvloop_falls_back_or_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without uvloop the default runs on asyncio's loop; ``use_uvloop=True`` is a
    ConfigError that says how to install it, and the coroutine is closed, not leaked."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    assert not meshkit.uvloop_installed()
    assert meshkit.run(_loop_module()).startswith("asyncio")
    coro = _loop_module()
    with pytest.raises(meshkit.ConfigError, match=r"meshkit\[fast\]"):
        meshkit.run(coro, use_uvloop=True)
    assert coro.cr_frame is None  # closed


def test_run_propagates_the_coroutines_exception() -> None:
    """An exception from ``main`` reaches the caller, as with ``asyncio.run``."""
    async def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        meshkit.run(fail())


def test_serve_lets_telemetry_count_its_calls_with_the_request_gate(tmp_path: Path) -> None:
    """``serve()`` hands its server telemetry the request gate's count of calls (what tells
    it on uvloop that a finishing call is alone); without a gate nothing counts them."""
    from meshkit.observability import TelemetryServerInterceptor

    async def main(limits: meshkit.ServerLimits) -> list[object]:
        reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=15.0))
        server = meshkit.MeshServer("echo", [add_echo("e1")], registry=reg,
                                    options=meshkit.ServeOptions(insecure=True, admin=None,
                                                                 drain_delay_s=0,
                                                                 limits=limits))
        await server.start()
        try:
            return [i.server_calls for i in server._chain
                    if isinstance(i, TelemetryServerInterceptor)] + [server.gate]
        finally:
            await server.drain()
            await reg.close()

    *counts, gate = meshkit.run(main(meshkit.ServerLimits()))
    assert gate is not None and counts == [gate.calls]  # type: ignore[attr-defined]
    *counts, gate = meshkit.run(main(meshkit.ServerLimits(read_requests=False)))
    assert gate is None and counts == [None]


def test_defaults_serve_and_dial_on_uvloop(tmp_path: Path) -> None:
    """``serve()``/``dial()`` with their defaults (P2C, retries, ejection, request gate,
    deadline admission, metrics) on uvloop's loop: all four call kinds answer, a failure
    keeps its status, a deadline ends a call with DEADLINE_EXCEEDED, and the server
    drains."""
    async def requests() -> AsyncIterator[bytes]:
        for r in (b"a", b"b"):
            yield r

    async def main() -> str:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=5.0,
                                         poll_interval_s=0.05))
        server = meshkit.MeshServer("echo", [add_echo("e1")], registry=reg,
                                    options=meshkit.ServeOptions(insecure=True, admin=None,
                                                                 drain_delay_s=0, grace_s=1.0))
        await server.start()
        channel = meshkit.dial("echo", registry=reg,
                               options=meshkit.DialOptions(insecure=True))
        try:
            await channel.wait_for_endpoints(1, timeout_s=5)
            unary = channel.unary_unary(method("Unary"))
            assert [await unary(b"x%d" % i, timeout=5) for i in range(3)] == [
                b"e1|x0", b"e1|x1", b"e1|x2"]
            stream = channel.unary_stream(method("ServerStream"))
            assert [m async for m in stream(b"3", timeout=5)] == [b"e1|0", b"e1|1", b"e1|2"]
            joined = channel.stream_unary(method("ClientStream"))
            assert await joined(requests(), timeout=5) == b"e1|a,b"
            bidi = channel.stream_stream(method("Bidi"))
            assert [m async for m in bidi(requests(), timeout=5)] == [b"e1|a", b"e1|b"]
            for name, request, timeout_s, code in (
                    ("Fail", b"PERMISSION_DENIED", 5.0, grpc.StatusCode.PERMISSION_DENIED),
                    ("Sleep", b"2000", 0.2, grpc.StatusCode.DEADLINE_EXCEEDED)):
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    await channel.unary_unary(method(name))(request, timeout=timeout_s)
                assert ended.value.code() is code
            return "ok"
        finally:
            await channel.close()
            await server.drain()
            await reg.close()

    assert meshkit.run(main(), use_uvloop=True) == "ok"


async def test_async_tests_run_on_the_loop_asked_for() -> None:
    """``MESHKIT_TEST_LOOP=uvloop`` runs every async test on uvloop's loop (the suite's
    ``event_loop_policy`` fixture); otherwise on asyncio's."""
    want = "uvloop" if os.environ.get("MESHKIT_TEST_LOOP") == "uvloop" else "asyncio"
    assert (await _loop_module()).startswith(want)
