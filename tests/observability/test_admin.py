"""The admin HTTP server: every route answers; /readyz follows registration and drain."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import socket
import struct
import termios
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_generate
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as text_families
from structlog.testing import capture_logs

import meshkit
from meshkit._stats import ChannelStats, EndpointStats, RetrySnapshot
from meshkit.discovery import EtcdOptions, EtcdRegistry, LocalRegistry
from meshkit.errors import ConfigError
from meshkit.observability import AdminOptions, AdminServer, TelemetryOptions
from meshkit.observability import _admin as admin_module
from meshkit.observability._live import track
from tests.support.echo import SERVICE, add_echo, method
from tests.support.etcd import EtcdCluster, require_etcd_binary
from tests.support.wait import until

# What Prometheus 2.x sends by default (scrape_protocols): OpenMetrics preferred.
_PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,"
                      "application/openmetrics-text;version=0.0.1;q=0.75,"
                      "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


async def get(url: str) -> tuple[int, str]:
    """GET ``url``: (status, body)."""
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.text()


async def test_admin_routes_and_readiness_through_drain(
    registry: LocalRegistry, prom: CollectorRegistry
) -> None:
    """/healthz, /metrics, /debug/mesh and extra routes answer; /readyz is 503 before a
    server registers, 200 while it serves, and 503 as soon as it drains."""

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": []})

    admin = AdminServer(AdminOptions(registry=prom))
    admin.add_route("/.well-known/jwks.json", jwks)
    port = await admin.start()
    base = f"http://127.0.0.1:{port}"
    assert admin.url == base
    srv = meshkit.MeshServer(
        "echo",
        [add_echo("e1")],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.5, grace_s=1.0),
    )
    ch = meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(insecure=True))
    drain: asyncio.Task[None] | None = None
    try:
        assert await get(base + "/healthz") == (200, "ok\n")
        status, body = await get(base + "/readyz")
        assert status == 503 and "no server" in body
        await srv.start()
        await ch.wait_for_endpoints(1)
        await ch.unary_unary(method("Unary"))(b"x", timeout=5)
        status, body = await get(base + "/readyz")
        assert status == 200, body
        status, body = await get(base + "/metrics")
        assert status == 200
        names = {f.name for f in text_string_to_metric_families(body)}
        assert {"grpc_server_handled", "meshkit_client_endpoints", "meshkit_server_ready"} <= names
        status, body = await get(base + "/debug/mesh")
        assert status == 200
        import json

        mesh = json.loads(body)
        assert [s["service"] for s in mesh["servers"]] == ["echo"]
        (echo,) = [c for c in mesh["channels"] if c["service"] == "echo"]
        assert echo["endpoints"][0]["calls"] == 1 and echo["balancer"] == "P2C"
        assert await get(base + "/.well-known/jwks.json") == (200, '{"keys": []}')
        drain = asyncio.get_running_loop().create_task(srv.drain())
        await until(lambda: srv.draining, what="draining")
        status, body = await get(base + "/readyz")
        assert status == 503 and '"draining": true' in body
        assert not drain.done()  # still inside drain_delay_s: 503 *during* the drain
    finally:
        await ch.close()
        if drain is not None:
            await drain
        else:
            await srv.drain()
        await admin.stop()
        await admin.stop()  # twice is fine


class _HeldRegistry(LocalRegistry):
    """A local registry whose ``register`` waits for :attr:`hold` to be set (a server
    caught between binding and registration)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hold = asyncio.Event()

    async def register(self, instance: Any) -> None:
        await self.hold.wait()
        await super().register(instance)


async def get_json(url: str) -> tuple[int, Any]:
    """GET ``url``: (status, the body read as JSON, or its text when it is not)."""
    import json

    status, body = await get(url)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


async def test_readyz_answers_for_one_service_or_instance_of_the_process(
        registry: LocalRegistry, prom: CollectorRegistry) -> None:
    """The MeshServers of a process share its admin server, and plain ``/readyz`` answers
    for all of them (200 only when every one is ready): while one drains, it said 503 for
    the others too, which their prober took for servers that were leaving.
    ``/readyz?service=<name>`` answers for the servers of that mesh service only (200 when
    each is ready, 503 while one drains or is not registered yet, 404 when the process has
    no live server of it), ``&instance=<id>`` for the one registered as that instance;
    a malformed query is 400."""
    held = _HeldRegistry(registry.options)

    def server(service: str, instance_id: str, reg: LocalRegistry = registry,
               drain_delay_s: float = 0.0) -> meshkit.MeshServer:
        return meshkit.MeshServer(service, [add_echo(instance_id)], registry=reg,
                                  options=meshkit.ServeOptions(
                                      insecure=True, instance_id=instance_id, admin=None,
                                      drain_delay_s=drain_delay_s, grace_s=1.0))

    a1, b1, b2 = server("a", "a-1"), server("b", "b-1", drain_delay_s=6.0), server("b", "b-2")
    c1 = server("c", "c-1", reg=held)
    admin = AdminServer(AdminOptions(registry=prom))
    await admin.start()
    base = admin.url + "/readyz"
    drain: asyncio.Task[None] | None = None
    starting: asyncio.Task[Any] | None = None
    try:
        for srv in (a1, b1, b2):
            await srv.start()
        assert await get_json(base + "?service=b") == (
            200, {"ready": True, "service": "b", "instances": ["b-1", "b-2"]})
        drain = asyncio.get_running_loop().create_task(b1.drain())
        await until(lambda: b1.draining, what="b-1 draining")
        # (its drain deregisters it before its drain delay: "registered" false)
        await until(lambda: not b1.stats().registered, what="b-1 deregistered")
        starting = asyncio.get_running_loop().create_task(c1.start())
        await until(lambda: c1.live, what="c-1 bound, its registration held")

        status, body = await get_json(base)  # the whole process: b-1 drains, c-1 starts
        assert status == 503 and {(s["instance_id"], s["draining"], s["registered"])
                                  for s in body["not_ready"]} == {
            ("b-1", True, False), (None, False, False)}, body
        assert await get_json(base + "?service=a") == (
            200, {"ready": True, "service": "a", "instances": ["a-1"]})
        assert await get_json(base + "?service=b&instance=b-2") == (
            200, {"ready": True, "service": "b", "instances": ["b-2"]})
        for query, reason in (("service=b", "draining"),
                              ("service=b&instance=b-1", "draining"),
                              ("service=c", "not registered"),
                              ("service=c&instance=c-1", "not registered")):
            status, body = await get_json(f"{base}?{query}")
            assert status == 503 and body["ready"] is False, (query, body)
            assert body["reason"] == reason, (query, body)
        for query in ("service=nope", "service=b&instance=b-9", "service=a&instance=b-2"):
            status, body = await get_json(f"{base}?{query}")
            assert status == 404 and body["ready"] is False, (query, body)
        for query in ("service=", "service=a&service=b", "instance=b-2",
                      "service=b&instance=", "service=b&instance=b-1&instance=b-2"):
            status, body = await get(f"{base}?{query}")
            assert status == 400, (query, body)
        assert not drain.done()  # all of it seen while b-1 drained
    finally:
        held.hold.set()
        if starting is not None:
            await starting
        if drain is not None:
            # the rest of b-1's 6 s drain delay (its margin for the above on a loaded box)
            # is not waited out: its drain task cancelled ends with the server stopped
            # and closed (_drain's finally, as asyncio.run()'s sweep does)
            if not drain.done() and b1._drain_task is not None:
                b1._drain_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
            assert b1._drain_task is not None and b1._drain_task.done()
        for srv in (a1, b2, c1):
            await srv.drain()
        await held.close()
        await admin.stop()


