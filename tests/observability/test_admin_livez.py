"""The admin server's liveness probe /livez: up while the event loop answers, whatever the
mesh's readiness (before a server starts, while it drains, with its registry failing)."""

from __future__ import annotations

import asyncio
import threading
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


async def test_livez_fails_while_another_loop_serving_a_server_is_wedged(
        tmp_path: Path, prom: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """A MeshServer on another event loop of the process (a thread's own, served by this
    loop's admin server): while that loop is wedged (a callback blocks it) /livez answers
    503 naming its service, and 200 again once the loop runs; /readyz is not involved."""
    monkeypatch.setattr(admin_module, "_WEDGED_S", 0.5)
    loop_b = asyncio.new_event_loop()
    thread = threading.Thread(target=loop_b.run_forever, name="loop-b", daemon=True)
    thread.start()

    async def start_b() -> meshkit.MeshServer:
        reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=3.0))
        srv = meshkit.MeshServer("wedged-svc", [add_echo("w1")], registry=reg,
                                 options=meshkit.ServeOptions(insecure=True,
                                                              drain_delay_s=0.0, grace_s=1.0))
        await srv.start()
        return srv

    def on_b(coro: Any) -> Any:
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop_b))

    admin = AdminServer(AdminOptions(registry=prom))
    await admin.start()
    block = threading.Event()
    srv = await on_b(start_b())
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
        await on_b(srv.drain())
        await on_b(srv.registry.close())
        await admin.stop()
        loop_b.call_soon_threadsafe(loop_b.stop)
        await asyncio.to_thread(thread.join, 10)
        loop_b.close()
