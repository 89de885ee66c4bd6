"""The admin dashboard: its JSON counts what happened, and the page draws it live in a real
headless Chromium (driven by playwright through Debian's chromium binary)."""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.errors import ConfigError
from meshkit.observability import AdminOptions, AdminServer, TelemetryOptions, rpc_metrics
from meshkit.observability._dashboard import DashboardFeed, histogram_quantile
from meshkit.observability._metrics import BoundServer
from meshkit.observability._semconv import MethodNames
from tests.support.echo import add_echo, method
from tests.support.skips import skip_or_fail

UNARY, FAIL = method("Unary"), method("Fail")
#: a method name a client may send: the page must show it as text, never as markup
HOSTILE = "/meshkit.test.Echo/<img src=x onerror=alert(1)>"


@dataclass
class Mesh:
    """Two echo instances, a channel dialing them, and the admin server, all on one
    private metrics registry."""

    admin: AdminServer
    channel: meshkit.MeshChannel

    async def calls(self, ok: int, not_found: int = 0) -> None:
        """``ok`` Unary calls, then ``not_found`` Fail calls answered NOT_FOUND (not
        retried, so each is one attempt)."""
        unary = self.channel.unary_unary(UNARY)
        fail = self.channel.unary_unary(FAIL)
        for _ in range(ok):
            await unary(b"x", timeout=5)
        for _ in range(not_found):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await fail(b"NOT_FOUND", timeout=5)
            assert err.value.code() is grpc.StatusCode.NOT_FOUND

    async def json(self) -> dict[str, object]:
        """GET /debug/dashboard.json."""
        async with aiohttp.ClientSession() as http, \
                http.get(self.admin.url + "/debug/dashboard.json") as resp:
            assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
            return json.loads(await resp.text())  # type: ignore[no-any-return]


@pytest.fixture
async def mesh(registry: LocalRegistry, telemetry: TelemetryOptions,
               prom: CollectorRegistry) -> AsyncIterator[Mesh]:
    """Echo instances e1, e2 (MeshServer), a dial()ed channel and an admin server."""
    servers = [meshkit.MeshServer("echo", [add_echo(iid)], registry=registry,
                                  options=meshkit.ServeOptions(
                                      insecure=True, instance_id=iid, drain_delay_s=0.0,
                                      grace_s=1.0, telemetry=telemetry))
               for iid in ("e1", "e2")]
    admin = AdminServer(AdminOptions(registry=prom))
    await admin.start()
    for srv in servers:
        await srv.start()
    ch = meshkit.dial("echo", registry=registry,
                      options=meshkit.DialOptions(insecure=True, telemetry=telemetry))
    try:
        await ch.wait_for_endpoints(2)
        yield Mesh(admin, ch)
    finally:
        await ch.close()
        for srv in servers:
            await srv.drain()
        await admin.stop()


def _method(data: dict[str, object], side: str, path: str) -> dict[str, object]:
    rows = [m for m in data["methods"] if m["side"] == side and m["path"] == path]  # type: ignore[attr-defined]
    assert len(rows) == 1, data["methods"]
    return rows[0]  # type: ignore[no-any-return]


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    """Quantiles interpolate linearly inside the bucket the rank falls in (from 0 for the
    first), answer the highest finite bound for the overflow bucket, None without data."""
    bounds = (0.1, 0.2, 0.4)
    assert histogram_quantile(0.5, bounds, [0, 10, 0, 0]) == pytest.approx(0.15)
    assert histogram_quantile(0.5, bounds, [4, 0, 0, 0]) == pytest.approx(0.05)
    assert histogram_quantile(0.9, bounds, [5, 4, 1, 0]) == pytest.approx(0.2)
    assert histogram_quantile(0.99, bounds, [1, 0, 0, 9]) == 0.4
    assert histogram_quantile(0.5, bounds, [0, 0, 0, 0]) is None
    with pytest.raises(ValueError, match=r"got 1\.5"):
        histogram_quantile(1.5, bounds, [0, 0, 0, 0])


