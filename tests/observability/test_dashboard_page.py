"""The dashboard page in a real headless Chromium against a stand-in data endpoint: hostile
values from registries and callers are drawn as text, and the page notices a server that
stops answering and recovers when it answers again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from meshkit._aio_http import start_app
from meshkit.observability import _dashboard, rpc_metrics
from meshkit.observability._dashboard import DASHBOARD_JSON_PATH, DashboardFeed
from tests.observability.test_dashboard import _browser

#: markup a registry entry or a caller may carry: drawn as text, never parsed
EVIL = '<img src=x onerror="alert(1)"><script>alert(2)</script>"\'&'


def _document(evil: str) -> dict[str, Any]:
    """A /debug/dashboard.json answer with ``evil`` in every string a registry, a remote
    caller or the application can set."""
    endpoint = {"instance_id": evil, "address": evil, "state": evil, "present": True,
                "ejected": False, "calls": 3, "failures": 1, "in_flight": 0,
                "rtt_ms": 1.5, "load_ms": 2.0, "pending": 0}
    return {
        "time_unix_s": 1_700_000_000.0, "window_s": 10.0,
        "servers": [{"service": evil, "instance_id": evil, "address": evil, "ready": True,
                     "draining": False, "tls": False, "services": [evil, evil],
                     "deadline_rejections": 0}],
        "channels": [{"service": evil, "state": evil, "balancer": evil, "ejections": 0,
                      "watch_errors": 0, "endpoints": [endpoint],
                      "retry": {"calls": 1, "retries": 0, "hedges": 0,
                                "budget_exhausted": 0, "gave_up_deadline": 0,
                                "budget_left": 5.0, "budget": evil}}],
        "methods": [{"side": evil, "type": evil, "service": evil, "method": evil,
                     "path": evil, "started": 2, "in_flight": 0, "finished": 2, "ok": 1,
                     "errors": {evil: 1}, "error_total": 1, "mean_ms": 1.0,
                     "window_s": 10.0, "rate_per_s": 0.2, "error_rate_per_s": 0.1,
                     "window_errors": {evil: 1}, "p50_ms": 1.0, "p99_ms": 2.0}],
    }


#: the page's timing constants, and what these tests serve instead: polls every 200 ms, a
#: poll given up after 1.5 s (the real 1 s and 5 s made each test take ~9 s)
_REAL_TIMING = b"const POLL_MS = 1000, TIMEOUT_MS = 5000,"
_FAST_TIMING = b"const POLL_MS = 200, TIMEOUT_MS = 1500,"


@pytest.fixture(autouse=True)
def fast_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """The page as shipped but polling faster (its CSP is computed from these bytes)."""
    page = _dashboard._page()
    assert page.count(_REAL_TIMING) == 1, "the page's timing constants changed"
    monkeypatch.setattr(_dashboard, "_page", lambda: page.replace(_REAL_TIMING, _FAST_TIMING))


class _Stand:
    """The dashboard page served as the admin server serves it, beside a data endpoint
    the test controls: it answers :attr:`doc`, or holds each request while
    :attr:`hang` is set (a wedged server that keeps its connections open)."""

    def __init__(self) -> None:
        self.feed = DashboardFeed(rpc_metrics(CollectorRegistry()))
        self.doc: dict[str, Any] = _document("plain")
        self.hang = False
        self.release = asyncio.Event()
        self.url = ""

    async def data(self, request: web.Request) -> web.Response:
        if self.hang:
            await self.release.wait()
        return web.Response(text=json.dumps(self.doc), content_type="application/json",
                            headers={"Cache-Control": "no-store"})


@pytest.fixture
async def stand() -> AsyncIterator[_Stand]:
    """A running :class:`_Stand` on loopback."""
    s = _Stand()
    app = web.Application()
    app.router.add_get("/", s.feed.page)
    app.router.add_get(DASHBOARD_JSON_PATH, s.data)
    runner, port = await start_app(app, "127.0.0.1", 0)
    s.url = f"http://127.0.0.1:{port}"
    try:
        yield s
    finally:
        s.release.set()
        await runner.cleanup()


async def test_every_value_from_the_data_is_drawn_as_text_in_chromium(stand: _Stand) -> None:
    """Markup in every string of the data (service, instance, address, state, balancer,
    budget, gRPC services, method, side, type, error code) is shown as text: no element,
    script or dialog comes of it, and the text reads back as sent."""
    chromium, async_playwright = _browser()
    stand.doc = _document(EVIL)
    problems: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            # without the page's CSP: the drawing alone must keep markup inert
            page = await browser.new_page(bypass_csp=True)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))
            await page.goto(stand.url + "/")
            await page.wait_for_function("() => Number(document.body.dataset.polls) >= 2",
                                         timeout=10_000)
            assert await page.locator("img").count() == 0
            assert await page.locator("script").count() == 1  # the page's own
            text = await page.locator("main").inner_text()
            assert text.count(EVIL) >= 10, text
            assert await page.locator("tr.server").get_attribute("data-instance") == EVIL
        finally:
            await browser.close()
    assert not problems, problems


async def test_the_page_shows_stale_when_the_server_stops_answering_and_recovers(
        stand: _Stand) -> None:
    """A data request the server holds open does not freeze the page on its last 'live'
    picture: within a few polls the status turns stale, and once the server answers
    again the page polls and turns live by itself."""
    chromium, async_playwright = _browser()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = await browser.new_page()
            await page.goto(stand.url + "/")
            await page.wait_for_function("() => Number(document.body.dataset.polls) >= 1",
                                         timeout=10_000)
            stand.hang = True
            await page.wait_for_function(
                "() => document.getElementById('status').className === 'stale'", timeout=20_000)
            polls = int(await page.evaluate("document.body.dataset.polls"))
            stand.hang = False
            stand.release.set()
            await page.wait_for_function(
                f"() => Number(document.body.dataset.polls) > {polls} && "
                "document.getElementById('status').className === 'live'", timeout=20_000)
        finally:
            await browser.close()


async def test_the_page_keeps_no_history_of_endpoints_and_methods_that_left() -> None:
    """With endpoints and methods replaced at every poll (churn), the page's sparkline
    history holds only the current ones' series, and the DOM as many rows as the last
    answer: an open page does not grow."""
    chromium, async_playwright = _browser()
    served = 0

    def churn() -> dict[str, Any]:
        nonlocal served
        served += 1
        doc = _document(f"gen{served}")
        ch = doc["channels"][0]
        ch["endpoints"] = [{**ch["endpoints"][0], "instance_id": f"e{served}-{i}"}
                           for i in range(20)]
        doc["methods"] = [{**doc["methods"][0], "path": f"/s/M{served}-{i}"}
                          for i in range(20)]
        return doc

    async def data(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(churn()), content_type="application/json")

    app = web.Application()
    app.router.add_get("/", DashboardFeed(rpc_metrics(CollectorRegistry())).page)
    app.router.add_get(DASHBOARD_JSON_PATH, data)
    runner, port = await start_app(app, "127.0.0.1", 0)
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, headless=True)
            try:
                page = await browser.new_page()
                await page.goto(f"http://127.0.0.1:{port}/")
                await page.wait_for_function(
                    "() => Number(document.body.dataset.polls) >= 8", timeout=30_000)
                # budget + 20 rtt + 20 rate series of the last answer only
                size = await page.evaluate("() => history.size")
                assert size <= 41, size
                assert await page.locator("tr.endpoint").count() == 20
                assert await page.locator("tr.method").count() == 20
            finally:
                await browser.close()
    finally:
        await runner.cleanup()
