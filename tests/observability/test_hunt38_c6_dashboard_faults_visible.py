"""The admin dashboard (``/``, in a real headless Chromium) shows the faults a process's
own snapshots carry, not only its calls.

What a user saw: a server whose registration writes failed (heartbeats or keep-alives
refused: the instance about to drop out of discovery, ``ServerStats.registry.ok``
false, ``MeshkitRegistryUnhealthy`` firing) read a green ``ready`` on the page with no
sign of it; a channel that could not read its registry showed only its READY endpoints;
and a server shedding 90 % of its calls "server busy" at ``max_concurrent_rpcs`` (the
request gate's refusals: in no method row, since those calls never start) looked idle.
All of it was in ``/debug/dashboard.json``; the page drew none of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry, RegistryStatus
from meshkit.observability import AdminOptions
from meshkit.server import ServerLimits
from tests.observability.test_dashboard import _browser
from tests.observability.test_dashboard_page import (  # noqa: F401
    EVIL,
    _document,
    _Stand,
    fast_page,
    stand,
)
from tests.support.echo import add_echo, method
from tests.support.wait import until

pytestmark = pytest.mark.timeout(90)

_ERROR = "keep-alive refused: etcd 127.0.0.1:2379 unreachable (test)"


class _Failing:
    """A working local registry that reports its reads and writes failing once
    :attr:`failing` is set (what etcd or Consul going away looks like in ``status()``)."""

    def __init__(self, inner: LocalRegistry) -> None:
        self.inner = inner
        self.failing = False

    async def register(self, instance: Any) -> None:
        await self.inner.register(instance)

    async def deregister(self, instance: Any) -> None:
        await self.inner.deregister(instance)

    def watch(self, service: str) -> Any:
        return self.inner.watch(service)

    async def instances(self, service: str) -> Any:
        return await self.inner.instances(service)

    def status(self) -> RegistryStatus:
        st = self.inner.status()
        if not self.failing:
            return st
        return dataclasses.replace(st, readable=False, writable=False, read_errors=4,
                                   write_errors=3, last_error=_ERROR,
                                   failing_since_s=time.time() - 30, kept_endpoints=1)

    async def close(self) -> None:
        pass


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[LocalRegistry]:
    reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=3.0, poll_interval_s=0.05))
    yield reg
    await reg.close()


async def test_the_page_shows_registry_failures_and_shed_calls(local: LocalRegistry) -> None:
    """A real server (room for 2 calls, a burst of 20 shed) and a channel dialing it
    through a registry that then fails: the server's row says its registration fails
    (the error in the title) and how many calls its gate refused, the channel's card
    says its registry fails; no page error."""
    chromium, async_playwright = _browser()
    reg = _Failing(local)
    srv = meshkit.MeshServer("regd", [add_echo("r1")], registry=reg,
                             options=meshkit.ServeOptions(
                                 insecure=True, instance_id="r1", drain_delay_s=0.0,
                                 grace_s=1.0, admin=AdminOptions(port=0),
                                 limits=ServerLimits(max_concurrent_rpcs=2)))
    await srv.start()
    problems: list[str] = []
    try:
        assert srv.admin is not None
        admin = f"http://127.0.0.1:{srv.admin.port}"
        async with meshkit.dial("regd", registry=reg,  # type: ignore[arg-type]
                                options=meshkit.DialOptions(insecure=True)) as ch:
            await ch.wait_for_endpoints(timeout_s=10)

            async with grpc.aio.insecure_channel(srv.stats().address or "") as raw:

                async def one() -> str:
                    try:
                        await raw.unary_unary(method("Sleep"))(b"1000", timeout=20)
                        return "OK"
                    except grpc.aio.AioRpcError as exc:
                        return exc.code().name

                codes = await asyncio.gather(*(one() for _ in range(20)))
            shed = codes.count("RESOURCE_EXHAUSTED")
            assert shed >= 10 and srv.stats().gate_shed == shed, codes
            reg.failing = True
            assert srv.stats().registry is not None
            assert srv.stats().registry["ok"] is False  # type: ignore[index]
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=chromium, headless=True)
                try:
                    page = await browser.new_page()
                    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
                    page.on("console", lambda m: problems.append(f"console: {m.text}")
                            if m.type == "error" else None)
                    await page.goto(admin + "/")
                    await page.wait_for_function(
                        "() => Number(document.body.dataset.polls) >= 2", timeout=20_000)
                    row = page.locator('tr.server[data-service="regd"]')
                    row_text = await row.inner_text()
                    card = page.locator('div.channel[data-service="regd"]')
                    card_text = await card.inner_text()
                    titles = await row.evaluate(
                        "r => [...r.querySelectorAll('[title]')].map(e => e.title).join('|')")
                finally:
                    await browser.close()
    finally:
        await srv.drain()
    assert not problems, problems
    assert "registry failing" in row_text, row_text
    assert _ERROR in titles, titles
    assert str(shed) in row_text.split(), row_text
    assert "registry failing" in card_text, card_text


async def test_the_page_shows_a_working_registry_quietly(local: LocalRegistry) -> None:
    """Nothing failing: no "failing" badge anywhere, the gate's cell reads 0."""
    chromium, async_playwright = _browser()
    srv = meshkit.MeshServer("okd", [add_echo("o1")], registry=local,
                             options=meshkit.ServeOptions(
                                 insecure=True, instance_id="o1", drain_delay_s=0.0,
                                 grace_s=1.0, admin=AdminOptions(port=0)))
    await srv.start()
    try:
        assert srv.admin is not None
        await until(lambda: srv.stats().ready, timeout_s=10, what="ready")
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, headless=True)
            try:
                page = await browser.new_page()
                await page.goto(f"http://127.0.0.1:{srv.admin.port}/")
                await page.wait_for_function(
                    "() => Number(document.body.dataset.polls) >= 1", timeout=20_000)
                text = await page.locator('tr.server[data-service="okd"]').inner_text()
            finally:
                await browser.close()
    finally:
        await srv.drain()
    assert "failing" not in text, text
    assert "registry ok" in text, text


async def test_registry_error_text_is_drawn_as_text(stand: _Stand) -> None:  # noqa: F811
    """A registry error carries text from elsewhere (an agent's answer, a file name):
    markup in it is an attribute's text, never an element."""
    chromium, async_playwright = _browser()
    reg = {"kind": "etcd", "readable": False, "writable": False, "read_errors": 1,
           "write_errors": 1, "reopened": 0, "last_error": EVIL, "failing_since_s": None,
           "kept_endpoints": 0, "ok": False}
    doc = _document("plain")
    doc["servers"][0]["registry"] = reg
    doc["channels"][0]["registry"] = reg
    stand.doc = doc
    problems: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = await browser.new_page(bypass_csp=True)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))
            await page.goto(stand.url + "/")
            await page.wait_for_function("() => Number(document.body.dataset.polls) >= 2",
                                         timeout=10_000)
            assert await page.locator("img").count() == 0
            titles = await page.locator(".b-FAILING").evaluate_all(
                "bs => bs.map(b => b.title)")
        finally:
            await browser.close()
    assert not problems, problems
    assert len(titles) == 2 and all(t.endswith("last error: " + EVIL) for t in titles), titles