def test_feed_rates_and_quantiles_follow_a_sliding_window() -> None:
    """With a fake clock: the first build counts from the record's creation; later builds
    count only the last window_s; errors are keyed by go-grpc-prometheus code names."""
    now = [1000.0]
    rpc = rpc_metrics(CollectorRegistry())
    rec = rpc.bind_server(MethodNames("/pkg.Svc/Get", "unary"))
    rec.created = 1000.0
    feed = DashboardFeed(rpc, window_s=10, clock=lambda: now[0])
    for i in range(20):  # 20 calls in 2 s: 15 OK at 3 ms, 5 NOT_FOUND at 30 ms
        now[0] = 1000.0 + (i + 1) * 0.1
        rec.start()
        code = grpc.StatusCode.NOT_FOUND if i % 4 == 0 else grpc.StatusCode.OK
        rec.finished(code, 0.03 if code is grpc.StatusCode.NOT_FOUND else 0.003)
        feed.build()
    (row,) = feed.build()["methods"]
    assert row["finished"] == 20 and row["ok"] == 15 and row["errors"] == {"NotFound": 5}
    assert row["window_s"] == pytest.approx(2.0)
    assert row["rate_per_s"] == pytest.approx(10.0) and row["error_rate_per_s"] == 2.5
    assert 2.5 <= row["p50_ms"] <= 5.0 and 25.0 <= row["p99_ms"] <= 50.0
    assert row["mean_ms"] == pytest.approx((15 * 3 + 5 * 30) / 20)
    now[0] += 9.0  # the window now starts at 1001.0: the 10 calls before it drop out
    (row,) = feed.build()["methods"]
    assert row["rate_per_s"] == pytest.approx(10 / row["window_s"], rel=0.05)
    assert 9.5 <= row["window_s"] <= 10.5
    now[0] += 20.0  # nothing in the window: no rate of calls, no quantiles
    feed.build()
    (row,) = feed.build()["methods"]
    assert row["rate_per_s"] == 0 and row["p50_ms"] is None and row["finished"] == 20


def _serve_and_poll(rec: BoundServer, feed: DashboardFeed, tick: Callable[[], None],
                    seconds: float) -> None:
    """10 calls/s for ``seconds``, the page polled after each; ``tick`` moves the clocks
    a tenth of a second."""
    for _ in range(int(seconds * 10)):
        tick()
        rec.start()
        rec.finished(grpc.StatusCode.OK, 0.003)
        feed.build()


def test_dashboard_rates_survive_a_wall_clock_step_back() -> None:
    """An operator watches a server's admin dashboard while a method serves a steady 10
    calls/s; the wall clock of the feed (an injected one here) is then stepped back an
    hour (NTP ``makestep``, a VM snapshot restored). Before: for the next hour the
    method's row showed ``rate_per_s`` and ``error_rate_per_s`` as ``None`` (a negative
    ``window_s``) and its p50/p99 over every call since the step: the feed appended no
    sample until the clock was back past its newest one. Now a clock that went back
    restarts the method's window (one poll reads as just after a first call): 12 s
    after the step the row shows about 10 calls/s over a window of about 10 s."""
    now = [1_000_000.0]
    rpc = rpc_metrics(CollectorRegistry())
    rec = rpc.bind_server(MethodNames("/pkg.Svc/Get", "unary"))
    rec.created = now[0]
    feed = DashboardFeed(rpc, window_s=10, clock=lambda: now[0])

    def tick() -> None:
        now[0] += 0.1

    _serve_and_poll(rec, feed, tick, 12)
    (row,) = feed.build()["methods"]
    assert row["rate_per_s"] == pytest.approx(10, rel=0.1)
    now[0] -= 3600.0  # the wall clock is stepped back an hour
    _serve_and_poll(rec, feed, tick, 12)
    (row,) = feed.build()["methods"]
    assert row["rate_per_s"] is not None and row["rate_per_s"] == pytest.approx(10, rel=0.1)
    assert 9.0 <= row["window_s"] <= 11.0
    assert row["p50_ms"] is not None and row["p50_ms"] <= 5.0


