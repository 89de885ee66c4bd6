"""A server withdrawn from its registry for its health status
(``ServeOptions.follow_health``) says so: ``ServerStats.registered``, ``/debug/mesh``,
``/readyz``'s ``registered`` and the dashboard's badge, so an operator who sees a server
up that gets no calls can tell why."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from grpc_health.v1 import health_pb2

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.errors import RegistryError
from meshkit.observability import AdminOptions
from tests.observability.test_dashboard import _browser
from tests.observability.test_dashboard_page import _Stand, fast_page, stand  # noqa: F401
from tests.support.echo import add_echo
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_BOUND_S = 10.0  # a registry write, with a loaded box's margin


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[LocalRegistry]:
    reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=3.0, poll_interval_s=0.05))
    yield reg
    await reg.close()


def _server(registry: Any, **opts: Any) -> meshkit.MeshServer:
    options: dict[str, Any] = {"insecure": True, "instance_id": "a", "drain_delay_s": 0.0,
                               "grace_s": 1.0, "admin": AdminOptions(port=0), **opts}
    return meshkit.MeshServer("echo", [add_echo("a")], registry=registry,
                              options=meshkit.ServeOptions(**options))


async def _listed(reg: LocalRegistry) -> set[str]:
    return {i.instance_id for i in await reg.instances("echo")}


async def _none_listed(reg: LocalRegistry) -> bool:
    return not await _listed(reg)


async def _get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, json.loads(await resp.text())


async def test_withdrawn_server_says_it_is_out_of_the_registry(local: LocalRegistry) -> None:
    """Registered: ``registered`` true. NOT_SERVING, withdrawn: false in stats(),
    ``/debug/mesh`` and ``/readyz``'s entry (whose reason stays "not serving"); SERVING
    again but its readmission pending: still false (ready, yet out of the registry);
    drained: false."""
    a = _server(local, readmit_after_s=30.0)
    await a.start()
    assert a.admin is not None
    admin = f"http://127.0.0.1:{a.admin.port}"
    try:
        assert a.stats().registered and await _listed(local) == {"a"}
        await a.health.set("echo", NOT_SERVING)
        await until(lambda: _none_listed(local), timeout_s=_BOUND_S, what="withdrawn")
        await until(lambda: not a.stats().registered, timeout_s=_BOUND_S,
                    what="stats() saying withdrawn")
        stats = a.stats()
        assert stats.instance_id == "a" and not stats.serving and not stats.ready
        _, mesh = await _get(f"{admin}/debug/mesh")
        [entry] = [s for s in mesh["servers"] if s["service"] == "echo"]
        assert entry["registered"] is False and entry["serving"] is False
        status, body = await _get(f"{admin}/readyz")
        assert status == 503
        assert body["not_ready"] == [{"service": "echo", "instance_id": "a",
                                      "draining": False, "registered": False,
                                      "serving": False}]
        assert body["reason"] == "not serving"
        await a.health.set("echo", SERVING)
        stats = a.stats()
        assert stats.serving and not stats.registered
        assert await _listed(local) == set()
    finally:
        await a.drain()
    assert not a.stats().registered


class _Refusing:
    """``inner``, its deregistrations refused (a registry briefly unreachable)."""

    def __init__(self, inner: LocalRegistry) -> None:
        self.inner = inner
        self.refuse = True
        self.refused = 0

    async def register(self, instance: Any) -> None:
        await self.inner.register(instance)

    async def deregister(self, instance: Any) -> None:
        if not self.refuse:
            return await self.inner.deregister(instance)
        self.refused += 1
        raise RegistryError("registry unreachable (test)")

    def watch(self, service: str) -> Any:
        return self.inner.watch(service)

    async def close(self) -> None:
        pass


async def test_a_failed_withdrawal_shows_the_instance_still_registered(
        local: LocalRegistry) -> None:
    """NOT_SERVING but the withdrawal refused by the registry: ``registered`` stays true
    (the instance still gets calls; not serving, yet listed)."""
    reg = _Refusing(local)
    a = _server(reg, admin=None)
    await a.start()
    try:
        await a.health.set("", NOT_SERVING)
        await until(lambda: reg.refused >= 1, timeout_s=_BOUND_S, what="a withdrawal tried")
        stats = a.stats()
        assert stats.registered and not stats.serving
        assert await _listed(local) == {"a"}
    finally:
        reg.refuse = False
        await a.drain()


@pytest.mark.parametrize("case", ["ready", "withdrawn", "readmitting", "not-serving",
                                  "draining", "starting", "older"])
async def test_the_dashboard_badge_tells_withdrawn_from_starting(
        stand: _Stand, case: str) -> None:  # noqa: F811
    """The servers table's state badge: ``withdrawn`` for a server out of the registry
    (NOT_SERVING, or SERVING with its readmission pending), ``not-serving`` for one
    NOT_SERVING yet registered, ``starting`` only before its registration (it read
    ``starting`` for a withdrawn server); a document without ``registered`` (an older
    feed) reads as before."""
    chromium, async_playwright = _browser()
    server = {"service": "echo", "instance_id": "a", "address": "127.0.0.1:1",
              "ready": True, "serving": True, "registered": True, "draining": False,
              "tls": False, "services": ["x"], "deadline_rejections": 0}
    want = case
    if case == "withdrawn":
        server.update(ready=False, serving=False, registered=False)
    elif case == "readmitting":
        server.update(registered=False)
        want = "withdrawn"
    elif case == "not-serving":
        server.update(ready=False, serving=False)
    elif case == "draining":
        server.update(ready=False, draining=True, registered=False)
    elif case == "starting":
        server.update(ready=False, instance_id=None, address=None, registered=False)
    elif case == "older":
        del server["registered"]
        want = "ready"
    stand.doc = {**stand.doc, "servers": [server]}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = await browser.new_page()
            await page.goto(stand.url + "/")
            await page.wait_for_function("() => Number(document.body.dataset.polls) >= 1",
                                         timeout=10_000)
            text = await page.locator("tr.server td").nth(3).inner_text()
        finally:
            await browser.close()
    assert text.strip() == want