async def test_client_only_process_is_ready_without_a_server(prom: CollectorRegistry) -> None:
    """With require_server=False, /readyz is 200 in a process that serves nothing."""
    async with AdminServer(AdminOptions(registry=prom, require_server=False)) as admin:
        assert (await get(admin.url + "/readyz"))[0] == 200


@pytest.mark.parametrize("kwargs", [{"port": -1}, {"port": 70000}, {"host": ""}])
def test_admin_options_refuse_bad_values(kwargs: dict[str, object]) -> None:
    """AdminOptions refuses bad ports and hosts when built, quoting them."""
    with pytest.raises(ConfigError, match="got"):
        AdminOptions(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["/metrics", "/", "/debug/dashboard.json", "relative", "/sp ace",
                                  "/jwks\n", "/metrics\n"])
def test_add_route_refuses_reserved_or_bad_paths(path: str) -> None:
    """Built-in and malformed paths are refused by add_route (a final newline too: ``$``
    also matches before one, so ``"/jwks\n"`` was a route no request could reach)."""

    async def h(request: web.Request) -> web.Response:
        return web.Response()

    with pytest.raises(ConfigError, match="got"):
        AdminServer().add_route(path, h)


async def test_metrics_negotiates_openmetrics(prom: CollectorRegistry) -> None:
    """/metrics answers the OpenMetrics text format to a scraper that asks for it (as
    Prometheus does in its Accept header), parseable by prometheus-client's OpenMetrics
    parser and ending in ``# EOF``; the classic text format otherwise."""
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as openmetrics_families,
    )

    admin = AdminServer(AdminOptions(registry=prom))
    port = await admin.start()
    url = f"http://127.0.0.1:{port}/metrics"
    accept = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
              "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url, headers={"Accept": accept}) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
                body = await resp.text()
            assert body.endswith("# EOF\n")
            names = {f.name for f in openmetrics_families(body)}
            assert "grpc_server_handled" in names
            async with http.get(url) as resp:
                assert resp.headers["Content-Type"].startswith("text/plain")
                assert "# EOF" not in await resp.text()
    finally:
        await admin.stop()


async def test_metrics_serve_the_telemetry_registry_by_default(
    registry: LocalRegistry, prom: CollectorRegistry
) -> None:
    """``serve()`` with ``TelemetryOptions(registry=...)`` and the default admin options
    serves that registry at ``/metrics``: the process default registry lacked the RPC
    metrics. (The default registry is served too, merged: a series both count is their
    sum; here the earlier tests' servers of this process counted into the default.)"""
    from meshkit.observability import TelemetryOptions, default_registry

    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, drain_delay_s=0.0, grace_s=1.0,
                                 admin=AdminOptions(port=0),
                                 telemetry=TelemetryOptions(registry=prom, tracing=False)))
    await srv.start()
    try:
        async with meshkit.dial("echo", registry=registry,
                                options=meshkit.DialOptions(insecure=True)) as ch:
            await ch.wait_for_endpoints(1)
            await ch.unary_unary(method("Unary"))(b"x", timeout=5)
        assert srv.admin is not None
        status, body = await get(f"http://127.0.0.1:{srv.admin.port}/metrics")
        assert status == 200
        labels = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "Unary",
                  "grpc_code": "OK"}
        # the one series of this call (earlier tests of this process counted other codes
        # of the same method into the default registry, merged in)
        handled = [s.value for f in text_string_to_metric_families(body)
                   if f.name == "grpc_server_handled" for s in f.samples
                   if s.name == "grpc_server_handled_total"
                   and all(s.labels.get(k) == v for k, v in labels.items())]
        assert prom.get_sample_value("grpc_server_handled_total", labels) == 1.0
        elsewhere = default_registry().get_sample_value("grpc_server_handled_total",
                                                        labels) or 0.0
        assert handled == [1.0 + elsewhere], handled
    finally:
        await srv.drain()


