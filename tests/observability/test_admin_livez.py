"""The admin server's liveness probe /livez: up while the event loop answers, whatever the
mesh's readiness (before a server starts, while it drains, with its registry failing)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.observability import AdminOptions, AdminServer
from meshkit.observability import _admin as admin_module
from tests.support.echo import add_echo
from tests.support.wait import until


async def _probe(url: str, method: str = "GET") -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.request(method, url) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


async def test_livez_answers_before_start_while_serving_and_during_drain(
        registry: LocalRegistry, prom: CollectorRegistry) -> None:
    """/livez answers 200 ``ok`` (text, never cached, HEAD too) before any server exists,
    while one serves and while it drains, when /readyz answers 503."""
    admin = AdminServer(AdminOptions(registry=prom))
    await admin.start()
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.5,
                                                          grace_s=1.0))
    drain: asyncio.Task[None] | None = None
    try:
        status, body, headers = await _probe(admin.url + "/livez")
        assert (status, body) == (200, "ok\n")
        assert headers["Content-Type"].startswith("text/plain")
        assert headers["Cache-Control"] == "no-store"
        assert (await _probe(admin.url + "/livez", "HEAD"))[0] == 200
        assert (await _probe(admin.url + "/readyz"))[0] == 503  # no server yet
        await srv.start()
        await until(lambda: srv.stats().ready, what="registered")
        assert (await _probe(admin.url + "/livez"))[:2] == (200, "ok\n")
        drain = asyncio.get_running_loop().create_task(srv.drain())
        await until(lambda: srv.draining, what="draining")
        assert (await _probe(admin.url + "/readyz"))[0] == 503
        assert (await _probe(admin.url + "/livez"))[:2] == (200, "ok\n")
        assert not drain.done()  # still inside drain_delay_s
    finally:
        if drain is not None:
            await drain
        else:
            await srv.drain()
        await admin.stop()


async def test_livez_answers_while_the_registry_fails(
        registry: LocalRegistry, prom: CollectorRegistry) -> None:
    """/livez stays 200 while a dependency is down: a server whose registration fails is
    not ready (/readyz 503), yet the process is alive."""

    class _Down(LocalRegistry):
        async def register(self, instance: object) -> None:
            raise OSError("registry down")

    down = _Down(registry.options)
    admin = AdminServer(AdminOptions(registry=prom))
    await admin.start()
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=down,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0,
                                                          grace_s=1.0))
    start = asyncio.get_running_loop().create_task(srv.start())
    try:
        await until(lambda: start.done() or srv.live, what="server bound or failed")
        assert (await _probe(admin.url + "/readyz"))[0] == 503
        assert (await _probe(admin.url + "/livez"))[:2] == (200, "ok\n")
    finally:
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
        await srv.drain()
        await down.close()
        await admin.stop()


@contextlib.asynccontextmanager
async def _served_on_another_loop(
        tmp_path: Path, service: str,
        prepare: Callable[[asyncio.AbstractEventLoop], None] | None = None,
) -> AsyncIterator[tuple[asyncio.AbstractEventLoop, meshkit.MeshServer]]:
    """A MeshServer ``service`` started on another event loop of the process (a thread's
    own, ``prepare(loop)`` called before it starts), drained and that loop closed after."""
    loop_b = asyncio.new_event_loop()
    thread = threading.Thread(target=loop_b.run_forever, name="loop-b", daemon=True)
    thread.start()
    send = loop_b.call_soon_threadsafe  # (before prepare: it may wrap the loop's own)
    if prepare is not None:
        prepare(loop_b)

    async def start_b() -> meshkit.MeshServer:
        reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=3.0))
        srv = meshkit.MeshServer(service, [add_echo("w1")], registry=reg,
                                 options=meshkit.ServeOptions(insecure=True,
                                                              drain_delay_s=0.0, grace_s=1.0))
        await srv.start()
        return srv

    def on_b(coro: Any) -> Any:
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop_b))

    try:
        srv = await on_b(start_b())
        try:
            yield loop_b, srv
        finally:
            await on_b(srv.drain())
            await on_b(srv.registry.close())
    finally:
        send(loop_b.stop)
        await asyncio.to_thread(thread.join, 10)
        loop_b.close()


async def test_livez_fails_while_another_loop_serving_a_server_is_wedged(
        tmp_path: Path, prom: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """A MeshServer on another event loop of the process (a thread's own, served by this
    loop's admin server): while that loop is wedged (a callback blocks it) /livez answers
    503 naming its service, and 200 again once the loop runs; /readyz is not involved."""
    monkeypatch.setattr(admin_module, "_WEDGED_S", 0.5)
    admin = AdminServer(AdminOptions(registry=prom))
    await admin.start()
    block = threading.Event()
    try:
        async with _served_on_another_loop(tmp_path, "wedged-svc") as (loop_b, _srv):
            try:
                assert (await _probe(admin.url + "/livez"))[:2] == (200, "ok\n")
                loop_b.call_soon_threadsafe(block.wait)  # loop b runs nothing more

                async def failing() -> bool:
                    return (await _probe(admin.url + "/livez"))[0] == 503

                await until(failing, timeout_s=10, what="/livez 503 for the wedged loop")
                status, body, _ = await _probe(admin.url + "/livez")
                assert status == 503 and "wedged-svc" in body, body
                block.set()

                async def live() -> bool:
                    return (await _probe(admin.url + "/livez"))[0] == 200

                await until(live, timeout_s=10, what="/livez 200 once the loop runs again")
            finally:
                block.set()
    finally:
        await admin.stop()


async def test_probes_of_a_wedged_loop_queue_one_callback(
        tmp_path: Path, prom: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """50 /livez probes while another loop serving a server is wedged send that loop one
    callback (503 once it waited), and the loop, run again, answers 200 at the next
    probes: however many probes arrive, it holds one unrun callback from them (per admin
    server), not one per probe."""
    monkeypatch.setattr(admin_module, "_WEDGED_S", 0.2)
    pings = 0
    sends: list[Any] = []

    def count_pings(loop: asyncio.AbstractEventLoop) -> None:
        send = loop.call_soon_threadsafe
        sends.append(send)

        def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal pings
            if type(getattr(callback, "__self__", None)).__name__ == "_Ping":
                pings += 1
            return send(callback, *args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]

    async def status() -> int:
        return (await _probe(admin.url + "/livez"))[0]

    admin = AdminServer(AdminOptions(registry=prom))
    await admin.start()
    block = threading.Event()
    try:
        async with _served_on_another_loop(tmp_path, "probed-svc", count_pings):
            try:
                assert await status() == 200
                await until(lambda: pings >= 1, what="a first ping")
                sends[0](block.wait)  # loop b runs nothing more
                # the first ping may still be unrun: wait for the one sent after it
                before = pings
                statuses = [await status() for _ in range(50)]

                async def failing() -> bool:
                    return await status() == 503

                await until(failing, timeout_s=10, what="/livez 503 for the wedged loop")
                assert pings - before <= 1, (pings, before, statuses)
                block.set()

                async def live() -> bool:
                    return await status() == 200

                await until(live, timeout_s=10, what="/livez 200 once the loop runs again")
            finally:
                block.set()
    finally:
        await admin.stop()