def test_dashboard_windows_by_default_ignore_wall_clock_steps(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin server's feed (no clock given) times its windows on the monotonic
    clock: a step of the wall clock, back or forward, changes neither the rate nor the
    window (before, a step forward of an hour showed a window of an hour and a rate
    near 0, a step back ``None`` for an hour); ``time_unix_s`` still shows the wall
    clock."""
    import time

    wall, mono = [1_700_000_000.0], [500.0]
    monkeypatch.setattr(time, "time", lambda: wall[0])
    monkeypatch.setattr(time, "monotonic", lambda: mono[0])
    rpc = rpc_metrics(CollectorRegistry())
    rec = rpc.bind_server(MethodNames("/pkg.Svc/Get", "unary"))
    rec.created = wall[0]
    feed = DashboardFeed(rpc, window_s=10)

    def tick() -> None:
        wall[0] += 0.1
        mono[0] += 0.1

    _serve_and_poll(rec, feed, tick, 12)
    for step in (-3600.0, 7200.0):
        wall[0] += step
        data = feed.build()
        assert data["time_unix_s"] == round(wall[0], 3)
        (row,) = data["methods"]
        assert 9.0 <= row["window_s"] <= 11.0
        assert row["rate_per_s"] == pytest.approx(10, rel=0.1)
        _serve_and_poll(rec, feed, tick, 1)


def test_a_record_created_after_the_clock_read_counts_from_now() -> None:
    """A record whose ``created`` is ahead of the feed's clock (created just before the
    wall clock was stepped back): its first window starts now, not at a creation time
    in the future (a negative window, rates ``None`` until the clock caught up)."""
    now = [1000.0]
    rpc = rpc_metrics(CollectorRegistry())
    rec = rpc.bind_server(MethodNames("/pkg.Svc/Get", "unary"))
    rec.created = 4600.0
    feed = DashboardFeed(rpc, window_s=10, clock=lambda: now[0])

    def tick() -> None:
        now[0] += 0.1

    _serve_and_poll(rec, feed, tick, 2)  # first build at 1000.1, after the first call
    (row,) = feed.build()["methods"]
    assert row["window_s"] == pytest.approx(1.9)
    assert row["rate_per_s"] == pytest.approx(20 / 1.9)


@pytest.mark.parametrize("window_s", [0, -1.0, float("nan"), True])
def test_feed_refuses_a_bad_window(window_s: float) -> None:
    """DashboardFeed refuses a window that is not a positive number, quoting it."""
    with pytest.raises(ConfigError, match="got"):
        DashboardFeed(rpc_metrics(CollectorRegistry()), window_s=window_s)


async def test_dashboard_json_counts_the_calls_made(mesh: Mesh) -> None:
    """/debug/dashboard.json lists the echo server and the channel's two endpoints, and per
    method (both sides) the calls made, their errors by code and a rate that adds up."""
    await mesh.calls(ok=6, not_found=3)
    # the admin server builds the JSON on its own thread while this loop may still hold a
    # finished call's record in a callback (a clean clone's CI run read Fail finished 2
    # of 3 once): read until both sides show every call, 5 s at most
    t0 = asyncio.get_running_loop().time()
    while True:
        data = await mesh.json()
        seen = sorted(m["finished"] for m in data["methods"]  # type: ignore[attr-defined]
                      if m["path"] in (UNARY, FAIL))
        if seen == [3, 3, 6, 6] or asyncio.get_running_loop().time() - t0 > 5:
            break
        await asyncio.sleep(0.02)
    assert {s["service"] for s in data["servers"]} == {"echo"}  # type: ignore[attr-defined]
    (ch,) = [c for c in data["channels"] if c["service"] == "echo"]  # type: ignore[attr-defined]
    assert ch["balancer"] == "P2C" and ch["retry"]["budget_left"] > 0
    eps = {e["instance_id"]: e for e in ch["endpoints"]}
    assert set(eps) == {"e1", "e2"} and all(e["state"] == "READY" for e in eps.values())
    assert sum(e["calls"] for e in eps.values()) == 9
    assert sum(e["failures"] for e in eps.values()) == 3
    assert all(e["rtt_ms"] is not None and e["load_ms"] is not None for e in eps.values())
    for side in ("server", "client"):
        unary, fail = _method(data, side, UNARY), _method(data, side, FAIL)
        assert (unary["finished"], unary["ok"], unary["errors"]) == (6, 6, {}), side
        assert (fail["finished"], fail["ok"], fail["errors"]) == (3, 0, {"NotFound": 3}), side
        assert unary["rate_per_s"] * unary["window_s"] == pytest.approx(6, abs=0.05)
        assert fail["error_rate_per_s"] * fail["window_s"] == pytest.approx(3, abs=0.05)
        assert 0 < unary["p50_ms"] <= unary["p99_ms"]
    async with aiohttp.ClientSession() as http, http.get(mesh.admin.url + "/") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        assert "script-src 'sha256-" in resp.headers["Content-Security-Policy"]
        assert "<title>meshkit dashboard</title>" in await resp.text()


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails on anything but a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", data[:16]
    return struct.unpack(">II", data[16:24])  # type: ignore[return-value]


def _browser() -> tuple[str, Any]:
    """Debian's chromium binary and playwright's ``async_playwright``; a missing one
    skips the test (fails it under ``CI=true``), naming how to install it."""
    chromium = shutil.which("chromium")
    if chromium is None:
        skip_or_fail("chromium is not installed (scripts/install-browser.sh installs it)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        skip_or_fail("playwright is not installed (pip install -e '.[dev]')")
    assert chromium is not None
    return chromium, async_playwright


async def test_dashboard_draws_live_in_chromium(mesh: Mesh, tmp_path: Path) -> None:
    """In headless Chromium, / shows both echo servers, both endpoints READY, a row per
    method with its call and error counts, escapes a hostile method name, and updates by
    itself when more calls are made; the screenshot is a real picture."""
    chromium, async_playwright = _browser()
    await mesh.calls(ok=5, not_found=2)
    with pytest.raises(grpc.aio.AioRpcError):
        await mesh.channel.unary_unary(HOSTILE)(b"x", timeout=5)
    unary_calls = 'tr.method[data-side="server"][data-path="/meshkit.test.Echo/Unary"] td.calls'
    problems: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda msg: problems.append(msg.text)
                    if msg.type == "error" else None)
            page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))
            await page.goto(mesh.admin.url + "/")
            await page.wait_for_function("Number(document.body.dataset.polls) >= 1",
                                         timeout=10_000)
            servers = page.locator('tr.server[data-service="echo"]')
            assert {await servers.nth(i).get_attribute("data-instance")
                    for i in range(await servers.count())} == {"e1", "e2"}
            endpoints = page.locator('div.channel[data-service="echo"] tr.endpoint')
            assert await endpoints.count() == 2
            assert {await endpoints.nth(i).get_attribute("data-state")
                    for i in range(2)} == {"READY"}
            assert await page.locator(unary_calls).text_content() == "5"
            fail_row = page.locator('tr.method[data-side="server"]'
                                    '[data-path="/meshkit.test.Echo/Fail"]')
            assert await fail_row.locator("td.calls").text_content() == "2"
            assert await fail_row.locator("td.errors").text_content() == "NotFound 2"
            hostile = page.locator("tr.method", has_text="<img src=x onerror=alert(1)>")
            assert await hostile.count() == 1  # shown as text ...
            assert await page.locator("main img").count() == 0  # ... never as markup
            polls = int(await page.evaluate("document.body.dataset.polls"))
            await mesh.calls(ok=7)
            await page.wait_for_function(
                "s => document.querySelector(s)?.textContent === '12'", arg=unary_calls,
                timeout=10_000)
            assert int(await page.evaluate("document.body.dataset.polls")) > polls
            rate = await page.locator(unary_calls.replace("td.calls", "td.rate")).text_content()
            assert rate is not None and float(rate) > 0
            shot = tmp_path / "dashboard.png"
            await page.screenshot(path=shot, full_page=True)
        finally:
            await browser.close()
    png = shot.read_bytes()
    width, height = _png_size(png)
    assert width == 1280 and height >= 400 and len(png) > 20_000, (width, height, len(png))
    assert not problems, problems


def test_feed_counts_errors_by_code_over_the_window() -> None:
    """``window_errors`` counts a method's failed calls by code over the window (the
    page's error badges), ``errors`` since the record's creation: failures that left the
    window leave ``window_errors``."""
    now = [1000.0]
    rpc = rpc_metrics(CollectorRegistry())
    rec = rpc.bind_server(MethodNames("/pkg.Svc/Get", "unary"))
    rec.created = 1000.0
    feed = DashboardFeed(rpc, window_s=10, clock=lambda: now[0])
    for code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.NOT_FOUND,
                 grpc.StatusCode.UNAVAILABLE):
        now[0] += 0.5
        rec.start()
        rec.finished(code, 0.001)
        feed.build()
    (row,) = feed.build()["methods"]
    assert row["window_errors"] == {"NotFound": 2, "Unavailable": 1} == row["errors"]
    now[0] += 11.0  # the failures leave the window, a new one comes
    feed.build()
    now[0] += 0.5
    rec.start()
    rec.finished(grpc.StatusCode.UNAVAILABLE, 0.001)
    (row,) = feed.build()["methods"]
    assert row["window_errors"] == {"Unavailable": 1}
    assert row["errors"] == {"NotFound": 2, "Unavailable": 2}
    now[0] += 20.0
    feed.build()
    (row,) = feed.build()["methods"]
    assert row["window_errors"] == {} and row["error_rate_per_s"] == 0


FLAKY = "meshkit.test.Flaky"
FLAKY_CALL = f"/{FLAKY}/Call"


def _add_flaky(state: dict[str, bool]) -> tuple[Callable[[object, grpc.aio.Server], None],
                                                None]:
    """A service whose ``Call`` answers NOT_FOUND while ``state["fail"]``, else OK."""

    async def call(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        if state["fail"]:
            await context.abort(grpc.StatusCode.NOT_FOUND, "asked to fail")
        return request

    def add(_servicer: object, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            FLAKY, {"Call": grpc.unary_unary_rpc_method_handler(call)}),))

    return add, None


@pytest.fixture
async def flaky_mesh(registry: LocalRegistry, telemetry: TelemetryOptions,
                     prom: CollectorRegistry) -> AsyncIterator[tuple[Mesh, dict[str, bool]]]:
    """A flaky server (``_add_flaky``), a channel to it and an admin server whose
    dashboard window is 1 s instead of 10 s (to keep the test short; same code)."""
    state = {"fail": True}
    srv = meshkit.MeshServer("flaky", [_add_flaky(state)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, instance_id="f1", drain_delay_s=0.0,
                                 grace_s=1.0, telemetry=telemetry))
    admin = AdminServer(AdminOptions(registry=prom))
    admin._dashboard = DashboardFeed(rpc_metrics(prom), window_s=1.0)
    await admin.start()
    await srv.start()
    ch = meshkit.dial("flaky", registry=registry,
                      options=meshkit.DialOptions(insecure=True, telemetry=telemetry))
    try:
        await ch.wait_for_endpoints(1)
        yield Mesh(admin, ch), state
    finally:
        await ch.close()
        await srv.drain()
        await admin.stop()


async def test_dashboard_error_percent_is_over_the_window_its_heading_names(
        flaky_mesh: tuple[Mesh, dict[str, bool]]) -> None:
    """The dashboard's Methods table is headed "rate, errors and latency over the last
    <window> s" and ``/debug/dashboard.json`` gives ``error_rate_per_s`` and
    ``rate_per_s`` over that window, but the page computed "error %" as
    ``error_total / finished`` since the process started, and its error badges were
    since-start counts: after an incident ended the method stayed red with the old ratio
    for ever (here 4 failures, then the window passes and 4 successes: 50.0 % in red
    while the window held no error). The error % is now the window's
    ``error_rate_per_s / rate_per_s`` and the badges count the window's errors by code
    (``window_errors``; the since-start counts in their title)."""
    chromium, async_playwright = _browser()
    mesh, state = flaky_mesh
    call = mesh.channel.unary_unary(FLAKY_CALL)
    row = f'tr.method[data-side="server"][data-path="{FLAKY_CALL}"]'
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = await browser.new_page()
            await page.goto(mesh.admin.url + "/")
            await page.wait_for_function("Number(document.body.dataset.polls) >= 1",
                                         timeout=8_000)
            for _ in range(4):
                with pytest.raises(grpc.aio.AioRpcError):
                    await call(b"x", timeout=5)
            await page.wait_for_function(  # during the incident: red, its errors shown
                "s => document.querySelector(s + ' td.calls')?.textContent === '4'",
                arg=row, timeout=8_000)
            assert await page.locator(f"{row} td.errors").text_content() == "NotFound 4"
            assert await page.locator(f"{row} td:nth-child(5)").text_content() == "100.0"
            # the 1 s window passes: the failures leave it (the feed says so; was a
            # 2.5 s sleep)
            loop = asyncio.get_running_loop()
            end = loop.time() + 15
            while True:
                (now_row,) = [m for m in (await mesh.json())["methods"]  # type: ignore[attr-defined]
                              if m["side"] == "server" and m["path"] == FLAKY_CALL]
                if now_row["error_rate_per_s"] == 0:
                    break
                assert loop.time() < end, f"the failures never left the window: {now_row}"
                await asyncio.sleep(0.05)
            state["fail"] = False
            for _ in range(4):
                await call(b"x", timeout=5)
            await page.wait_for_function(
                "s => document.querySelector(s + ' td.calls')?.textContent === '8'",
                arg=row, timeout=8_000)
            feed = await page.evaluate(
                "fetch('debug/dashboard.json').then(r => r.json())")
            (method_row,) = [m for m in feed["methods"]
                             if m["side"] == "server" and m["path"] == FLAKY_CALL]
            assert method_row["error_rate_per_s"] == 0, method_row  # the window's truth
            cell = page.locator(f"{row} td:nth-child(5)")
            shown = await cell.text_content()
            css = await cell.get_attribute("class") or ""
            errors = page.locator(f"{row} td.errors")
            badges = await errors.text_content()
            since_start = await errors.get_attribute("title")
        finally:
            await browser.close()
    assert shown in ("0.0", "0", "\u2013") and "bad" not in css, (
        f"error % over the last window shown as {shown!r} (class {css!r}); the window "
        f"holds {method_row['rate_per_s']} calls/s and 0 errors/s")
    assert badges == "\u2013" and since_start == "since start: NotFound 4", (badges,
                                                                            since_start)