def _strict_json(text: str) -> object:
    """``text`` parsed as RFC 8259 JSON: ``Infinity``/``NaN`` refused (as ``JSON.parse``)."""
    import json

    def refuse(token: str) -> float:
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


async def test_debug_json_is_json_with_an_infinite_timeout(registry: LocalRegistry) -> None:
    """A channel with ``timeout_s=inf`` (accepted: no limit) made ``/debug/mesh`` and
    ``/debug/dashboard.json`` write the bare token ``Infinity``, which is no JSON (RFC 8259
    section 6): the dashboard's ``resp.json()`` failed and showed "stale". It is ``null``."""
    ch = meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(
        insecure=True, timeout_s=float("inf"), method_timeouts={"Echo/*": float("inf")}))
    try:
        admin = AdminServer(AdminOptions(registry=CollectorRegistry(), require_server=False))
        async with admin, aiohttp.ClientSession() as http:
            for path in ("/debug/mesh", "/debug/dashboard.json"):
                async with http.get(admin.url + path) as resp:
                    assert resp.status == 200
                    _strict_json(await resp.text())
    finally:
        await ch.close()


async def test_an_added_get_route_answers_head() -> None:
    """A route added with the default method "GET" answers HEAD too, as its docstring says
    and the built-in routes do (RFC 9110 section 9.3.2); it answered 405."""

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": []})

    admin = AdminServer(AdminOptions(registry=CollectorRegistry(), require_server=False))
    admin.add_route("/.well-known/jwks.json", jwks)
    async with admin, aiohttp.ClientSession() as http:
        async with http.get(admin.url + "/.well-known/jwks.json") as resp:
            assert resp.status == 200
        async with http.head(admin.url + "/.well-known/jwks.json") as resp:
            assert resp.status == 200, (resp.status, resp.headers.get("Allow"))


async def test_a_bracketed_ipv6_admin_host_binds() -> None:
    """``AdminOptions(host="[::1]")``, the bracketed spelling ``ServeOptions`` takes, binds
    ``::1``; the brackets went to ``getaddrinfo`` ("Name or service not known")."""
    admin = AdminServer(AdminOptions(host="[::1]", registry=CollectorRegistry(),
                                     require_server=False))
    try:
        port = await admin.start()
        assert admin.url == f"http://[::1]:{port}"
        async with aiohttp.ClientSession() as http, http.get(admin.url + "/healthz") as r:
            assert r.status == 200
    finally:
        await admin.stop()


async def _raw_get(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str],
                                                                          bytes]:
    """One HTTP/1.1 request over a raw loopback socket: (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
                 *(f"{k}: {v}" for k, v in headers.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {k.strip().lower(): v.strip()
              for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), parsed, body


async def test_metrics_accept_with_a_quoted_or_odd_version_is_answered() -> None:
    """An Accept header with a quoted OpenMetrics version (RFC 9110: the same as unquoted)
    or a version the server does not know gets a scrape in the format it claims, not a
    500 (prometheus_client's choose_encoder raised on them)."""
    admin = AdminServer(AdminOptions(registry=CollectorRegistry(), require_server=False))
    async with admin:
        status, headers, body = await _raw_get(
            admin.port, "/metrics", {"Accept": 'application/openmetrics-text;version="1.0.0"'})
        assert status == 200, (status, body[:200])
        assert headers["content-type"].startswith("application/openmetrics-text"), headers
        text = body.decode()
        assert text.endswith("# EOF\n")
        assert "grpc_server_handled" in {f.name for f in openmetrics_families(text)}
        # a sloppy version the server does not know: still a scrape, in the format claimed
        for accept in ("application/openmetrics-text;version=abc", "text/plain;version=x.y"):
            status, headers, body = await _raw_get(admin.port, "/metrics", {"Accept": accept})
            assert status == 200, (accept, status, body[:200])
            parse = (openmetrics_families
                     if headers["content-type"].startswith("application/openmetrics-text")
                     else text_families)
            assert list(parse(body.decode())), accept


async def test_a_client_with_an_unfinished_request_body_does_not_hold_stop() -> None:
    """A client that never finishes a request body holds stop() (and so a server's drain)
    about a second, not aiohttp's default lingering 10 s."""
    admin = AdminServer(AdminOptions(registry=CollectorRegistry(), require_server=False))
    await admin.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Length: 10\r\n\r\nab")
    await writer.drain()
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    t0 = time.monotonic()
    stop = asyncio.get_running_loop().create_task(admin.stop())
    done, _ = await asyncio.wait({stop}, timeout=4.0)
    writer.transport.abort()
    if not done:  # bound the test: give up the stop (the lingering ends with the loop)
        stop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(stop, 3)
        pytest.fail(f"AdminServer.stop() still waiting after {time.monotonic() - t0:.1f} s "
                    "on one client's unfinished request body")
    await stop


async def test_overlapping_starts_bind_once() -> None:
    """Two overlapping start() calls: one binds, the other is refused RuntimeError, and
    stop() leaves nothing listening (the first server was forgotten, still serving)."""
    admin = AdminServer(AdminOptions(registry=CollectorRegistry(), require_server=False))
    results = await asyncio.wait_for(
        asyncio.gather(admin.start(), admin.start(), return_exceptions=True), 5)
    await admin.stop()
    ports = [p for p in results if isinstance(p, int)]
    listening = []
    for port in ports:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            continue
        listening.append(port)
        writer.close()
    assert not listening, f"start() results {results}: still serving on {listening} after stop()"
    assert sum(isinstance(r, RuntimeError) for r in results) == 1, results


async def test_metrics_honours_q_0_for_openmetrics() -> None:
    """``q=0`` for OpenMetrics means not acceptable (RFC 9110 12.4.2): the text format
    0.0.4 is sent."""
    admin = AdminServer(AdminOptions(registry=CollectorRegistry(), require_server=False))
    async with admin:
        accept = "application/openmetrics-text;version=1.0.0;q=0, text/plain;version=0.0.4"
        status, headers, body = await _raw_get(admin.port, "/metrics", {"Accept": accept})
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4"), headers
        assert b"# EOF" not in body


async def test_a_registry_record_with_a_lone_surrogate_id_is_skipped_and_metrics_answer(
        tmp_path: Path) -> None:
    """An etcd record whose JSON holds ``"instance_id": "orderd-\\ud83d"`` (a lone
    surrogate: what JavaScript's ``JSON.stringify`` writes for an id cut in the middle of
    an emoji) was accepted as an ``Instance`` and listed by the channel; its id became an
    ``instance_id`` label that prometheus-client could not encode
    (``UnicodeEncodeError``), and ``/metrics`` answered 500 in both formats on every
    scrape while the record was listed: every series of the process gone, RPC RED
    metrics included. ``Instance`` now refuses a string not encodable as UTF-8, so the
    registry skips the record with a warning like any malformed one; the channel lists
    the good record beside it and ``/metrics`` answers 200 with UTF-8 text."""
    node = EtcdCluster(require_etcd_binary(), tmp_path, size=1)
    await node.start()
    reg = ch = admin = None
    try:
        records = {
            "orderd-1": r'{"service": "orderd", "instance_id": "orderd-\ud83d",'
                        r' "host": "127.0.0.1", "port": 1, "tags": [], "meta": {}}',
            "orderd-2": r'{"service": "orderd", "instance_id": "orderd-2",'
                        r' "host": "127.0.0.1", "port": 2, "tags": [], "meta": {}}',
        }
        for name, value in records.items():
            await asyncio.to_thread(node.post, 0, "/kv/put", {
                "key": base64.b64encode(f"/meshkit/services/orderd/{name}".encode()).decode(),
                "value": base64.b64encode(value.encode()).decode()})
        with capture_logs() as logs:
            reg = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints)))
            ch = meshkit.dial("orderd", registry=reg,
                              options=meshkit.DialOptions(insecure=True))
            await until(lambda: bool(ch.stats().endpoints), timeout_s=10.0,
                        what="the channel to list the good etcd record")
        assert [ep.instance_id for ep in ch.stats().endpoints] == ["orderd-2"]
        assert any(e["event"] == "skipping unusable etcd entry"
                   and e["key"] == "/meshkit/services/orderd/orderd-1" for e in logs), logs
        admin = AdminServer(AdminOptions(registry=CollectorRegistry(), require_server=False))
        port = await admin.start()
        for accept in ("text/plain", _PROMETHEUS_ACCEPT):
            status, _, body = await _raw_get(port, "/metrics", {"Accept": accept})
            assert status == 200, (accept, body[:200])
            assert 'instance_id="orderd-2"' in body.decode("utf-8")
    finally:
        if admin is not None:
            await admin.stop()
        if ch is not None:
            await ch.close()
        if reg is not None:
            await reg.close()
        node.close()


class _BigChannel:
    """A live channel to a service of ``n`` endpoints as the collector sees it: the typed
    snapshot ``MeshChannel.stats()`` answers (5 per-endpoint families: ~5 samples per
    endpoint), and the threads that asked for it."""

    live = True

    def __init__(self, n: int) -> None:
        self.read_in: set[int] = set()
        self._stats = ChannelStats(
            service="orderd", state="READY", balancer="P2C", ejections=0, watch_errors=0,
            endpoints=tuple(EndpointStats(
                instance_id=f"orderd-{i:04d}", address=f"10.0.{i // 250}.{i % 250}:50051",
                state="READY", present=True, ejected=False, calls=10 * i, failures=i,
                in_flight=1, rtt_ms=1.5, load_ms=3.0, pending=1) for i in range(n)),
            retry=RetrySnapshot(calls=1, retries=0, hedges=0, budget_exhausted=0,
                                gave_up_deadline=0, budget_left=10.0, budget="budget"))

    def stats(self) -> ChannelStats:
        self.read_in.add(threading.get_ident())
        return self._stats


async def _largest_loop_gap_s(scrape: Callable[[], Awaitable[None]]) -> float:
    """The longest this loop went without running a 1 ms ticker while ``scrape()`` ran."""
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.get_running_loop().create_task(ticker())
    try:
        await asyncio.sleep(0.02)
        await scrape()
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    return max(gaps)


async def test_a_scrape_of_a_channel_to_2000_endpoints_does_not_stall_the_event_loop() -> None:
    """``/metrics`` was collected and rendered on the event loop the process's gRPC
    server and channels run on (``serve()`` runs the admin server in it): for a channel
    to a 1,000-endpoint service one scrape in OpenMetrics (what Prometheus asks for)
    held the loop ~90-130 ms on a 2-core box, every scrape interval, which every call
    in flight waited (a 100 ms deadline failed; peers' P2C latency estimates of this
    process jumped). The exposition is now collected and rendered in a worker thread
    (the channels' snapshots still taken on the loop): the loop's largest gap during a
    scrape is the GIL's switch interval and the snapshot's samples, not the rendering.
    Measured against the same rendering done on the loop here and now (best of 3),
    the largest gap best of 5 scrapes, so a loaded machine slows both alike."""
    big = _BigChannel(2000)
    track(big, kind="channel")
    prom = CollectorRegistry()
    admin = AdminServer(AdminOptions(registry=prom, require_server=False))
    try:
        port = await admin.start()
        blocking_s = []
        for _ in range(3):  # what the loop waited for a scrape before
            t0 = time.perf_counter()
            openmetrics_generate(prom)
            blocking_s.append(time.perf_counter() - t0)
        gaps_s = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:

            async def scrape() -> None:
                async with http.get(f"http://127.0.0.1:{port}/metrics",
                                    headers={"Accept": _PROMETHEUS_ACCEPT}) as resp:
                    assert resp.status == 200
                    assert b'instance_id="orderd-1999"' in await resp.read()

            for _ in range(5):
                gaps_s.append(await _largest_loop_gap_s(scrape))
    finally:
        big.live = False
        await admin.stop()
    assert min(gaps_s) < min(blocking_s) / 2, (
        f"a scrape held the event loop {min(gaps_s) * 1000:.0f} ms (largest gap, best of "
        f"{[round(g * 1000) for g in gaps_s]} ms) where rendering on it takes "
        f"{min(blocking_s) * 1000:.0f} ms")


async def test_metrics_read_channels_on_the_loop_and_collect_in_a_worker_thread() -> None:
    """The registry is collected off the loop (a collector of it runs in another
    thread), but a channel's ``stats()`` (its balancer, pool and retry budget belong to
    its loop; reading the budget moves its window) is still called on the loop."""
    loop_thread = threading.get_ident()
    big = _BigChannel(3)
    track(big, kind="channel")
    collected_in: list[int] = []

    class Probe:
        def collect(self) -> Iterator[Metric]:
            collected_in.append(threading.get_ident())
            yield GaugeMetricFamily("probe", "A probe.", value=1.0)

    prom = CollectorRegistry()
    prom.register(Probe())
    try:
        async with AdminServer(AdminOptions(registry=prom, require_server=False)) as admin:
            status, _, body = await _raw_get(admin.port, "/metrics", {})
        assert status == 200 and b'instance_id="orderd-0002"' in body
        assert big.read_in == {loop_thread}
        assert collected_in and loop_thread not in collected_in
    finally:
        big.live = False


async def test_metric_text_not_encodable_as_utf8_is_replaced_not_a_500() -> None:
    """A collector on the registry with a lone surrogate in a label value or help text
    made prometheus-client raise ``UnicodeEncodeError`` and every ``/metrics`` scrape a
    500 (all the process's series gone); the text is now sent with U+FFFD in its place
    (a surrogate pair as its character), in both formats, with one warning naming the
    family."""

    class Odd:
        def collect(self) -> Iterator[Metric]:
            fam = GaugeMetricFamily("odd", "Help \udc80.", labels=["id"])
            fam.add_metric(["orderd-\ud83d"], 1.0)
            fam.add_metric(["smile-\ud83d\ude00"], 2.0)
            yield fam
            yield GaugeMetricFamily("fine", "Fine.", value=3.0)

    prom = CollectorRegistry()
    prom.register(Odd())
    with capture_logs() as logs:
        async with AdminServer(AdminOptions(registry=prom, require_server=False)) as admin:
            for accept in ("text/plain", _PROMETHEUS_ACCEPT, "text/plain"):
                status, _, body = await _raw_get(admin.port, "/metrics", {"Accept": accept})
                assert status == 200, (accept, body[:200])
                text = body.decode("utf-8")
                assert 'id="orderd-\ufffd"' in text and 'id="smile-\U0001f600"' in text
                assert "Help \ufffd." in text and "fine 3.0" in text
    warned = [e for e in logs if "UTF-8" in e["event"]]
    assert [e["families"] for e in warned] == [["odd"]], warned



def _audit_and_echo(registry: LocalRegistry, app_registry: CollectorRegistry,
                    ) -> tuple[meshkit.MeshServer, meshkit.MeshServer]:
    """Two servers of one loop sharing its admin server: ``audit`` counting into
    ``app_registry``, ``echo`` into the default registry."""
    def options(instance_id: str, **kw: Any) -> meshkit.ServeOptions:
        return meshkit.ServeOptions(insecure=True, instance_id=instance_id, drain_delay_s=0.0,
                                    grace_s=1.0, admin=AdminOptions(), **kw)

    audit = meshkit.MeshServer("audit", [add_echo("a1")], registry=registry,
                               options=options("a1", telemetry=TelemetryOptions(
                                   registry=app_registry, tracing=False)))
    echo = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                              options=options("e1"))
    return audit, echo

async def test_admin_metrics_keep_the_default_registry_when_the_first_server_uses_its_own(
        registry: LocalRegistry) -> None:
    """Two servers in one process (one event loop, so one shared admin server): ``audit``
    first, whose telemetry counts into an application registry
    (``TelemetryOptions(registry=app_registry)``), then ``echo`` with the defaults. The
    admin server took the *first* server's registry and ``/metrics`` never showed the
    process's default registry: every ``grpc_server_*`` series of ``echo`` (and every
    ``grpc_client_*`` series of a ``dial()`` with default telemetry) was counted and never
    exported; swap the start order and ``audit``'s vanished. ``default_registry()``: "The
    process's meshkit CollectorRegistry ... ``/metrics`` serves it".

    Now ``/metrics`` serves the default registry and the registry of every server of the
    loop, merged into one exposition (OpenMetrics and text): a series counted in both
    (both serve ``meshkit.test.Echo``) is their sum, the mesh families come once, and a
    registry leaves with its last server."""
    app_registry = CollectorRegistry()
    orders = Counter("app_orders", "Orders taken.", registry=app_registry)
    orders.inc(7)

    audit, echo = _audit_and_echo(registry, app_registry)
    await audit.start()
    try:
        await echo.start()
        try:
            assert audit.admin is not None and audit.admin is echo.admin  # one per loop
            url = f"{echo.admin.url}/metrics"

            async def scrape(accept: str = _PROMETHEUS_ACCEPT) -> list[Metric]:
                async with aiohttp.ClientSession() as http, \
                        http.get(url, headers={"Accept": accept}) as resp:
                    text = await resp.text()
                    om = resp.headers["Content-Type"].startswith("application/openmetrics")
                # the OpenMetrics parser refuses a family named twice
                return list(openmetrics_families(text) if om else text_families(text))

            def started(fams: list[Metric]) -> float:
                return sum(s.value for f in fams for s in f.samples
                           if s.name == "grpc_server_started_total"
                           and s.labels.get("grpc_method") == "Unary")

            before = started(await scrape())
            for srv, calls in ((echo, 3), (audit, 2)):
                async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
                    for _ in range(calls):
                        await ch.unary_unary(method("Unary"))(b"x", timeout=5)
            for accept in (_PROMETHEUS_ACCEPT, "text/plain"):
                fams = await scrape(accept)
                assert started(fams) - before == 5  # echo's 3 and audit's 2, each once
                names = [f.name for f in fams]
                assert len(names) == len(set(names)), names
                ready = [s.labels["service"] for f in fams for s in f.samples
                         if s.name == "meshkit_server_ready"]
                assert sorted(ready) == ["audit", "echo"], ready  # once each
                assert [s.value for f in fams for s in f.samples
                        if s.name == "app_orders_total"] == [7.0]
        finally:
            await echo.drain()
    finally:
        await audit.drain()
    # (both released: the admin server stopped with its last user)


async def test_a_registry_leaves_admin_metrics_with_its_last_server(
        registry: LocalRegistry) -> None:
    """The registry of a server that stopped leaves the shared admin server's
    ``/metrics`` (a reload that replaces a server and its registry must not keep the old
    one's gauges beside the new one's), the default registry and the other servers'
    stay."""
    app_registry = CollectorRegistry()
    Counter("app_orders", "Orders taken.", registry=app_registry).inc()

    audit, echo = _audit_and_echo(registry, app_registry)
    await audit.start()
    try:
        await echo.start()
        assert echo.admin is not None
        url = f"{echo.admin.url}/metrics"
        status, text = await get(url)
        assert status == 200 and "app_orders_total 1.0" in text
    finally:
        await audit.drain()
    try:
        status, text = await get(url)
        assert status == 200 and "app_orders_total" not in text
        assert 'meshkit_server_ready{service="echo"} 1.0' in text
    finally:
        await echo.drain()


async def _raw(port: int, request: bytes, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """Send one raw HTTP request to 127.0.0.1:port: (status, head)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
    head = data.split(b"\r\n\r\n", 1)[0]
    return int(head.split(b" ", 2)[1]), head


def _request(path: str, host: str | None, *extra: str, version: str = "1.1") -> bytes:
    """``GET path`` with ``Host: host`` (none if ``None``), ``extra`` header lines (a
    field may come twice), ``Connection: close``."""
    lines = [f"GET {path} HTTP/{version}", *([f"Host: {host}"] if host is not None else []),
             *extra, "Connection: close", "", ""]
    return "\r\n".join(lines).encode()


async def test_loopback_admin_server_refuses_a_foreign_host_header_dns_rebinding() -> None:
    """The admin server binds loopback by default, and the README's only protection for
    its unauthenticated routes is "keep the admin port on loopback or a trusted network".
    A page on ``http://attacker.example:PORT`` in a developer's browser whose name is then
    re-resolved to 127.0.0.1 (DNS rebinding) read ``/debug/mesh``,
    ``/debug/dashboard.json`` and ``/metrics`` as same-origin requests: the server
    answered them 200 whatever the ``Host`` header named (the dashboard's CSP
    ``connect-src 'self'`` even allowed it, 'self' being the rebound origin). A
    loopback-bound server now answers only requests addressed to an IP literal or
    ``localhost`` (``127.0.0.1:PORT``, ``[::1]:PORT``, ``localhost:PORT``, any port) and
    refuses others 403, the defence Node's inspector (CVE-2018-7160), Jupyter and
    webpack/Vite dev servers use."""
    admin = AdminServer(AdminOptions(registry=CollectorRegistry(), require_server=False))
    port = await admin.start()
    try:
        for good in (f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", "LOCALHOST",
                     f"localhost.:{port}", f"app.localhost:{port}", f"[::1]:{port}",
                     "[::ffff:127.0.0.1]", f"[fe80::1%25eth0]:{port}", f"10.0.0.5:{port}"):
            status, head = await _raw(port, _request("/debug/mesh", good))
            assert status == 200, (good, head)  # a loopback name or an address keeps working
        status, head = await _raw(port, _request("/healthz", None, version="1.0"))
        assert status == 200, head  # HTTP/1.0 without Host: no browser's request
        served = {}
        for path in ("/debug/mesh", "/debug/dashboard.json", "/metrics", "/"):
            for bad in (f"attacker.example:{port}", "attacker.example", "localhost.evil.com",
                        f"127.0.0.1.nip.io:{port}", f"localhost:{port}x", "[::1", "[evil]:80",
                        "::1", "127.0.0.1:80:80"):
                status, head = await _raw(port, _request(path, bad,
                                                         "Origin: http://attacker.example"))
                served[path, bad] = status
                assert b"Content-Type: text/plain" in head, head
        assert all(s == 403 for s in served.values()), (
            f"loopback admin server answered a rebound Host: {served}")
    finally:
        await admin.stop()


async def test_an_admin_server_on_a_wildcard_address_answers_any_host() -> None:
    """On ``0.0.0.0`` (a Prometheus on another machine scrapes it by pod IP or DNS name)
    the Host header is not checked."""
    admin = AdminServer(AdminOptions(host="0.0.0.0", registry=CollectorRegistry(),
                                     require_server=False))
    port = await admin.start()
    try:
        status, head = await _raw(port, _request("/metrics", f"orders-7.pods.example:{port}"))
        assert status == 200, head
    finally:
        await admin.stop()


class _Big:
    """A collector of ``n`` gauge series (a large mesh: ~150 bytes a series)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("big_endpoint_load_ms", "P2C load per endpoint",
                              labels=["mesh_service", "mesh_instance", "address"])
        for i in range(self.n):
            g.add_metric(["orders-service-production", f"orders-{i:08d}-{'x' * 40}",
                          f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:50051"], float(i))
        yield g


async def test_a_scraper_that_stops_reading_metrics_does_not_hold_stop() -> None:
    """A scraper that sends ``GET /metrics`` and then stops reading (a hung Prometheus, a
    client on a stalled network, or anyone who can reach the port) keeps the response's
    handler waiting to write; ``AdminServer.stop()`` -- and so ``MeshServer.drain()``,
    which stops the shared admin server with its last user -- then waited for aiohttp's
    default ``shutdown_timeout`` (60 s) before it returned. The runner's shutdown_timeout
    is now ~1 s (as ``lingering_time`` bounds an unfinished request body), so stop()
    returns within a few seconds."""
    reg = CollectorRegistry()
    reg.register(_Big(80_000))  # ~12 MB: more than the kernel buffers on loopback hold
    admin = AdminServer(AdminOptions(registry=reg, require_server=False))
    port = await admin.start()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    _, writer = await asyncio.open_connection(sock=sock)
    writer.transport.pause_reading()  # the scraper never reads its answer
    stop: asyncio.Task[None] | None = None
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        # the request is in: rendered, then stuck writing (its first bytes are in the
        # scraper's small receive buffer: the ~12 MB answer cannot all fit; was a 1.5 s
        # sleep)
        loop = asyncio.get_running_loop()
        end = loop.time() + 20
        while not struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD,
                                                 b"\0\0\0\0"))[0]:
            assert loop.time() < end, "no answer began within 20 s"
            await asyncio.sleep(0.02)
        t0 = time.monotonic()
        stop = asyncio.get_running_loop().create_task(admin.stop())
        done, _ = await asyncio.wait({stop}, timeout=4.0)
        waited = time.monotonic() - t0
        assert done, (f"AdminServer.stop() still waiting after {waited:.1f} s on one "
                      "scraper that does not read its /metrics answer")
    finally:
        writer.transport.abort()  # releases the handler, and so the stop
        if stop is not None:
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                await asyncio.wait_for(stop, 5)
        await admin.stop()


async def test_metrics_negotiation_reads_every_accept_field_line() -> None:
    """``Accept`` is a list-based field: a request may carry it on several field lines,
    which mean the same as one line joining them with commas (RFC 9110 5.2/5.3). Here the
    scraper says OpenMetrics q=0.9 and the text format q=0.3, on two lines; meshkit read
    only the first line, saw the text format alone and answered ``text/plain;
    version=0.0.4``, the format the client likes least. Every Accept line is weighed now:
    OpenMetrics, as when the same media ranges come on one line."""
    admin = AdminServer(AdminOptions(registry=CollectorRegistry(), require_server=False))
    port = await admin.start()
    text, om = "text/plain;version=0.0.4;q=0.3", "application/openmetrics-text;version=1.0.0;q=0.9"
    try:
        _, one_line = await _raw(port, _request("/metrics", "127.0.0.1", f"Accept: {text}, {om}"))
        assert b"Content-Type: application/openmetrics-text" in one_line, one_line
        _, two_lines = await _raw(port, _request("/metrics", "127.0.0.1", f"Accept: {text}",
                                                 f"Accept: {om}"))
    finally:
        await admin.stop()
    assert b"Content-Type: application/openmetrics-text" in two_lines, two_lines


async def test_admin_metrics_keep_the_mesh_families_with_an_admin_registry_of_its_own(
        registry: LocalRegistry) -> None:
    """``AdminOptions(registry=<the app's registry>)`` with
    ``TelemetryOptions(registry=<another>)``: 0cda919 gave the admin server's own registry
    no RPC metrics (so no collector of the live channels and servers) once a dashboard
    registry was named, and silenced the added registries' collectors, so ``/metrics``
    had no ``meshkit_server_*``/``meshkit_client_*``/``meshkit_registry_*`` family at
    all. The own registry always has them."""
    admin_registry = CollectorRegistry()
    Counter("app_orders", "Orders.", registry=admin_registry).inc()
    telemetry_registry = CollectorRegistry()
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, drain_delay_s=0.0, grace_s=1.0,
                                 admin=AdminOptions(port=0, registry=admin_registry),
                                 telemetry=TelemetryOptions(registry=telemetry_registry,
                                                            tracing=False)))
    await srv.start()
    try:
        assert srv.admin is not None
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{srv.admin.port}/metrics",
                         timeout=aiohttp.ClientTimeout(total=5)) as resp:
            text = await resp.text()
        assert "app_orders_total 1.0" in text
        assert 'meshkit_server_ready{service="echo"} 1.0' in text, text
    finally:
        await srv.drain()


async def test_metrics_answer_while_the_loops_default_executor_is_full() -> None:
    """``/metrics`` was rendered in ``asyncio.to_thread``, the loop's default executor,
    which the application's own work shares (``to_thread``, ``run_in_executor(None)``,
    aiohttp's name lookups; plain-function gRPC handlers before they got threads of their
    own): with every thread of it busy (a slow database), a scrape waited behind them
    and Prometheus marked a busy instance down. It is rendered on the admin server's
    own thread now (``meshkit-admin-metrics``), which ends with :meth:`AdminServer.stop`."""
    loop = asyncio.get_running_loop()
    release = threading.Event()
    rendered_in: list[str] = []

    class Probe:
        def collect(self) -> Iterator[Metric]:
            rendered_in.append(threading.current_thread().name)
            yield GaugeMetricFamily("probe", "A probe.", value=1.0)

    prom = CollectorRegistry()
    prom.register(Probe())
    # more jobs than the default executor has threads (min(32, cpus + 4), 32 at most)
    busy = [loop.run_in_executor(None, release.wait, 20) for _ in range(40)]
    try:
        async with AdminServer(AdminOptions(registry=prom, require_server=False)) as admin:
            try:
                status, body = await asyncio.wait_for(get(admin.url + "/metrics"), 3)
            except TimeoutError:
                raise AssertionError("/metrics did not answer within 3 s while the loop's "
                                     "default executor was busy") from None
            assert status == 200 and "probe 1.0" in body
            assert not release.is_set()
            assert rendered_in and all(n.startswith("meshkit-admin-metrics")
                                       for n in rendered_in), rendered_in
        await until(lambda: not [t for t in threading.enumerate()
                                 if t.name.startswith("meshkit-admin-metrics")],
                    timeout_s=5, what="the admin server's render thread to end")
    finally:
        release.set()
        await asyncio.wait_for(asyncio.gather(*busy), 10)


@pytest.mark.parametrize("slow", ["before-bind", "after-bind"])
async def test_a_stop_during_start_leaves_nothing_listening_and_no_thread(
        slow: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``stop()`` while ``start()`` was inside aiohttp's start (the app runner's setup,
    the site binding) found no runner yet: it released the ``/metrics`` render threads
    and returned, then the start finished and the server kept serving after ``stop()``,
    every ``/metrics`` a 503 "admin server stopping" for good. Now such a ``stop()``
    makes the start undo itself (the site closed, the render threads released) and
    raise ``RuntimeError``, as a ``MeshServer.drain()`` during its ``start()`` does, and
    returns once that is done. aiohttp's start is slowed down here (a delay before or
    after the bind); in the second case a scrape during it started a render thread."""
    real_start_app = admin_module.start_app
    entered, bound_evt = asyncio.Event(), asyncio.Event()
    bound: list[int] = []

    async def slow_start_app(app: web.Application, host: str,
                             port: int) -> tuple[web.AppRunner, int]:
        entered.set()
        if slow == "before-bind":
            await asyncio.sleep(0.5)
        runner, got = await real_start_app(app, host, port)
        bound.append(got)
        bound_evt.set()
        if slow == "after-bind":
            await asyncio.sleep(0.5)
        return runner, got

    monkeypatch.setattr(admin_module, "start_app", slow_start_app)
    admin = AdminServer(AdminOptions(registry=CollectorRegistry(), require_server=False))
    start = asyncio.create_task(admin.start())
    try:
        await asyncio.wait_for(entered.wait(), 5)
        if slow == "after-bind":
            await asyncio.wait_for(bound_evt.wait(), 5)
            status, _ = await asyncio.wait_for(get(f"http://127.0.0.1:{bound[0]}/metrics"), 5)
            assert status == 200
        await asyncio.wait_for(admin.stop(), 5)
        stop_returned_with_start_done = start.done()
        (result,) = await asyncio.wait_for(asyncio.gather(start, return_exceptions=True), 5)
        assert bound, result
        port = bound[0]
        try:
            status, _ = await asyncio.wait_for(get(f"http://127.0.0.1:{port}/metrics"), 5)
        except aiohttp.ClientConnectionError:
            status = 0
        assert status == 0, (
            f"the admin server still serves after stop() (start() gave {result!r}); "
            f"/metrics answers {status}")
        assert stop_returned_with_start_done, "stop() returned before the start was undone"
        assert isinstance(result, RuntimeError), result
        await until(lambda: not [t for t in threading.enumerate()
                                 if t.name.startswith("meshkit-admin-metrics")],
                    timeout_s=5, what="the admin server's render thread to end")
        # stopped for good: a later stop() is a no-op, a new start() serves again
        await admin.stop()
        async with AdminServer(AdminOptions(registry=CollectorRegistry(),
                                            require_server=False)) as again:
            assert (await get(again.url + "/healthz"))[0] == 200
    finally:
        if not start.done():
            start.cancel()
        await asyncio.gather(start, return_exceptions=True)
        await admin.stop()


async def test_a_stop_cancelled_while_it_waits_for_the_start_still_undoes_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``stop()`` given up while it waits for a start under way (its caller's timeout)
    still has that start undone: nothing listens once the start returns."""
    real_start_app = admin_module.start_app
    bound: list[int] = []

    async def slow_start_app(app: web.Application, host: str,
                             port: int) -> tuple[web.AppRunner, int]:
        runner, got = await real_start_app(app, host, port)
        bound.append(got)
        await asyncio.sleep(0.5)
        return runner, got

    monkeypatch.setattr(admin_module, "start_app", slow_start_app)
    admin = AdminServer(AdminOptions(registry=CollectorRegistry(), require_server=False))
    start = asyncio.create_task(admin.start())
    try:
        await until(lambda: bool(bound), timeout_s=5, what="the bind")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(admin.stop(), 0.1)
        (result,) = await asyncio.wait_for(asyncio.gather(start, return_exceptions=True), 5)
        assert isinstance(result, RuntimeError), result
        with pytest.raises(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", bound[0])
            writer.close()
    finally:
        await asyncio.gather(start, return_exceptions=True)
        await admin.stop()
