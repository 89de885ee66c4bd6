"""MeshServer: health, reflection, registration and graceful drain, in-process."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import meshkit
import meshkit.server
from meshkit._metadata import MESH_USER_AGENT
from meshkit.auth import current_claims
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from meshkit.errors import RegistryError
from meshkit.observability import AdminOptions
from meshkit.observability._live import live_server_stats
from meshkit.resilience import RetryOptions, RetryPolicy, current_deadline, deadline_scope
from meshkit.resilience._retry import DRAINING_DETAILS
from meshkit.server import _SharedAdmin
from tests.conftest import EchoFactory
from tests.discovery.consul_double import ConsulDouble
from tests.support import grpc_plugin
from tests.support.echo import SERVICE, add_echo, method
from tests.support.loops import run as run_loop
from tests.support.skips import asyncio_loop_only
from tests.support.wait import until


async def _assert_health_and_reflection(ch: grpc.aio.Channel) -> None:
    """The echo server on ``ch`` answers health SERVING (whole server and the echo service)
    and lists the echo and health services by reflection."""
    hc = health_pb2_grpc.HealthStub(ch)
    for name in ("", SERVICE):
        resp = await hc.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(ch)
    req = reflection_pb2.ServerReflectionRequest(list_services="")
    names: set[str] = set()
    async for answer in refl.ServerReflectionInfo(iter([req]), timeout=5):
        names = {s.name for s in answer.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


async def test_health_and_reflection_after_start(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A started server answers grpc.health.v1 SERVING and lists its services by reflection."""
    srv = await echo_servers("e1")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        await _assert_health_and_reflection(ch)
    assert srv.instance is not None
    assert srv.instance in await registry.instances("echo")


async def test_drain_order_not_serving_deregister_then_finish_in_flight(
    registry: LocalRegistry,
) -> None:
    """Drain flips health, deregisters, lets an in-flight call finish, then refuses new calls."""
    srv = meshkit.MeshServer(
        "echo",
        [add_echo("d1")],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="d1", drain_delay_s=0.2, grace_s=3),
    )
    await srv.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        sleep = ch.unary_unary(method("Sleep"))
        in_flight = asyncio.ensure_future(sleep(b"500", timeout=5))
        await asyncio.sleep(0.05)
        drain = asyncio.ensure_future(srv.drain())
        hc = health_pb2_grpc.HealthStub(ch)
        await asyncio.sleep(0.1)  # inside drain_delay_s: still serving calls, but NOT_SERVING
        resp = await hc.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2)
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await registry.instances("echo") == frozenset()
        assert await in_flight == b"d1"
        await asyncio.wait_for(drain, 5)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ch.unary_unary(method("Unary"))(b"late", timeout=1)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_server_interceptors_run(registry: LocalRegistry) -> None:
    """Server interceptors given in ServeOptions see every call."""
    seen: list[str] = []

    class Record(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
            seen.append(handler_call_details.method)
            return await continuation(handler_call_details)

    srv = meshkit.MeshServer(
        "echo",
        [add_echo("i1")],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, drain_delay_s=0, interceptors=(Record(),)),
    )
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            await ch.unary_unary(method("Unary"))(b"x", timeout=2)
        assert method("Unary") in seen
    finally:
        await srv.drain()


@pytest.mark.parametrize("mine", [False, True])
async def test_the_mesh_chain_runs_without_grpc_interceptors(
    registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch, mine: bool,
) -> None:
    """serve()'s own chain (telemetry, deadline, the request gate) is applied where the
    handlers are looked up and grpc.aio gets no interceptor; a user interceptor that does
    more than wrap handlers puts the whole chain back on grpc.aio's path, in order."""
    given: list[Any] = []
    real = grpc.aio.server

    def spy(*args: Any, **kwargs: Any) -> Any:
        given.append(kwargs.get("interceptors"))
        return real(*args, **kwargs)

    monkeypatch.setattr(grpc.aio, "server", spy)
    seen: list[str] = []

    class Mine(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            seen.append(details.method)
            return await continuation(details)

    from prometheus_client import CollectorRegistry

    from meshkit.observability import TelemetryOptions
    from meshkit.resilience import DeadlineOptions
    metrics = CollectorRegistry()
    srv = meshkit.MeshServer("echo", [add_echo("c1")], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, drain_delay_s=0, admin=None,
                                 deadline=DeadlineOptions(min_remaining_s=5.0),
                                 telemetry=TelemetryOptions(registry=metrics, tracing=False),
                                 interceptors=(Mine(),) if mine else ()))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            assert await ch.unary_unary(method("Unary"))(b"x", timeout=30) == b"c1|x"
            with pytest.raises(grpc.aio.AioRpcError) as info:  # deadline admission ran
                await ch.unary_unary(method("Unary"))(b"x", timeout=3)
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        await srv.drain()
    if mine:
        assert given[0] is not None and type(given[0][-1]).__name__ == "Mine"
        assert seen.count(method("Unary")) >= 1
    else:
        assert given == [None]
    started = metrics.get_sample_value(
        "grpc_server_started_total",
        {"grpc_service": SERVICE, "grpc_method": "Unary", "grpc_type": "unary"})
    assert started is not None and started >= 1
    assert srv.gate is not None


def test_bad_serve_options_quote_the_value() -> None:
    """Bad server options fail at construction, quoting the value."""
    with pytest.raises(meshkit.ConfigError, match="70000"):
        meshkit.ServeOptions(insecure=True, port=70000)
    with pytest.raises(meshkit.ConfigError, match=r"port.*True"):  # a bool is not a port
        meshkit.ServeOptions(insecure=True, port=True)
    with pytest.raises(meshkit.ConfigError, match="-2"):
        meshkit.ServeOptions(insecure=True, grace_s=-2)
    with pytest.raises(meshkit.ConfigError, match="'yes'"):
        meshkit.ServeOptions(insecure=True, expose_exception_text="yes")  # type: ignore[arg-type]
    with pytest.raises(meshkit.ConfigError, match="'no spaces'"):
        meshkit.MeshServer(
            "no spaces", [], registry=LocalRegistry(), options=meshkit.ServeOptions(insecure=True)
        )


@pytest.mark.parametrize(("server_options", "quoted"), [
    ({"grpc.max_receive_message_length": 8 << 20}, "mapping"),
    ([("grpc.max_receive_message_length",)], r"\('grpc.max_receive_message_length',\)"),
    ([("grpc.max_receive_message_length", None)], "None"),
    ([8 << 20], "8388608"),
], ids=["mapping", "one-element-pair", "none-value", "not-a-pair"])
def test_malformed_server_options_are_refused_at_construction(
        server_options: Any, quoted: str) -> None:
    """``ServeOptions.server_options`` given as a mapping (how most settings are written)
    or with an item that is not a ``(name, value)`` pair grpc accepts was taken as given
    and failed only at ``start()``, with a bare ``ValueError`` ("dictionary update
    sequence element") or ``TypeError`` from grpc; now a ``ConfigError`` at construction
    quotes it."""
    with pytest.raises(meshkit.ConfigError, match=rf"server_options.*{quoted}"):
        meshkit.ServeOptions(insecure=True, server_options=server_options)


def test_serve_builds_the_one_chain_order() -> None:
    """serve() orders the mesh's checks itself: telemetry, deadline, auth, rate limit, the
    answer to unhandled exceptions, then the user's interceptors; the deadline check and
    that answer are on by default."""
    from meshkit._unhandled import UnhandledErrorInterceptor
    from meshkit.auth import AuthOptions, AuthzPolicy
    from meshkit.resilience import RateLimitOptions
    from meshkit.server import server_chain

    class Mine(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            return await continuation(details)

    opts = meshkit.ServeOptions(insecure=True, auth=AuthOptions(policy=AuthzPolicy()),
                                rate_limit=RateLimitOptions(default_rule="10/second"),
                                interceptors=(Mine(),))
    names = [type(i).__name__ for i in server_chain("svc", opts)]
    assert names == ["TelemetryServerInterceptor", "DeadlineInterceptor", "AuthzInterceptor",
                     "RateLimitInterceptor", "UnhandledErrorInterceptor", "Mine"]
    bare = meshkit.ServeOptions(insecure=True, telemetry=None, deadline=None)
    assert [type(i).__name__ for i in server_chain("svc", bare)] == [
        "UnhandledErrorInterceptor"]
    exposed = meshkit.ServeOptions(insecure=True, telemetry=None, deadline=None,
                                   expose_exception_text=True)
    # exposing the text, a handler's refusal still gets its status: the answer, refusals only
    (only,) = server_chain("svc", exposed)
    assert isinstance(only, UnhandledErrorInterceptor) and only.expose_exception_text


def test_mesh_checks_in_interceptors_are_refused() -> None:
    """A meshkit check passed as a plain interceptor is refused, naming the option to use."""
    from meshkit.resilience import DeadlineInterceptor, RateLimitInterceptor, RateLimitOptions

    with pytest.raises(meshkit.ConfigError, match=r"ServeOptions\(deadline=\.\.\.\)"):
        meshkit.ServeOptions(insecure=True, interceptors=(DeadlineInterceptor(),))
    limiter = RateLimitInterceptor(RateLimitOptions(default_rule="1/second"))
    with pytest.raises(meshkit.ConfigError, match=r"ServeOptions\(rate_limit=\.\.\.\)"):
        meshkit.ServeOptions(insecure=True, interceptors=(limiter,))


# -- issue 12 item 5: undecodable requests ----------------------------------------------
_GARBAGE = b"\xff\xff\xff\xff"  # a field tag whose varint never ends: no message decodes it


def _add_guard_probe(servicer: object, server: object) -> None:
    """A protobuf service on the generic-handler path only: unary and streaming requests."""

    async def check(request: health_pb2.HealthCheckRequest, context: object
                    ) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def count(requests: object, context: object) -> health_pb2.HealthCheckResponse:
        async for _ in requests:  # type: ignore[attr-defined]
            pass
        return health_pb2.HealthCheckResponse()

    resp = health_pb2.HealthCheckResponse.SerializeToString
    req = health_pb2.HealthCheckRequest.FromString
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(  # type: ignore[attr-defined]
        "test.Guard", {
            "Check": grpc.unary_unary_rpc_method_handler(
                check, request_deserializer=req, response_serializer=resp),
            "Count": grpc.stream_unary_rpc_method_handler(
                count, request_deserializer=req, response_serializer=resp),
        }),))


async def _admin_metrics(srv: meshkit.MeshServer) -> str:
    assert srv.admin is not None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http, \
            http.get(f"{srv.admin.url}/metrics") as resp:
        return await resp.text()


def _handled(text: str, method: str, code: str) -> float:
    from tests.faults._checks import metric

    return metric(text, "grpc_server_handled_total", grpc_method=method, grpc_code=code)


@pytest.mark.parametrize("telemetry", ["on", "off"])
async def test_undecodable_request_is_invalid_argument_and_counted(
    echo_servers: EchoFactory, telemetry: str,
) -> None:
    """Bytes that no message decodes get INVALID_ARGUMENT "request is not a valid <Type>"
    (not grpcio's UNKNOWN naming DecodeError), on registered-method handlers (health),
    generic handlers, server-streaming (Watch) and streaming requests (reflection, Count);
    each call is counted in grpc_server_handled_total. Without telemetry the handler wrap
    that runs the guard's check for unary-request methods is the checks' own."""
    srv = await echo_servers("m1")
    extra: dict[str, Any] = {} if telemetry == "on" else {"telemetry": None}
    srv2 = meshkit.MeshServer("guard", [(_add_guard_probe, None)], registry=srv.registry,
                              options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                           **extra))
    await srv2.start()
    try:
        before = await _admin_metrics(srv2) if telemetry == "on" else ""
        cases = [
            ("/grpc.health.v1.Health/Check", "unary_unary", "grpc.health.v1.HealthCheckRequest"),
            ("/grpc.health.v1.Health/Watch", "unary_stream", "grpc.health.v1.HealthCheckRequest"),
            ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
             "stream_stream", "grpc.reflection.v1alpha.ServerReflectionRequest"),
            ("/test.Guard/Check", "unary_unary", "grpc.health.v1.HealthCheckRequest"),
            ("/test.Guard/Count", "stream_unary", "grpc.health.v1.HealthCheckRequest"),
        ]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv2.port}") as ch:
            for path, kind, type_name in cases:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    if kind == "unary_unary":
                        await ch.unary_unary(path)(_GARBAGE, timeout=5)
                    elif kind == "unary_stream":
                        async for _ in ch.unary_stream(path)(_GARBAGE, timeout=5):
                            pass
                    elif kind == "stream_unary":
                        await ch.stream_unary(path)(iter([_GARBAGE]), timeout=5)
                    else:
                        async for _ in ch.stream_stream(path)(iter([_GARBAGE]), timeout=5):
                            pass
                assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (path, info.value)
                assert info.value.details() == f"request is not a valid {type_name}"
            # a good request still works
            ok = await ch.unary_unary("/test.Guard/Check")(b"", timeout=5)
            assert health_pb2.HealthCheckResponse.FromString(ok).status == 1
        if telemetry == "off":
            return
        after = await _admin_metrics(srv2)
        for path, _, _ in cases:
            name = path.rsplit("/", 1)[1]
            counted = (_handled(after, name, "InvalidArgument")
                       - _handled(before, name, "InvalidArgument"))
            assert counted >= 1, (path, counted)
    finally:
        await srv2.drain()


# -- issue 12 item 6: bounds on in-flight work ---------------------------------------------
def _add_slow(servicer: object, server: object) -> None:
    """A bytes service whose Hold answers after 0.5 s; Echo echoes a request stream, Count
    counts one."""

    async def hold(request: bytes, context: object) -> bytes:
        await asyncio.sleep(0.5)
        return b"held %d" % len(request)

    async def echo(requests: Any, context: object) -> Any:
        async for r in requests:
            yield r

    async def count(requests: Any, context: object) -> bytes:
        return b"%d" % len([r async for r in requests])

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(  # type: ignore[attr-defined]
        "test.Slow", {"Hold": grpc.unary_unary_rpc_method_handler(hold),
                      "Echo": grpc.stream_stream_rpc_method_handler(echo),
                      "Count": grpc.stream_unary_rpc_method_handler(count)}),))


async def _slow_server(registry: LocalRegistry, instance_id: str | None = None,
                       **limits: object) -> meshkit.MeshServer:
    from meshkit.server import ServerLimits

    srv = meshkit.MeshServer("slow", [(_add_slow, None)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, drain_delay_s=0, admin=None,
                                 instance_id=instance_id,
                                 limits=ServerLimits(**limits)))  # type: ignore[arg-type]
    await srv.start()
    return srv


async def test_call_that_sends_headers_only_is_ended(registry: LocalRegistry) -> None:
    """A unary call whose request never comes is ended CANCELLED after
    first_message_timeout_s (grpc.aio alone keeps it open until the client leaves), and its
    slot is free again: a real call still gets through with max_concurrent_rpcs=2."""
    srv = await _slow_server(registry, first_message_timeout_s=0.5, max_concurrent_rpcs=2)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            idle = [ch.stream_stream("/test.Slow/Hold")() for _ in range(2)]
            await asyncio.wait_for(asyncio.gather(*(c.wait_for_connection() for c in idle)), 5)
            codes = await asyncio.wait_for(asyncio.gather(*(c.code() for c in idle)), 5)
            assert codes == [grpc.StatusCode.CANCELLED] * 2
            assert [await c.details() for c in idle] == ["request did not arrive in time"] * 2
            assert await ch.unary_unary("/test.Slow/Hold")(b"x", timeout=5) == b"held 1"
        assert srv.gate is not None and srv.gate.timed_out == 2
        # counted where operators look: ServerStats and /metrics' gate refusals
        assert srv.stats().gate_timed_out == 2
        from prometheus_client import CollectorRegistry, generate_latest

        from meshkit.observability import MeshCollector

        reg = CollectorRegistry()
        reg.register(MeshCollector())
        text = generate_latest(reg).decode()
        assert ('meshkit_server_gate_refusals_total{reason="timed_out",service="slow"} 2.0'
                in text), text
    finally:
        await srv.drain()


async def test_header_only_calls_each_get_their_own_first_message_timeout(
    registry: LocalRegistry,
) -> None:
    """Header-only calls started apart each end after their own first_message_timeout_s
    (one timer serves every waiting call and re-arms for the next one due), and a call
    whose request comes in time is untouched."""
    srv = await _slow_server(registry, first_message_timeout_s=1.0, max_concurrent_rpcs=8)
    loop = asyncio.get_running_loop()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            async def idle_call() -> tuple[float, grpc.StatusCode]:
                call = ch.stream_stream("/test.Slow/Hold")()
                await call.wait_for_connection()
                t0 = loop.time()
                code = await call.code()
                return loop.time() - t0, code

            first = asyncio.ensure_future(idle_call())
            await asyncio.sleep(0.6)
            second = asyncio.ensure_future(idle_call())
            assert await ch.unary_unary("/test.Slow/Hold")(b"x", timeout=5) == b"held 1"
            (w1, c1), (w2, c2) = await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert c1 == c2 == grpc.StatusCode.CANCELLED
        # each waited its own second (not ended early by the first one's timer)
        assert 0.9 <= w1 < 4.0 and 0.9 <= w2 < 4.0, (w1, w2)
        assert srv.gate is not None and srv.gate.timed_out == 2
    finally:
        await srv.drain()


async def test_header_only_calls_give_their_slots_to_new_calls_at_the_cap(
    registry: LocalRegistry,
) -> None:
    """With every slot held by calls whose request has not come for evict_waiting_after_s,
    a new call takes the slot of the one waiting longest (which ends CANCELLED) instead of
    being shed: header-only streams cannot lock callers out for first_message_timeout_s."""
    srv = await _slow_server(registry, first_message_timeout_s=30.0, max_concurrent_rpcs=2,
                             evict_waiting_after_s=1.0)  # margins for a loaded machine
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            idle = [ch.stream_stream("/test.Slow/Hold")() for _ in range(2)]
            await asyncio.wait_for(asyncio.gather(*(c.wait_for_connection() for c in idle)), 5)
            await asyncio.sleep(0.1)
            with pytest.raises(grpc.aio.AioRpcError) as info:  # not waiting long enough yet
                await ch.unary_unary("/test.Slow/Hold")(b"x", timeout=5)
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            await asyncio.sleep(1.1)
            assert await ch.unary_unary("/test.Slow/Hold")(b"x", timeout=5) == b"held 1"
            codes = [asyncio.ensure_future(c.code()) for c in idle]
            done, pending = await asyncio.wait(codes, timeout=5,
                                               return_when=asyncio.FIRST_COMPLETED)
            assert len(done) == 1 and len(pending) == 1  # one evicted (whichever came first)
            assert done.pop().result() is grpc.StatusCode.CANCELLED
            evicted = idle[codes.index(next(iter(f for f in codes if f.done())))]
            assert await evicted.details() == "request did not arrive in time"
            for c in idle:
                c.cancel()
            await asyncio.gather(*codes, return_exceptions=True)
        assert srv.gate is not None and srv.gate.evicted == 1
    finally:
        await srv.drain()


async def test_header_only_calls_give_their_read_permits_to_new_calls(
    registry: LocalRegistry,
) -> None:
    """With every read permit (max_concurrent_reads) held by calls whose request does not
    come, new calls wait for a permit (they are not shed: call slots are free) and get
    them once the holders have waited evict_waiting_after_s (they end CANCELLED). A holder
    is ended only while a call waits for a permit: when the first holder is ended, its
    permit goes to one new call, which reads and passes it to the other at once; the
    second holder, due a few ms after the first, is ended too only if it fell due before
    that (a race the loaded VM lost about one run in five). Either way it ends at
    first_message_timeout_s, with the same status."""
    srv = await _slow_server(registry, first_message_timeout_s=3.0, max_concurrent_rpcs=8,
                             max_concurrent_reads=2, evict_waiting_after_s=1.0)
    loop = asyncio.get_running_loop()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            idle = [ch.stream_stream("/test.Slow/Hold")() for _ in range(2)]
            await asyncio.wait_for(asyncio.gather(*(c.wait_for_connection() for c in idle)), 5)
            await asyncio.sleep(0.2)
            t0 = loop.time()
            hold = ch.unary_unary("/test.Slow/Hold")
            got = await asyncio.gather(*(hold(b"x", timeout=10) for _ in range(2)))
            assert got == [b"held 1"] * 2
            waited = loop.time() - t0 - 0.5  # Hold answers after 0.5 s
            assert 0.4 <= waited <= 5.0, waited  # the holders' 1 s, less the 0.2 s slept
            codes = await asyncio.wait_for(asyncio.gather(*(c.code() for c in idle)), 10)
            assert codes == [grpc.StatusCode.CANCELLED] * 2
            assert [await c.details() for c in idle] == ["request did not arrive in time"] * 2
        assert srv.gate is not None and srv.gate.shed == 0
        # each ended call counted under one reason (an evicted one not also timed_out)
        assert 1 <= srv.gate.evicted <= 2 and srv.gate.evicted + srv.gate.timed_out == 2
    finally:
        await srv.drain()


async def test_requests_wait_for_a_read_permit_instead_of_being_shed(
    registry: LocalRegistry,
) -> None:
    """More calls than read permits at once (small requests): they take turns reading, and
    every one is served."""
    srv = await _slow_server(registry, max_concurrent_reads=1)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            hold = ch.unary_unary("/test.Slow/Hold")
            got = await asyncio.gather(*(hold(b"x" * 1000, timeout=10) for _ in range(16)))
        assert got == [b"held 1000"] * 16
        assert srv.gate is not None and srv.gate.shed == 0 and srv.gate.evicted == 0
    finally:
        await srv.drain()


async def test_a_shed_call_is_nacked_and_retried_elsewhere_even_if_not_idempotent(
    registry: LocalRegistry,
) -> None:
    """A call shed before any of its code ran carries the nack trailer; the mesh client
    retries it on another endpoint although the method is not idempotent."""
    from meshkit.balancer import RingHash
    from meshkit.resilience._retry import is_nack

    a = await _slow_server(registry, "a", max_concurrent_rpcs=1, evict_waiting_after_s=None)
    b = await _slow_server(registry, "b", max_concurrent_rpcs=1, evict_waiting_after_s=None)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as raw:
            first = asyncio.ensure_future(raw.unary_unary("/test.Slow/Hold")(b"x", timeout=5))
            await asyncio.sleep(0.1)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await raw.unary_unary("/test.Slow/Hold")(b"y", timeout=5)
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert is_nack(info.value)
            await first
        opts = meshkit.DialOptions(insecure=True, balancer=RingHash, hash_key_metadata="k")
        async with meshkit.dial("slow", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(2)
            hold = ch.unary_unary("/test.Slow/Hold")
            got = await asyncio.gather(*(hold(b"z", timeout=5, metadata=(("k", "same"),))
                                         for _ in range(2)))
            assert got == [b"held 1", b"held 1"]
            assert ch.retry is not None and ch.retry.stats.retries >= 1
        assert (a.gate.shed if a.gate else 0) + (b.gate.shed if b.gate else 0) >= 2
    finally:
        await a.drain()
        await b.drain()


async def test_a_shed_hedged_call_is_sent_elsewhere_not_failed(
    registry: LocalRegistry,
) -> None:
    """A hedged call (idempotent, ``hedge_delay_s``) that an endpoint sheds with the nack
    trailer is sent to another endpoint at once, as a retried call is: a nack means no code
    of it ran, whatever its status (``RESOURCE_EXHAUSTED`` here), so it is not fatal."""
    from meshkit.balancer import RingHash
    from meshkit.resilience import RetryOptions, RetryPolicy

    a = await _slow_server(registry, "a", max_concurrent_rpcs=1, evict_waiting_after_s=None)
    b = await _slow_server(registry, "b", max_concurrent_rpcs=1, evict_waiting_after_s=None)
    try:
        hedged = RetryPolicy(idempotent=True, hedge_delay_s=5.0, max_attempts=2)
        opts = meshkit.DialOptions(insecure=True, balancer=RingHash, hash_key_metadata="k",
                                   retry=RetryOptions(default=hedged))
        async with meshkit.dial("slow", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(2)
            hold = ch.unary_unary("/test.Slow/Hold")
            t0 = time.monotonic()
            got = await asyncio.gather(*(hold(b"z", timeout=10, metadata=(("k", "same"),))
                                         for _ in range(2)))
            took = time.monotonic() - t0
            assert got == [b"held 1", b"held 1"]
            assert ch.retry is not None and ch.retry.stats.hedges >= 1
        assert took < 4.0  # sent on at the nack, not after the 5 s hedge delay
        assert (a.gate.shed if a.gate else 0) + (b.gate.shed if b.gate else 0) >= 1
    finally:
        await a.drain()
        await b.drain()


async def test_calls_over_the_limits_are_shed_with_resource_exhausted(
    registry: LocalRegistry,
) -> None:
    """Over max_concurrent_rpcs, and over max_inflight_request_bytes, calls get
    RESOURCE_EXHAUSTED at once while the admitted ones finish."""
    srv = await _slow_server(registry, max_concurrent_rpcs=2)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            hold = ch.unary_unary("/test.Slow/Hold")
            results = await asyncio.gather(*(hold(b"x", timeout=5) for _ in range(4)),
                                           return_exceptions=True)
            shed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            assert len(shed) == 2, results
            assert all(e.code() is grpc.StatusCode.RESOURCE_EXHAUSTED for e in shed)
    finally:
        await srv.drain()
    srv = await _slow_server(registry, max_inflight_request_bytes=1000)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            hold = ch.unary_unary("/test.Slow/Hold")
            first = asyncio.ensure_future(hold(b"a" * 800, timeout=5))
            await asyncio.sleep(0.2)  # admitted and holding 800 bytes
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await hold(b"b" * 800, timeout=5)
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert info.value.details() == "server busy"
            assert await first == b"held 800"
            assert await hold(b"c" * 800, timeout=5) == b"held 800"  # room again
    finally:
        await srv.drain()


async def test_health_checks_are_answered_while_every_call_slot_is_taken(
    registry: LocalRegistry,
) -> None:
    """A server whose call slots are all taken sheds new calls "server busy" but still
    answers ``grpc.health.v1.Health/Check`` (the probe that decides whether it is
    restarted or reaped) from a small reserve past the cap; the reserve is bounded too."""
    srv = await _slow_server(registry, max_concurrent_rpcs=2)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            hold = ch.unary_unary("/test.Slow/Hold")
            held = [asyncio.ensure_future(hold(b"x", timeout=5)) for _ in range(2)]
            await asyncio.sleep(0.2)  # both slots taken
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await hold(b"x", timeout=5)
            assert info.value.details() == "server busy"
            check = health_pb2_grpc.HealthStub(ch).Check
            answer = await check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            await asyncio.gather(*held)
    finally:
        await srv.drain()


async def _never_sends() -> Any:
    """A request iterator that sends nothing: the call's headers go out, its message never
    does (a slow uploader, as the request gate sees one)."""
    await asyncio.sleep(60)
    yield b""


async def test_health_check_is_not_starved_behind_slow_uploads(
    echo_servers: EchoFactory,
) -> None:
    """With the read stage overloaded by clients slow to send their requests (20 new calls
    a second, default ``ServerLimits``), the health ``Check`` is still answered at once:
    a reserved call reads its (tiny) request without waiting for one of the read permits,
    which go to the newest waiter first, and is never evicted (it used to wait behind every
    newer call until it was evicted "server busy", after 4.7 s: a Kubernetes or Consul gRPC
    probe, 1 s, failed)."""
    srv = await echo_servers("p1", admin=None)
    flood_ch = grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}")
    probe_ch = grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}")
    upload = flood_ch.stream_unary(method("Unary"))  # the server reads it as a unary call
    calls: list[grpc.aio.StreamUnaryCall] = []

    async def flood() -> None:
        while True:
            calls.append(upload(_never_sends(), timeout=15))
            await asyncio.sleep(0.05)

    flooding = asyncio.ensure_future(flood())
    try:
        async with asyncio.timeout(15):
            # the read permits held, calls waiting for one, holders evicted
            await until(lambda: srv.gate is not None and srv.gate.slots >= 8
                        and srv.gate.evicted > 0, timeout_s=8, what="a read backlog")
            assert srv.gate is not None
            probe = health_pb2_grpc.HealthStub(probe_ch).Check
            for _ in range(3):
                try:
                    answer = await probe(health_pb2.HealthCheckRequest(), timeout=3.0)
                except grpc.aio.AioRpcError as exc:
                    raise AssertionError(
                        f"health Check under a read backlog: {exc.code().name} "
                        f"{exc.details()!r} (gate: slots={srv.gate.slots}, "
                        f"evicted={srv.gate.evicted}, shed={srv.gate.shed})") from None
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
                await asyncio.sleep(0.3)
    finally:
        flooding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flooding
        for call in calls:
            call.cancel()
        await flood_ch.close()
        await probe_ch.close()


async def test_a_reserved_health_check_with_a_large_request_is_refused(
    registry: LocalRegistry,
) -> None:
    """A health ``Check`` reads its request without a read permit, so its request is
    bounded: one larger than a health check's (4 KiB) is refused ``RESOURCE_EXHAUSTED``
    (counted in ``shed``) rather than held while the handler runs; a normal one is
    answered."""
    srv = await _slow_server(registry)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            check = health_pb2_grpc.HealthStub(ch).Check
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await check(health_pb2.HealthCheckRequest(service="s" * 100_000), timeout=5)
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "4096" in (info.value.details() or "")
            answer = await check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert srv.gate is not None and srv.gate.shed == 1
        await until(lambda: srv.gate is not None and srv.gate.slots == 0
                    and srv.gate.inflight_bytes == 0, timeout_s=5)
    finally:
        await srv.drain()


async def test_read_requests_false_keeps_the_health_reserve_and_the_nack(
    registry: LocalRegistry, echo_servers: EchoFactory,
) -> None:
    """``ServerLimits(read_requests=False)`` gives up the request gate's defences against
    header-only streams and request bytes in flight, and nothing else: the health
    ``Check`` still has its reserve past ``max_concurrent_rpcs``, a shed call carries the
    ``meshkit-nack`` trailer (mesh clients retry it on the free endpoint: no call fails),
    and sheds are counted (``ServerStats.gate_shed``). It used to be grpc.aio's own cap:
    the probe failed "Concurrent RPC limit exceeded!", 20 of 40 calls failed with a free
    endpoint there, and sheds were counted nowhere."""
    limits = meshkit.ServerLimits(max_concurrent_rpcs=2, read_requests=False)
    busy = await echo_servers("busy", limits=limits, admin=None)
    await echo_servers("free", limits=meshkit.ServerLimits(max_concurrent_rpcs=256,
                                                          read_requests=False), admin=None)
    assert busy.gate is None
    raw = grpc.aio.insecure_channel(f"127.0.0.1:{busy.port}")
    hold = [asyncio.ensure_future(raw.unary_unary(method("Sleep"))(b"4000", timeout=8))
            for _ in range(2)]
    problems: list[str] = []
    try:
        async with asyncio.timeout(10):
            await asyncio.sleep(0.3)  # both of busy's slots are taken
            try:
                answer = await health_pb2_grpc.HealthStub(raw).Check(
                    health_pb2.HealthCheckRequest(), timeout=2)
                if answer.status != health_pb2.HealthCheckResponse.SERVING:
                    problems.append(f"health Check answered {answer.status}")
            except grpc.aio.AioRpcError as exc:
                problems.append(f"health Check: {exc.code().name} {exc.details()!r}")
            shed = raw.unary_unary(method("Unary"))(b"x", timeout=3)
            try:
                await shed
                problems.append("a third call was not shed")
            except grpc.aio.AioRpcError as exc:
                if exc.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED or \
                        ("meshkit-nack", "1") not in tuple(exc.trailing_metadata() or ()):
                    problems.append(f"shed without the nack: {exc.code().name} "
                                    f"{exc.details()!r} {exc.trailing_metadata()!r}")
            async with meshkit.dial("echo", registry=registry,
                                    options=meshkit.DialOptions(insecure=True)) as ch:
                unary = ch.unary_unary(method("Unary"))

                async def one() -> str:
                    try:
                        return (await unary(b"x", timeout=3)).split(b"|")[0].decode()
                    except grpc.aio.AioRpcError as exc:
                        return f"{exc.code().name}: {exc.details()}"

                got = await asyncio.gather(*(one() for _ in range(40)))
            failed = [g for g in got if g not in ("busy", "free")]
            if failed:
                problems.append(f"{len(failed)} of 40 calls failed with a free endpoint "
                                f"there, e.g. {failed[0]!r}")
            if busy.stats().gate_shed < 1:
                problems.append(f"sheds not counted: {busy.stats().gate_shed}")
    finally:
        for h in hold:
            h.cancel()
        await raw.close()
    assert not problems, problems


def test_bad_server_limits_quote_the_value() -> None:
    """ServerLimits refuses bad values at construction, quoting them."""
    from meshkit.server import ServerLimits

    for bad, text in (({"max_concurrent_rpcs": 0}, "0"),
                      ({"max_concurrent_streams": -1}, "-1"),
                      ({"max_concurrent_reads": 0}, "0"),
                      ({"first_message_timeout_s": 0.0}, "0.0"),
                      ({"max_inflight_request_bytes": 0}, "0"),
                      ({"keepalive_time_s": -5.0}, "-5.0")):
        with pytest.raises(meshkit.ConfigError, match=text):
            ServerLimits(**bad)  # type: ignore[arg-type]


_MAX_MS_ARG_S = (2**31 - 1) // 1000  # grpc's channel args are C ints: ms up to 2**31 - 1


@pytest.mark.parametrize("field", ["keepalive_time_s", "keepalive_timeout_s",
                                   "max_connection_idle_s"])
async def test_server_limits_past_grpcs_millisecond_args_are_refused(
    echo_servers: EchoFactory, field: str,
) -> None:
    """These limits reach grpc as C int milliseconds (at most about 24.8 days): a 30-day
    one passed the check and made ``MeshServer.start()`` fail with a raw OverflowError
    from ``grpc.aio.server()``. It is a ConfigError quoting it; the longest accepted value
    gives a server that starts and serves."""
    from meshkit.server import ServerLimits

    month = 30 * 86_400.0
    with pytest.raises(meshkit.ConfigError, match=field) as err:
        ServerLimits(**{field: month})
    assert repr(month) in str(err.value)
    srv = await echo_servers("longest", limits=ServerLimits(**{field: _MAX_MS_ARG_S}))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        assert await ch.unary_unary(method("Unary"))(b"x", timeout=5) == b"longest|x"


async def test_default_limits_serve_32_concurrent_callers_on_one_connection(
    echo_servers: EchoFactory,
) -> None:
    """With the default ServerLimits, 32 callers sharing one connection all succeed: no
    REFUSED_STREAM (a per-connection stream cap made a third of them fail UNAVAILABLE) and
    no shedding (32 call slots)."""
    srv = await echo_servers("c32")
    failures: list[str] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        unary = ch.unary_unary(method("Unary"))

        async def caller() -> None:
            for _ in range(40):
                try:
                    await unary(b"x", timeout=10)
                except grpc.aio.AioRpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")

        await asyncio.gather(*(caller() for _ in range(32)))
    assert failures == []


async def test_a_grpc_client_waits_at_the_stream_cap_instead_of_failing(
    echo_servers: EchoFactory,
) -> None:
    """grpc C-core clients hold calls back at the server's SETTINGS_MAX_CONCURRENT_STREAMS;
    the server must not refuse the next stream (REFUSED_STREAM, UNAVAILABLE) because the
    calls that just ended are not yet freed by grpc.aio (grpc's overload protection counts
    them without the ``grpc.http2.max_deallocating_streams`` headroom; measured: 20 to 31
    of 60 calls refused at a cap of 4)."""
    from meshkit.server import ServerLimits

    srv = await echo_servers("cap4", limits=ServerLimits(max_concurrent_streams=4))
    failures: list[str] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        sleep = ch.unary_unary(method("Sleep"))
        await sleep(b"0", timeout=10)

        async def one() -> None:
            try:
                await sleep(b"5", timeout=10)
            except grpc.aio.AioRpcError as exc:
                failures.append(f"{exc.code().name}: {exc.details()}")

        for _ in range(3):
            await asyncio.gather(*(one() for _ in range(20)))
    assert failures == []


async def test_request_streams_over_the_cap_are_shed_with_the_nack_trailer(
    registry: LocalRegistry,
) -> None:
    """Request-streaming calls, which the request gate does not read, are capped together
    with the gate's calls: once the calls holding a slot and the open request streams reach
    max_concurrent_rpcs + 8, a new stream is shed RESOURCE_EXHAUSTED "server busy" with the
    nack trailer (never ran: safe to retry elsewhere); a unary call still gets a free slot,
    and a stream that ends gives its place back."""
    srv = await _slow_server(registry, max_concurrent_rpcs=1)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            echo = ch.stream_stream("/test.Slow/Echo")
            open_ = [echo() for _ in range(9)]
            for i, s in enumerate(open_):
                await s.write(b"%d" % i)
                assert await asyncio.wait_for(s.read(), 5) == b"%d" % i
            for shed in (echo(), ch.stream_unary("/test.Slow/Count")()):
                assert await asyncio.wait_for(shed.code(), 5) == \
                    grpc.StatusCode.RESOURCE_EXHAUSTED
                assert await shed.details() == "server busy"
                assert ("meshkit-nack", "1") in tuple(await shed.trailing_metadata())
            assert await ch.unary_unary("/test.Slow/Hold")(b"x", timeout=5) == b"held 1"
            await open_[0].done_writing()
            assert await asyncio.wait_for(open_[0].code(), 5) == grpc.StatusCode.OK
            again = ch.stream_unary("/test.Slow/Count")
            assert await again(iter([b"a", b"b"]), timeout=5) == b"2"
            for s in open_[1:]:
                await s.done_writing()
            assert [await asyncio.wait_for(s.code(), 5) for s in open_[1:]] == \
                [grpc.StatusCode.OK] * 8
        assert srv.gate is not None
        await until(lambda: srv.gate is not None and srv.gate.streams == 0, timeout_s=5)
        assert srv.gate.shed == 2
    finally:
        await srv.drain()


async def test_read_requests_false_leaves_requests_to_grpc(registry: LocalRegistry) -> None:
    """ServerLimits(read_requests=False) installs no RequestGate: calls are served by
    grpc.aio's unary path, and max_concurrent_rpcs is meshkit's count in the handler
    wrap (CallSlots), never grpc.aio's own cap."""
    srv = await _slow_server(registry, read_requests=False, max_concurrent_rpcs=1)
    try:
        assert srv.gate is None and srv.call_slots is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            hold = ch.unary_unary("/test.Slow/Hold")
            got = await asyncio.gather(hold(b"x", timeout=5), hold(b"y", timeout=5),
                                       return_exceptions=True)
        codes = sorted(g.code().name if isinstance(g, grpc.aio.AioRpcError) else "OK"
                       for g in got)
        assert codes == ["OK", "RESOURCE_EXHAUSTED"]
    finally:
        await srv.drain()


def _spy_on_accept_loop(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of request futures grpc.aio's accept loop waits on, once per wait (it
    waits with ``asyncio.wait`` before every incoming call: one future per registered
    method and one for every other method)."""
    sizes: list[int] = []
    real = asyncio.wait

    async def spy(fs: Any, *args: Any, **kwargs: Any) -> Any:
        fs = list(fs)
        names = {getattr(getattr(f, "get_coro", lambda: None)(), "__qualname__", "")
                 for f in fs}
        if names and all(n.startswith("AioServer._request") for n in names):
            sizes.append(len(fs))
        return await real(fs, *args, **kwargs)

    monkeypatch.setattr(asyncio, "wait", spy)
    return sizes


@pytest.mark.parametrize("registered", [False, True])
async def test_the_accept_loop_waits_on_one_request_whatever_the_server_registers(
    registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch, registered: bool,
) -> None:
    """grpc.aio's accept loop waits on one request future per registered method (plus one),
    on every incoming call; a MeshServer serves registered methods (its own health and
    reflection services, generated ``add_*_to_server`` functions) from one method table
    instead, so the loop waits on one, and every method still answers."""
    sizes = _spy_on_accept_loop(monkeypatch)
    srv = meshkit.MeshServer("echo", [add_echo("r1", registered=registered)],
                             registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            assert await ch.unary_unary(method("Unary"))(b"x", timeout=5) == b"r1|x"
            got = [m async for m in ch.unary_stream(method("ServerStream"))(b"2", timeout=5)]
            assert got == [b"r1|0", b"r1|1"]
            await _assert_health_and_reflection(ch)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ch.unary_unary(f"/{SERVICE}/Nope")(b"x", timeout=5)
            assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
    finally:
        await srv.drain()
    assert srv.service_names == [SERVICE]
    assert len(sizes) >= 6 and set(sizes) == {1}


async def _one_unary_call(registry: LocalRegistry, servicers: list[Any]) -> bytes:
    """Start a plaintext MeshServer of ``servicers``, call echo's ``Unary`` with ``b"x"``
    once, drain it; the answer."""
    srv = meshkit.MeshServer("echo", servicers, registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            answer: bytes = await ch.unary_unary(method("Unary"))(b"x", timeout=5)
            return answer
    finally:
        await srv.drain()


@pytest.mark.parametrize("registered_first", [False, True])
async def test_a_registered_method_takes_precedence_over_a_generic_handler(
    registry: LocalRegistry, registered_first: bool,
) -> None:
    """As in grpc.aio: when a method has both a registered and a generic handler, the
    registered one answers, whichever was added first."""
    servicers = [add_echo("generic"), add_echo("registered", registered=True)]
    if registered_first:
        servicers.reverse()
    assert await _one_unary_call(registry, servicers) == b"registered|x"


async def test_methods_stay_registered_under_a_grpc_observability_plugin(
    registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A grpc observability plugin (grpcio-observability, grpcio-csm-observability) labels
    a server's metrics with the method name only for registered methods ("other" for the
    rest): with one active, a MeshServer registers its methods with grpc as given."""
    grpc_plugin.activate(monkeypatch)
    sizes = _spy_on_accept_loop(monkeypatch)
    assert await _one_unary_call(registry, [add_echo("p1", registered=True)]) == b"p1|x"
    # the echo service's 7 methods, health's 3 and reflection's 2 (v1alpha and v1), plus
    # the others' one
    assert sizes and set(sizes) == {13}



# --- failed starts, a cancelled or failing serve(), default instance ids ---------------------


class _RefusingRegistry(LocalRegistry):
    """A local registry that refuses every registration."""

    async def register(self, instance: Any) -> None:
        raise RegistryError("registry refused (test)")


async def test_a_server_whose_registration_failed_is_not_ready_and_releases_the_admin(
    registry: LocalRegistry,
) -> None:
    """A refused registration undoes the start: the server is neither ready nor live, its
    admin server is released (/readyz no longer counts it) and drain() returns at once."""
    refusing = _RefusingRegistry(registry.options)
    srv = meshkit.MeshServer("echo", [add_echo("r1")], registry=refusing,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          admin=AdminOptions()))
    users = _SharedAdmin.users()
    try:
        with pytest.raises(RegistryError):
            await srv.start()
        assert (srv.ready, srv.live, srv.admin, srv.instance) == (False, False, None, None)
        assert _SharedAdmin.users() == users
        assert all(s.address != f"127.0.0.1:{srv.port}" for s in live_server_stats())
        with pytest.raises(grpc.aio.AioRpcError):  # the grpc server is stopped
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
                await ch.unary_unary(method("Unary"))(b"x", timeout=1)
        await asyncio.wait_for(srv.drain(), 3)
    finally:
        await refusing.close()


async def test_a_registry_the_server_owns_is_closed_when_its_registration_fails(
    registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The registry a server made itself (registry_from_env) is closed by a failed start."""
    refusing = _RefusingRegistry(registry.options)
    closed: list[bool] = []
    real_close = refusing.close

    async def close() -> None:
        closed.append(True)
        await real_close()

    monkeypatch.setattr(refusing, "close", close)
    monkeypatch.setattr(meshkit.server, "registry_from_env", lambda: refusing)
    srv = meshkit.MeshServer("echo", [add_echo("r2")], options=meshkit.ServeOptions(
        insecure=True, drain_delay_s=0, admin=None))
    with pytest.raises(RegistryError):
        await srv.start()
    assert closed == [True]


class _Closable(grpc.aio.ServerInterceptor):
    """A user's interceptor holding a resource: ``aclose()`` counted."""

    def __init__(self) -> None:
        self.closed = 0

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return await continuation(details)

    async def aclose(self) -> None:
        self.closed += 1


@pytest.mark.parametrize("ending", ["drain", "failed start"])
async def test_interceptors_are_closed_once_after_the_server_stops(
    registry: LocalRegistry, ending: str,
) -> None:
    """ServeOptions.interceptors: "those with an async aclose() method are closed after
    the server stops". A drain did; a start undone (its registration refused, after the
    server had bound and served) stopped the grpc server but closed none (a user's
    connections, the rate limiter's storage, the refusal counts of meshkit's auth
    interceptors were left). Now both close each once (and a drain after the failed
    start closes nothing again)."""
    mine = _Closable()
    reg = registry if ending == "drain" else _RefusingRegistry(registry.options)
    srv = meshkit.MeshServer("echo", [add_echo("x1")], registry=reg,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          admin=None, interceptors=(mine,)))
    try:
        if ending == "drain":
            await srv.start()
            assert mine.closed == 0
        else:
            with pytest.raises(RegistryError):
                await srv.start()
        await asyncio.wait_for(srv.drain(), 10)
        assert mine.closed == 1
        await asyncio.wait_for(srv.drain(), 10)
        assert mine.closed == 1
    finally:
        if reg is not registry:
            await reg.close()


async def test_drain_of_a_server_that_failed_to_bind_returns(registry: LocalRegistry) -> None:
    """drain() on a server whose start() could not bind its port returns at once."""
    first = meshkit.MeshServer("echo", [add_echo("b1")], registry=registry,
                               options=meshkit.ServeOptions(insecure=True, drain_delay_s=0))
    await first.start()
    try:
        second = meshkit.MeshServer("echo", [add_echo("b2")], registry=registry,
                                    options=meshkit.ServeOptions(
                                        insecure=True, drain_delay_s=0, port=first.port,
                                        server_options=(("grpc.so_reuseport", 0),)))
        with pytest.raises(RuntimeError):
            await second.start()
        await asyncio.wait_for(second.drain(), 3)
    finally:
        await asyncio.wait_for(first.drain(), 10)


async def _registered_or_answering(registry: LocalRegistry, srv: meshkit.MeshServer
                                   ) -> tuple[bool, bool]:
    """Whether ``srv`` is still in the registry, and whether it still answers a call."""
    registered = bool(await registry.instances("echo"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            await ch.unary_unary(method("Unary"))(b"x", timeout=1)
    except grpc.aio.AioRpcError:
        return registered, False
    return registered, True


async def test_serve_drains_before_raising_what_on_started_raised(
    registry: LocalRegistry,
) -> None:
    """An on_started hook that raises: serve() deregisters and stops, then re-raises."""
    started: list[meshkit.MeshServer] = []

    def on_started(srv: meshkit.MeshServer) -> None:
        started.append(srv)
        raise RuntimeError("post-start hook failed")

    with pytest.raises(RuntimeError, match="post-start hook failed"):
        await asyncio.wait_for(meshkit.serve(
            "echo", [add_echo("s1")], registry=registry, on_started=on_started,
            options=meshkit.ServeOptions(insecure=True, drain_delay_s=0, grace_s=0.5,
                                         admin=None)), 10)
    (srv,) = started
    assert await _registered_or_answering(registry, srv) == (False, False)
    await asyncio.wait_for(srv.drain(), 3)


async def test_a_cancelled_serve_deregisters_and_stops(registry: LocalRegistry) -> None:
    """serve() cancelled (e.g. its TaskGroup's sibling failed) drains on its way out."""
    started: list[meshkit.MeshServer] = []
    ready = asyncio.Event()

    def on_started(srv: meshkit.MeshServer) -> None:
        started.append(srv)
        ready.set()

    task = asyncio.ensure_future(meshkit.serve(
        "echo", [add_echo("s2")], registry=registry, on_started=on_started,
        options=meshkit.ServeOptions(insecure=True, drain_delay_s=0, grace_s=0.5,
                                     admin=None)))
    await asyncio.wait_for(ready.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    (srv,) = started
    assert await _registered_or_answering(registry, srv) == (False, False)
    await asyncio.wait_for(srv.wait_stopped(), 3)


async def test_a_cancelled_drain_runs_to_its_end_and_a_later_drain_waits_for_it(
    registry: LocalRegistry,
) -> None:
    """drain() cancelled in its drain delay (e.g. by wait_for): the drain goes on to its
    end, so the server does not stay deregistered but serving, and a later drain()
    returns once it has stopped."""
    srv = meshkit.MeshServer("echo", [add_echo("c2")], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=1.0,
                                                          grace_s=0.5, admin=None))
    await srv.start()
    try:
        first = asyncio.ensure_future(srv.drain())
        await asyncio.sleep(0.3)  # inside the drain delay
        assert srv.draining and not first.done()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(srv.drain(), 5)
        assert not srv.live
        assert await _registered_or_answering(registry, srv) == (False, False)
    finally:
        if srv.live and srv._server is not None:
            await srv._server.stop(0)


@pytest.mark.parametrize("failing", ["flush_logs", "admin", "registry"])
async def test_a_failing_end_of_drain_step_is_logged_and_the_server_still_ends_stopped(
    registry_dir: Path, monkeypatch: pytest.MonkeyPatch, failing: str,
) -> None:
    """The drain's last steps ran in a ``finally`` one after the other: one that raised
    (the certificate gauges' withdrawal under ``-W error`` in prometheus-client's
    multiprocess mode, a flush of the access log, releasing the admin server, closing an
    owned registry) skipped those after it: the server was never marked stopped (a
    ``wait_stopped()`` or a second ``drain()`` waited for ever), the access log's last
    batch was not written and its final counters were not recorded. Each step is now
    attempted whatever the one before did, a failure logged: drain() returns, the
    server is stopped and its final counters are recorded."""
    from meshkit.observability._live import final_stats

    def fails(*_a: Any) -> Any:
        raise RuntimeError(f"{failing} failed")

    if failing == "flush_logs":
        monkeypatch.setattr(meshkit.server, "flush_logs", fails)
    elif failing == "admin":
        monkeypatch.setattr(_SharedAdmin, "release", fails)
    srv = meshkit.MeshServer("echo", [add_echo("f1")], registry=f"local://{registry_dir}",
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          grace_s=0.5))
    await srv.start()
    if failing == "registry":
        monkeypatch.setattr(srv.registry, "close", fails)
    await asyncio.wait_for(srv.drain(), 10)
    assert srv._stopped.is_set() and not srv.live
    await asyncio.wait_for(srv.wait_stopped(), 1)
    assert final_stats(weakref.ref(srv)) is not None
    if failing == "admin":  # the admin server the failed release left running
        monkeypatch.undo()
        await _SharedAdmin.release(srv._admin_registry)


async def test_two_servers_of_one_service_in_a_process_get_distinct_instance_ids(
    registry: LocalRegistry,
) -> None:
    """The first server keeps <service>-<hostname>-<pid>; a second one of the same service
    adds its port; both stay registered, and the id is free again once drained."""
    opts = meshkit.ServeOptions(insecure=True, drain_delay_s=0, grace_s=0.5, admin=None)
    plain = f"echo-{socket.gethostname()}-{os.getpid()}"
    a = meshkit.MeshServer("echo", [add_echo("a")], registry=registry, options=opts)
    b = meshkit.MeshServer("echo", [add_echo("b")], registry=registry, options=opts)
    await asyncio.gather(a.start(), b.start())
    try:
        assert a.instance is not None and b.instance is not None
        ids = {a.instance.instance_id, b.instance.instance_id}
        assert ids == {plain, f"{plain}-{(a if a.instance.instance_id != plain else b).port}"}
        ports = sorted(i.port for i in await registry.instances("echo"))
        assert ports == sorted((a.port, b.port))
    finally:
        await asyncio.wait_for(asyncio.gather(a.drain(), b.drain()), 10)
    c = meshkit.MeshServer("echo", [add_echo("c")], registry=registry, options=opts)
    await c.start()
    try:
        assert c.instance is not None and c.instance.instance_id == plain
    finally:
        await asyncio.wait_for(c.drain(), 10)


async def test_the_default_instance_id_fits_128_characters_whatever_the_hostname(
    registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default id ``<service>-<hostname>-<pid>`` exceeded the registry's 128
    characters for a 63-character service (a DNS label, the longest the registry takes)
    on a host with a 63-character name (Kubernetes pod names run long; some hosts give
    their FQDN): start() failed with a ConfigError after binding. Now a default id that
    would be too long keeps the service and pid, shortens the hostname and adds a hash
    of the whole of it (deterministic, distinct per host), and so does a second server's
    id with its port added."""
    service = "s" * 63
    host_a, host_b = "h" * 60 + "-aa", "h" * 60 + "-bb"
    monkeypatch.setattr(socket, "gethostname", lambda: host_a)
    opts = meshkit.ServeOptions(insecure=True, drain_delay_s=0, grace_s=0.5, admin=None)
    a = meshkit.MeshServer(service, [add_echo("a")], registry=registry, options=opts)
    b = meshkit.MeshServer(service, [add_echo("b")], registry=registry, options=opts)
    async with asyncio.timeout(20):
        await asyncio.gather(a.start(), b.start())
        try:
            assert a.instance is not None and b.instance is not None
            ids = [a.instance.instance_id, b.instance.instance_id]
            assert len(set(ids)) == 2, ids
            for ident in ids:
                assert len(ident) <= 128, ident
                assert ident.startswith(f"{service}-hhh"), ident
                assert f"-{os.getpid()}" in ident, ident
            listed = {i.instance_id for i in await registry.instances(service)}
            assert listed == set(ids)
        finally:
            await asyncio.gather(a.drain(), b.drain())
        c = meshkit.MeshServer(service, [add_echo("c")], registry=registry, options=opts)
        await c.start()
        try:
            assert c.instance is not None and c.instance.instance_id in ids  # deterministic
            first = c.instance.instance_id
        finally:
            await c.drain()
        monkeypatch.setattr(socket, "gethostname", lambda: host_b)
        d = meshkit.MeshServer(service, [add_echo("d")], registry=registry, options=opts)
        await d.start()
        try:
            assert d.instance is not None and d.instance.instance_id != first
            assert len(d.instance.instance_id) <= 128
        finally:
            await d.drain()


async def test_health_watch_streams_hold_no_call_slot(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A gRPC client with client-side health checking keeps a ``Health/Watch`` open for
    its channel's life: such streams must not take the request gate's call slots, or as
    many clients as slots would get every other call shed ``RESOURCE_EXHAUSTED``."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    srv = await echo_servers("e1", limits=meshkit.ServerLimits(max_concurrent_rpcs=2))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as plain:
        stub = health_pb2_grpc.HealthStub(plain)
        watches = [stub.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(3)]
        try:
            for w in watches:
                first = await asyncio.wait_for(w.read(), 3)
                assert first.status == health_pb2.HealthCheckResponse.SERVING
            unary = plain.unary_unary(method("Unary"))
            assert await asyncio.wait_for(unary(b"x", timeout=3), 5) == b"e1|x"
        finally:
            for w in watches:
                w.cancel()


_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _drainable(instance_id: str, **kw: Any) -> meshkit.ServeOptions:
    kw.setdefault("grace_s", 1.0)
    return meshkit.ServeOptions(insecure=True, instance_id=instance_id, drain_delay_s=0.0,
                                admin=None, **kw)


async def _check(stub: health_pb2_grpc.HealthStub, service: str) -> Any:
    """The status ``Check`` answers for ``service``, or the call's error code."""
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return reply.status


async def test_a_users_own_health_servicer_is_the_one_served_and_driven(
        registry: LocalRegistry) -> None:
    """A service that brings its own ``grpcio-health-checking`` servicer (reporting, say, a
    dependency NOT_SERVING) passes it to ``serve()`` like any servicer. meshkit added its
    own health servicer after it, under the same method paths, so the user's was silently
    dropped: a Check of the service the user marked NOT_SERVING answered NOT_FOUND, and
    reflection listed ``grpc.health.v1.Health`` twice. Now the user's servicer answers,
    listed once, and meshkit drives it: SERVING once started for the whole server and
    the mesh service (the statuses the user set before start() are left as set), and
    NOT_SERVING for everything at the drain."""
    mine = health.aio.HealthServicer()
    await mine.set("custom.Dependency", _NOT_SERVING)
    await mine.set(SERVICE, _NOT_SERVING)  # warming up: the user's to turn SERVING
    srv = meshkit.MeshServer(
        "healthd", [add_echo("h1"), (health_pb2_grpc.add_HealthServicer_to_server, mine)],
        registry=registry, options=_drainable("h1"))
    await srv.start()
    try:
        async with asyncio.timeout(10), \
                grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            assert await _check(stub, "custom.Dependency") == _NOT_SERVING, (
                "the user's health servicer is not the one answering")
            assert srv.health is mine
            assert srv.service_names == [SERVICE]
            assert await _check(stub, SERVICE) == _NOT_SERVING  # as the user set it
            assert await _check(stub, "") == _SERVING
            assert await _check(stub, "healthd") == _SERVING
            await mine.set(SERVICE, _SERVING)
            assert await _check(stub, SERVICE) == _SERVING

            request = reflection_pb2.ServerReflectionRequest(list_services="")
            names = [s.name async for answer in reflection_pb2_grpc.ServerReflectionStub(ch)
                     .ServerReflectionInfo(iter([request]), timeout=3)
                     for s in answer.list_services_response.service]
            assert sorted(names) == sorted(set(names)), f"listed twice: {names}"
            assert "grpc.health.v1.Health" in names
    finally:
        await asyncio.wait_for(srv.drain(), 10)
    for name in ("", "healthd", SERVICE, "custom.Dependency"):
        reply = await mine.Check(health_pb2.HealthCheckRequest(service=name), None)
        assert reply.status == _NOT_SERVING, name


async def test_a_users_own_reflection_servicer_is_the_one_served(
        registry: LocalRegistry) -> None:
    """A service that brings its own ``grpcio-reflection`` servicer (listing, say, a
    service it serves through a generic handler, or over a descriptor pool of its own)
    passes it to ``serve()`` like any servicer. meshkit added its own reflection servicer
    after it, under the same method paths, so the user's was silently replaced: a client
    listing the services never saw the one the user listed, and the user's reflection
    name was taken for a service of theirs (set SERVING in health). Now the user's
    servicer answers, on both versions' clients' first choice as the user registered it,
    and meshkit adds none of its own."""
    from grpc_reflection.v1alpha import reflection

    mine = reflection.aio.ReflectionServicer(
        ["custom.Generic", reflection.SERVICE_NAME, "grpc.health.v1.Health"])
    srv = meshkit.MeshServer(
        "reflectd",
        [add_echo("r1"), (reflection_pb2_grpc.add_ServerReflectionServicer_to_server, mine)],
        registry=registry, options=_drainable("r1"))
    await srv.start()
    try:
        async with asyncio.timeout(10), \
                grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            names = [s.name async for answer in reflection_pb2_grpc.ServerReflectionStub(ch)
                     .ServerReflectionInfo(iter([request]), timeout=3)
                     for s in answer.list_services_response.service]
            assert "custom.Generic" in names, f"the user's reflection is not served: {names}"
            assert srv.service_names == [SERVICE]
            v1 = ch.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
            with pytest.raises(grpc.aio.AioRpcError) as info:  # theirs has no v1: none
                async for _ in v1(iter([request.SerializeToString()]), timeout=3):
                    pass
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await asyncio.wait_for(srv.drain(), 10)


@pytest.mark.parametrize("servicers", ["sync", "two"])
async def test_a_health_servicer_meshkit_cannot_drive_is_refused(
        registry: LocalRegistry, servicers: str) -> None:
    """A health servicer meshkit cannot set SERVING and NOT_SERVING on (the synchronous
    ``health.HealthServicer``, whose ``Watch`` does not run on grpc.aio either), or two
    of them, are refused with a ``ConfigError`` before anything is bound or registered,
    instead of one being dropped in silence."""
    given: list[tuple[Any, Any]] = [add_echo("h1")]
    if servicers == "sync":
        given.append((health_pb2_grpc.add_HealthServicer_to_server, health.HealthServicer()))
    else:
        given += [(health_pb2_grpc.add_HealthServicer_to_server, health.aio.HealthServicer())
                  for _ in range(2)]
    srv = meshkit.MeshServer("healthd", given, registry=registry, options=_drainable("h1"))
    with pytest.raises(meshkit.ConfigError,
                       match=r"health\.HealthServicer.*cannot be driven|two grpc\.health"):
        await srv.start()
    assert srv.port == 0 and not srv.live
    assert await registry.instances("healthd") == frozenset()


@pytest.mark.parametrize("health_servicer", ["meshkit's", "the user's"])
async def test_an_open_health_watch_does_not_hold_the_drain_for_grace_s(
        registry: LocalRegistry, health_servicer: str) -> None:
    """gRPC clients with client-side health checking keep a ``Health/Watch`` stream open
    per channel (the request gate exempts it for that reason). On drain meshkit set
    NOT_SERVING, which the watcher received, and then ``server.stop(grace_s)`` waited for
    that stream, which never ends by itself: every drain took the full ``grace_s``, and
    the watcher was then cut ``UNAVAILABLE``, although no call was in flight. Now the
    drain ends the watches once NOT_SERVING is sent (OK status); a watch of a service
    with no status is told NOT_SERVING too; a call in flight still gets its grace."""
    grace_s = 8.0
    servicers: list[tuple[Any, Any]] = [add_echo("w1")]
    if health_servicer == "the user's":
        servicers.append((health_pb2_grpc.add_HealthServicer_to_server,
                          health.aio.HealthServicer()))
    srv = meshkit.MeshServer("watchd", servicers, registry=registry,
                             options=_drainable("w1", grace_s=grace_s))
    await srv.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        watches = {name: stub.Watch(health_pb2.HealthCheckRequest(service=name))
                   for name in ("", "no.such.Service")}
        seen: dict[str, list[Any]] = {name: [] for name in watches}

        async def read(name: str) -> grpc.StatusCode:
            try:
                async for resp in watches[name]:
                    seen[name].append(resp.status)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return await watches[name].code()

        readers = {name: asyncio.ensure_future(read(name)) for name in watches}
        try:
            await until(lambda: all(seen.values()), timeout_s=5)
            assert seen == {"": [_SERVING],
                            "no.such.Service": [health_pb2.HealthCheckResponse.SERVICE_UNKNOWN]}
            in_flight = asyncio.ensure_future(ch.unary_unary(method("Sleep"))(b"1000",
                                                                                timeout=6))
            await asyncio.sleep(0.2)  # the call is in flight
            started = time.monotonic()
            async with asyncio.timeout(grace_s + 5):
                await srv.drain()
            took = time.monotonic() - started
            assert await in_flight == b"w1"  # the call in flight had its grace
            async with asyncio.timeout(5):
                codes = {name: await reader for name, reader in readers.items()}
        finally:
            for watch in watches.values():
                watch.cancel()
            await asyncio.gather(*readers.values(), return_exceptions=True)
    assert took < grace_s / 2, (
        f"drain took {took:.1f}s of grace_s={grace_s}: the health Watch held it")
    for name in watches:  # told, then ended cleanly
        assert seen[name][-1] == _NOT_SERVING, (name, seen[name])
    assert codes == {name: grpc.StatusCode.OK for name in watches}, codes


class _SlowRegistry(LocalRegistry):
    """A local registry whose register() takes ``delay_s`` (a remote registry's round
    trip) and then registers, or refuses when ``refuse``."""

    def __init__(self, options: LocalOptions, delay_s: float, refuse: bool = False) -> None:
        super().__init__(options)
        self.delay_s, self.refuse = delay_s, refuse
        self.registering = asyncio.Event()

    async def register(self, instance: Any) -> None:
        self.registering.set()
        await asyncio.sleep(self.delay_s)
        if self.refuse:
            raise RegistryError("registry refused (test)")
        await super().register(instance)


async def test_drain_during_start_leaves_nothing_registered(registry_dir: Path) -> None:
    """drain() while start() registers: start() is undone and raises, and once both have
    returned nothing of the server is registered, serving, or holding the admin."""
    reg = _SlowRegistry(LocalOptions(path=registry_dir, ttl_s=30.0), delay_s=0.3)
    users = _SharedAdmin.users()
    srv = meshkit.MeshServer("echo", [add_echo("d1")], registry=reg,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          grace_s=0.2))
    try:
        start = asyncio.ensure_future(srv.start())
        await asyncio.wait_for(reg.registering.wait(), 5)
        await asyncio.wait_for(srv.drain(), 5)
        assert start.done()
        with pytest.raises(RuntimeError, match="drain"):
            await start
        assert await _registered_or_answering(reg, srv) == (False, False)
        assert _SharedAdmin.users() == users
        await asyncio.wait_for(srv.wait_stopped(), 3)
    finally:
        if srv.instance is not None:
            await reg.deregister(srv.instance)
        if _SharedAdmin.users() != users:
            await _SharedAdmin.release()
        await reg.close()


async def test_drain_during_a_start_whose_registration_fails(registry_dir: Path) -> None:
    """drain() while a start() that will fail registers: start() raises its RegistryError,
    drain() returns, and so do a second drain() and wait_stopped()."""
    reg = _SlowRegistry(LocalOptions(path=registry_dir, ttl_s=5.0), delay_s=0.2, refuse=True)
    srv = meshkit.MeshServer("echo", [add_echo("d2")], registry=reg,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.5,
                                                          grace_s=0.2, admin=None))
    try:
        start = asyncio.ensure_future(srv.start())
        await asyncio.wait_for(reg.registering.wait(), 5)
        drain = asyncio.ensure_future(srv.drain())
        started, drained = await asyncio.wait_for(
            asyncio.gather(start, drain, return_exceptions=True), 10)
        assert isinstance(started, RegistryError), repr(started)
        assert drained is None, repr(drained)
        await asyncio.wait_for(srv.drain(), 3)
        await asyncio.wait_for(srv.wait_stopped(), 3)
    finally:
        await reg.close()


class _SlowWriteRegistry(LocalRegistry):
    """A local registry whose registration write takes 0.3 s in its worker thread (a
    remote registry's request already sent when the caller gives up)."""

    def __init__(self, options: LocalOptions) -> None:
        super().__init__(options)
        self.writing = threading.Event()

    def _write(self, conn: Any, *instances: Any, **kw: Any) -> None:
        if instances:
            self.writing.set()
            time.sleep(0.3)
        super()._write(conn, *instances, **kw)


async def test_a_start_cancelled_while_registering_withdraws_the_registration(
    registry_dir: Path,
) -> None:
    """start() cancelled while its registration is written: the write that lands anyway
    is withdrawn before start() raises, so no caller is sent to the stopped server."""
    reg = _SlowWriteRegistry(LocalOptions(path=registry_dir, ttl_s=30.0))
    srv = meshkit.MeshServer("echo", [add_echo("c1")], registry=reg,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          grace_s=0.2, admin=None))
    try:
        start = asyncio.ensure_future(srv.start())
        assert await asyncio.to_thread(reg.writing.wait, 5)
        start.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(start, 5)
        assert await _registered_or_answering(reg, srv) == (False, False)
        await asyncio.wait_for(srv.wait_stopped(), 3)
    finally:
        await reg.close()


async def test_wait_stopped_returns_after_a_failed_start(registry: LocalRegistry) -> None:
    """A failed start() is undone: drain() and wait_stopped() both return."""
    refusing = _RefusingRegistry(registry.options)
    srv = meshkit.MeshServer("echo", [add_echo("w1")], registry=refusing,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          admin=None))
    try:
        with pytest.raises(RegistryError):
            await srv.start()
        await asyncio.wait_for(srv.drain(), 3)
        await asyncio.wait_for(srv.wait_stopped(), 3)
    finally:
        await refusing.close()


async def test_a_second_start_is_refused_and_changes_nothing(registry: LocalRegistry) -> None:
    """``start()`` had no "already started" check: a second call (a retry loop around
    start-up, two code paths both starting the server) bound a second grpc server,
    registered a second instance (``<id>-<port>``) and replaced ``instance`` and ``port``;
    ``drain()`` then withdrew only the second, and the registry kept renewing the first
    (still listed seconds after the drain, its port closed: callers were sent to it).
    Now a second ``start()``, at once or after the first returned, raises
    ``RuntimeError`` and leaves the server as it was, and so does a ``start()`` after
    ``drain()``; once drained nothing of the server is listed."""
    srv = meshkit.MeshServer("echo", [add_echo("t1")], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          grace_s=1.0, admin=None))
    try:
        first = asyncio.ensure_future(srv.start())
        await asyncio.sleep(0)  # the first start has bound its port and runs on
        with pytest.raises(RuntimeError, match="already started"):
            await srv.start()
        instance = await asyncio.wait_for(first, 10)
        port = srv.port
        with pytest.raises(RuntimeError, match="already started"):
            await srv.start()
        assert (srv.instance, srv.port) == (instance, port)
        assert await registry.instances("echo") == {instance}
    finally:
        await asyncio.wait_for(srv.drain(), 10)
    assert await registry.instances("echo") == frozenset()
    with pytest.raises(RuntimeError, match=r"after drain\(\)"):
        await srv.start()
    assert await registry.instances("echo") == frozenset()


async def test_a_registry_uri_is_registered_in_and_owned_by_the_server(
    registry: LocalRegistry, registry_dir: Path,
) -> None:
    """``MeshServer(..., registry="local:///...")`` kept the string as its registry and
    failed only in ``start()``, after binding (``'str' object has no attribute
    'register'``). A URI is now built into a registry (``registry_from_uri``) that the
    server registers in, owns and closes when drained; an object without
    ``register()``/``deregister()`` is a ConfigError naming ``registry`` at once."""
    srv = meshkit.MeshServer("echo", [add_echo("u1")], registry=f"local://{registry_dir}",
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          admin=None))
    owned = srv.registry
    assert isinstance(owned, LocalRegistry) and owned is not registry
    instance = await srv.start()
    try:
        assert await registry.instances("echo") == {instance}
    finally:
        await asyncio.wait_for(srv.drain(), 10)
    assert await registry.instances("echo") == frozenset()
    assert owned._closed
    with pytest.raises(meshkit.ConfigError, match=r"registry must be .* got a dict$"):
        meshkit.MeshServer("echo", [add_echo("u2")], registry={},  # type: ignore[arg-type]
                           options=meshkit.ServeOptions(insecure=True, admin=None))


async def test_a_start_after_a_failed_start_is_refused(registry: LocalRegistry) -> None:
    """A failed start() is undone and stopped for good (``wait_stopped()`` returns, as
    the docstring says: build a new MeshServer to try again); a later ``start()`` is
    refused saying so, instead of binding again on a server already reported stopped."""
    refusing = _RefusingRegistry(registry.options)
    srv = meshkit.MeshServer("echo", [add_echo("w2")], registry=refusing,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          admin=None))
    try:
        with pytest.raises(RegistryError):
            await srv.start()
        with pytest.raises(RuntimeError, match="failed start"):
            await srv.start()
    finally:
        await refusing.close()


async def test_a_signal_while_starting_undoes_the_start_and_returns(registry_dir: Path) -> None:
    """run_until_signal() listens from its first step: a signal while start() registers
    undoes the start (nothing stays registered or serving) and run_until_signal() returns,
    where a signal before the handlers were installed would have killed the process."""
    reg = _SlowRegistry(LocalOptions(path=registry_dir, ttl_s=30.0), delay_s=0.5)
    srv = meshkit.MeshServer("echo", [add_echo("u1")], registry=reg,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          grace_s=0.2, admin=None))
    # not the default action (exit) should the signal arrive before run_until_signal's own
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        run = asyncio.ensure_future(srv.run_until_signal((signal.SIGUSR1,)))
        await asyncio.wait_for(reg.registering.wait(), 5)
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.wait_for(run, 5)
        assert await _registered_or_answering(reg, srv) == (False, False)
        await asyncio.wait_for(srv.wait_stopped(), 3)
    finally:
        signal.signal(signal.SIGUSR1, previous)
        await asyncio.wait_for(srv.drain(), 5)
        await reg.close()


@asyncio_loop_only("uvloop's signal handlers cannot be read, so none is given back "
                   "(documented)")
async def test_the_applications_own_loop_signal_handler_is_given_back_after_the_drain(
        registry: LocalRegistry) -> None:
    """An application that set its own ``loop.add_signal_handler`` for a signal (to
    reload its configuration on SIGUSR1, say) and then ran ``run_until_signal()`` for
    that signal lost its handler for good once the server had drained: the loop's
    handler was removed and the signal left to its default action, so the next SIGUSR1
    killed the process. Now the application's callback is the loop's handler again
    (asyncio's loop; uvloop's handlers cannot be read, as the docstring says)."""
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    loop.add_signal_handler(signal.SIGUSR1, seen.append, "reload")
    srv = meshkit.MeshServer("echo", [add_echo("g1")], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          grace_s=0.2, admin=None))
    try:
        run = asyncio.ensure_future(srv.run_until_signal((signal.SIGUSR1,)))
        await until(lambda: srv.ready or run.done(), timeout_s=10, what="serving")
        os.kill(os.getpid(), signal.SIGUSR1)  # the server's: it drains
        await asyncio.wait_for(run, 10)
        assert seen == []
        handlers = getattr(loop, "_signal_handlers", {})
        assert signal.SIGUSR1 in handlers, "the application's handler was not given back"
        os.kill(os.getpid(), signal.SIGUSR1)  # the application's again
        await until(lambda: seen == ["reload"], timeout_s=5, what="the app's handler")
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        await asyncio.wait_for(srv.drain(), 5)


def test_servers_starting_together_in_a_later_event_loop_share_a_new_admin_server(
        tmp_path: Path) -> None:
    """The process's shared admin server and the lock that guards it belong to one event
    loop: servers starting together in a later loop (``asyncio.run()`` again, a test's own
    loop) start and share a new one, instead of failing ``start()`` with "<Lock> is bound
    to a different event loop"."""
    async def start_three(tag: str) -> tuple[list[BaseException], set[str]]:
        reg = LocalRegistry(LocalOptions(path=tmp_path / tag, ttl_s=1.0,
                                         poll_interval_s=0.05))
        servers = [meshkit.MeshServer("echo", [add_echo(f"{tag}{i}")], registry=reg,
                                      options=meshkit.ServeOptions(
                                          insecure=True, instance_id=f"{tag}{i}",
                                          drain_delay_s=0.0, grace_s=0.5))
                   for i in range(3)]
        try:
            out = await asyncio.wait_for(asyncio.gather(
                *(s.start() for s in servers), return_exceptions=True), 8)
            urls = {s.admin.url for s in servers if s.admin is not None}
            return [r for r in out if isinstance(r, BaseException)], urls
        finally:
            await asyncio.wait_for(asyncio.gather(
                *(s.drain() for s in servers), return_exceptions=True), 8)
            await reg.close()

    for tag in ("a", "b"):
        errors, urls = asyncio.run(start_three(tag))
        assert errors == [] and len(urls) == 1, (tag, errors, urls)


async def _refused(port: int) -> bool:
    """Whether a TCP connection to 127.0.0.1:``port`` is refused (nothing listens)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 3)
    except OSError:
        return True
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return False


async def test_each_event_loop_has_its_own_shared_admin_server_stopped_with_its_last_user(
    registry: LocalRegistry, tmp_path: Any,
) -> None:
    """The shared admin server belongs to one event loop: a server started and drained in
    another loop (a thread's) meanwhile uses one of its own, and the first loop's admin
    server still stops when its last server drains (it was left listening)."""
    from meshkit.discovery import LocalOptions
    from meshkit.observability import AdminOptions
    from tests.support.echo import add_echo

    def options() -> meshkit.ServeOptions:
        return meshkit.ServeOptions(insecure=True, drain_delay_s=0.0, grace_s=0.5,
                                    admin=AdminOptions(port=0))

    a = meshkit.MeshServer("echo", [add_echo("a")], registry=registry, options=options())
    await a.start()
    try:
        assert a.admin is not None
        admin = a.admin
        admin_port = admin.port

        async def other_loop() -> None:  # a second event loop, in a thread, meanwhile
            reg = LocalRegistry(LocalOptions(path=tmp_path / "other", ttl_s=1.0,
                                             poll_interval_s=0.05))
            b = meshkit.MeshServer("echo", [add_echo("b")], registry=reg, options=options())
            try:
                await b.start()
                await b.drain()
            finally:
                await reg.close()

        await asyncio.wait_for(asyncio.to_thread(asyncio.run, other_loop()), 8)
    finally:
        await asyncio.wait_for(a.drain(), 8)
    refused = await _refused(admin_port)
    if not refused:  # leave nothing listening past this test
        await asyncio.wait_for(admin.stop(), 5)
    assert refused, (f"the admin server on port {admin_port} still listens after every "
                     "server using it drained")


def test_two_servers_in_two_threads_with_a_fixed_admin_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``MESHKIT_ADMIN_PORT`` set (the scrape port a deployment fixes) and two servers
    each in a thread of its own (``asyncio.run(serve(...))`` in a ``threading.Thread``,
    as serve() offers): both serve. The admin server is the process's one: the first
    thread's holds the port, the other thread's server serves without an admin server
    (warned; no ``admin_port`` announced) instead of failing ``start()`` with
    ``EADDRINUSE`` (the admin server was one per event loop, each binding the port)."""
    from tests.support.ports import free_port

    port = free_port()
    monkeypatch.setenv("MESHKIT_ADMIN_PORT", str(port))
    started = threading.Barrier(2, timeout=20)
    leave = threading.Barrier(2, timeout=20)
    outcome: dict[str, str] = {}
    admin_ports: dict[str, str | None] = {}

    async def main(name: str) -> None:
        async with asyncio.timeout(30):
            reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=5.0))
            server = meshkit.MeshServer(
                f"echo{name}", [add_echo(name)], registry=reg,
                options=meshkit.ServeOptions(insecure=True, drain_delay_s=0, grace_s=1.0))
            await asyncio.to_thread(started.wait)
            try:
                await server.start()
                outcome[name] = "serving"
                assert server.instance is not None
                admin_ports[name] = server.instance.meta.get("admin_port")
            except Exception as exc:  # what the second thread got
                outcome[name] = repr(exc)
            await asyncio.to_thread(leave.wait)
            await server.drain()
            await reg.close()

    with structlog.testing.capture_logs() as logs:
        threads = [threading.Thread(target=asyncio.run, args=(main(n),)) for n in "ab"]
        for t in threads:
            t.start()
        for t in threads:
            t.join(40)
    assert not any(t.is_alive() for t in threads)
    assert outcome == {"a": "serving", "b": "serving"}
    assert sorted(admin_ports.values(), key=str) == [str(port), None]
    assert [e["event"] for e in logs if e.get("admin_port") == port
            and e["log_level"] == "warning"] == [
        "admin port held by the admin server of another event loop of this process; "
        "serving without an admin server"]


def test_closed_loops_are_not_kept_by_the_shared_admin_server(tmp_path: Path) -> None:
    """An ``asyncio.run()`` in which two servers start together (``asyncio.gather(
    serve("a", ...), serve("b", ...))``) leaves no reference to its loop once they drained
    (the shared admin server's slot of the loop, kept in a dict weakly keyed by loop, held
    an ``asyncio.Lock`` bound to that very loop, so the key never died: the loop and all
    it references leaked, one per run)."""
    import gc
    import types
    import weakref

    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def main(run: int) -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        async with asyncio.timeout(20):
            reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=5.0))
            servers = [meshkit.MeshServer(
                "echo", [add_echo(f"e{run}{k}")], registry=reg,
                options=meshkit.ServeOptions(insecure=True, instance_id=f"e{run}{k}",
                                             admin=AdminOptions(port=0), drain_delay_s=0,
                                             grace_s=1.0)) for k in range(2)]
            await asyncio.gather(*(s.start() for s in servers))
            await asyncio.gather(*(s.drain() for s in servers))
            await reg.close()

    for run in range(3):
        run_loop(main(run))
    gc.collect()
    # grpc.aio's poller keeps every loop that ran grpc (a dict of _BoundEventLoop) while
    # its process-wide state lives (the last loop's, or other tests' channels and servers
    # keep it alive): only holders other than grpc's count
    def grpcs(obj: object) -> bool:
        return type(obj).__module__.startswith("grpc.") or (isinstance(obj, dict) and all(
            type(v).__module__.startswith("grpc.") for v in obj.values()))

    held = []
    for ref in loops[:2]:
        loop = ref()
        if loop is not None:
            held.append([type(r).__name__ for r in gc.get_referrers(loop)
                         if not grpcs(r) and not isinstance(r, types.FrameType)])
            del loop
    assert held in ([], [[]], [[], []]), held


async def test_reflection_is_served_as_v1_and_v1alpha(echo_servers: EchoFactory) -> None:
    """serve() answers server reflection under the stable ``grpc.reflection.v1`` name
    (grpcurl and grpc-js ask it first) as well as ``v1alpha`` (all grpcio-reflection
    serves); the messages are the same on the wire. Both list v1alpha only: no v1
    descriptor is there to describe v1 with, and clients describe what is listed."""
    srv = await echo_servers("e1")
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        for version in ("v1", "v1alpha"):
            call = ch.stream_stream(
                f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )(iter([request]), timeout=5)
            names = {s.name async for answer in call
                     for s in answer.list_services_response.service}
            assert {SERVICE, "grpc.health.v1.Health",
                    "grpc.reflection.v1alpha.ServerReflection"} <= names, (version, names)
            assert "grpc.reflection.v1.ServerReflection" not in names
            # every service serve() lists itself can be described (grpcurl describe; the
            # echo service is a generic handler, with no descriptor)
            for name in names - {SERVICE}:
                ask = reflection_pb2.ServerReflectionRequest(file_containing_symbol=name)
                answers = [a async for a in ch.stream_stream(
                    f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                    request_serializer=reflection_pb2.ServerReflectionRequest
                    .SerializeToString,
                    response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
                )(iter([ask]), timeout=5)]
                assert answers and not answers[0].HasField("error_response"), (name,
                                                                               answers)


async def test_a_second_server_cannot_bind_a_port_another_server_listens_on(
        registry: LocalRegistry) -> None:
    """Two services configured by mistake with one port (two processes of a deployment, or
    a new instance started while the old one still runs): ``beta`` starting on the port
    ``alpha`` listens on is refused (``RuntimeError``: failed to bind). grpc turns
    ``SO_REUSEPORT`` on for server sockets by default, so without meshkit's default of
    ``grpc.so_reuseport`` 0 beta bound the port too, registered it, and the kernel spread
    new connections over both processes: callers of either service landed on the other
    at random (``UNIMPLEMENTED``), with no error at start-up. grpc-go, Envoy
    (``enable_reuse_port`` opt-in) and a plain ``bind()`` refuse the port the same way."""
    opts: dict[str, Any] = {"insecure": True, "admin": None, "drain_delay_s": 0.0,
                            "grace_s": 1.0}
    alpha = meshkit.MeshServer("alpha", [add_echo("a1")], registry=registry,
                               options=meshkit.ServeOptions(**opts))
    await alpha.start()
    beta = meshkit.MeshServer("beta", [add_echo("b1")], registry=registry,
                              options=meshkit.ServeOptions(port=alpha.port, **opts))
    try:
        with pytest.raises(RuntimeError, match=r"(?i)bind"):
            await beta.start()
        assert await registry.instances("beta") == frozenset()
    finally:
        await asyncio.wait_for(beta.drain(), 10)
        await asyncio.wait_for(alpha.drain(), 10)


async def test_servers_that_opt_in_to_so_reuseport_share_a_port(
        registry: LocalRegistry) -> None:
    """``server_options=(("grpc.so_reuseport", 1),)`` on every server of a port (pre-fork
    workers sharing one listening port) still lets them all bind it: the default only
    turns the sharing off, the user's server options win."""
    opts: dict[str, Any] = {"insecure": True, "admin": None, "drain_delay_s": 0.0,
                            "grace_s": 1.0, "server_options": (("grpc.so_reuseport", 1),)}
    first = meshkit.MeshServer("echo", [add_echo("w1")], registry=registry,
                               options=meshkit.ServeOptions(**opts))
    await first.start()
    second = meshkit.MeshServer("echo", [add_echo("w2")], registry=registry,
                                options=meshkit.ServeOptions(port=first.port, **opts))
    try:
        await second.start()
        assert second.port == first.port
    finally:
        await asyncio.wait_for(second.drain(), 10)
        await asyncio.wait_for(first.drain(), 10)


class _Started(Exception):
    """Raised by an ``on_started`` hook to end ``serve()`` once it has started."""


def _in_a_thread(main: Any) -> BaseException | None:
    """Run ``asyncio.run(main())`` in a new thread (its own event loop); what it raised."""
    outcome: list[BaseException | None] = []

    def worker() -> None:
        try:
            asyncio.run(main())
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=worker, name="serve-in-a-thread")
    t.start()
    t.join(45)
    assert not t.is_alive(), "the thread's serve() did not end"
    return outcome[0]


def test_serve_runs_in_a_thread_with_its_own_event_loop(registry_dir: Path) -> None:
    """An application running a gRPC service in a worker thread (a web app, a test
    harness, a plugin host: ``asyncio.run(meshkit.serve(...))`` in a ``threading.Thread``)
    gets a started server: signals reach the main thread only, so serve() outside it
    installs no signal handlers (as uvicorn and grpc-go's ``Serve`` in a goroutine) and
    serves until cancelled or drained. It used to call ``loop.add_signal_handler``
    anyway and fail before starting: ``RuntimeError: set_wakeup_fd only works in main
    thread of the main interpreter``. ``on_started`` raising shows it started."""
    ports: list[int] = []

    async def main() -> None:
        reg = LocalRegistry(LocalOptions(path=registry_dir, ttl_s=5.0, poll_interval_s=0.05))

        def started(server: meshkit.MeshServer) -> None:
            ports.append(server.port)
            raise _Started

        try:
            await meshkit.serve("echo", [add_echo("t1")], registry=reg,
                                options=meshkit.ServeOptions(insecure=True, admin=None,
                                                             drain_delay_s=0.0, grace_s=1.0),
                                on_started=started)
        finally:
            assert await reg.instances("echo") == frozenset()  # drained before raising
            await reg.close()

    error = _in_a_thread(main)
    assert isinstance(error, _Started), f"serve() in a thread did not start: {error!r}"
    assert ports and ports[0] > 0


def test_run_until_signal_in_a_thread_serves_until_drained(registry_dir: Path) -> None:
    """``run_until_signal()`` in a thread with its own loop serves (calls answered) until
    :meth:`MeshServer.drain` ends it, instead of refusing to start for want of signal
    handlers; the main thread's own signal handlers are left as they were."""
    before = signal.getsignal(signal.SIGTERM)
    answers: list[bytes] = []

    async def main() -> None:
        reg = LocalRegistry(LocalOptions(path=registry_dir, ttl_s=5.0, poll_interval_s=0.05))
        srv = meshkit.MeshServer("echo", [add_echo("t2")], registry=reg,
                                 options=meshkit.ServeOptions(insecure=True, admin=None,
                                                              drain_delay_s=0.0, grace_s=1.0))
        try:
            run = asyncio.ensure_future(srv.run_until_signal())
            await until(lambda: srv.ready or run.done(), timeout_s=20, what="serving")
            assert not run.done(), run.exception()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
                answers.append(await ch.unary_unary(method("Unary"))(b"x", timeout=10))
            await asyncio.wait_for(srv.drain(), 10)
            await asyncio.wait_for(run, 10)
        finally:
            await srv.drain()
            await reg.close()

    assert _in_a_thread(main) is None
    assert answers == [b"t2|x"]
    assert signal.getsignal(signal.SIGTERM) is before


class _FrozenView:
    """A registry view that never changes after its first answer: a client cut off from
    its registry, whose watch keeps its last set (the README's promise for an outage)."""

    def __init__(self, instances: frozenset[Instance]) -> None:
        self._instances = instances

    async def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        yield self._instances
        await asyncio.Event().wait()  # no news, ever


async def test_calls_racing_a_drained_server_stop_are_refused_with_a_nack_not_cancelled(
    registry: LocalRegistry,
) -> None:
    """A rolling restart (e0 then e1 drained, e2 always up) under 16 tasks of continuous
    idempotent unary calls, from a client that never sees the deregistrations.

    What was wrong: ``_drain`` went from ``drain_delay_s`` straight to
    ``server.stop(grace_s)``, and grpc core ends every call it has accepted but not yet
    handed to Python then with ``CANCELLED`` "CANCELLED" (grpc/grpc#41785). What a user
    saw: a client that had not seen the deregistration (its registry unreachable, or any
    plain gRPC client) got a few calls failed ``CANCELLED`` per drained instance (5-12
    in this test), the handler never having run, and not retried even for an idempotent
    method (``CANCELLED`` is in no retry codes) while e2 was healthy. What happens now:
    before the stop, the drain refuses new calls ``UNAVAILABLE`` with the nack trailer
    (``meshkit-nack: 1``), which the mesh client retries on another endpoint, charging
    the draining one a failure, so calls stop arriving and the stop finds none waiting:
    no call is ``CANCELLED``."""
    servers: dict[str, meshkit.MeshServer] = {}

    async def start(iid: str) -> meshkit.MeshServer:
        srv = meshkit.MeshServer("echo", [add_echo(iid)], registry=registry,
                                 options=meshkit.ServeOptions(
                                     insecure=True, instance_id=iid, admin=None,
                                     drain_delay_s=0.3, grace_s=5))
        await srv.start()
        servers[iid] = srv
        return srv

    try:
        for i in range(3):
            await start(f"e{i}")
        view = _FrozenView(frozenset(s.instance for s in servers.values()
                                     if s.instance is not None))
        ok = 0
        fails: collections.Counter[tuple[grpc.StatusCode, str]] = collections.Counter()
        refused = 0
        opts = meshkit.DialOptions(insecure=True, retry=RetryOptions(
            methods={method("Unary"): RetryPolicy(idempotent=True)}))
        async with meshkit.dial("echo", registry=view, options=opts) as ch:
            await ch.wait_for_endpoints(3, timeout_s=10)
            unary = ch.unary_unary(method("Unary"))
            stop = asyncio.Event()

            async def worker() -> None:
                nonlocal ok
                while not stop.is_set():
                    try:
                        await unary(b"x", timeout=5)
                        ok += 1
                    except grpc.aio.AioRpcError as exc:
                        fails[(exc.code(), (exc.details() or "")[:60])] += 1

            tasks = [asyncio.create_task(worker()) for _ in range(16)]
            try:
                await asyncio.sleep(0.3)
                for i in range(2):
                    drained = servers.pop(f"e{i}")
                    await asyncio.wait_for(drained.drain(), 15)
                    refused += getattr(drained, "drain_refused", 0)  # (none before)
                    await start(f"e{i}-new")  # which this client cannot learn of
                    await asyncio.sleep(0.3)
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert ok > 100, (ok, dict(fails))
        cancelled = {k: v for k, v in fails.items() if k[0] is grpc.StatusCode.CANCELLED}
        assert not cancelled, (f"{sum(cancelled.values())} idempotent calls failed "
                               f"CANCELLED as a drained server stopped: {cancelled}")
        assert refused > 0  # the refusal phase answered the calls that raced the stop
    finally:  # the servers left (drain_delay_s 0.3 each) drain together
        await asyncio.wait_for(asyncio.gather(*(srv.drain() for srv in servers.values())), 15)


@pytest.mark.parametrize("registered", [False, True], ids=["generic", "registered"])
async def test_the_drain_refuses_new_calls_with_a_nack_before_it_stops(
    registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch, registered: bool,
) -> None:
    """Between ``drain_delay_s`` and the stop, the drain answers every new unary-response
    call of a meshkit client (its user agent's ``meshkit/`` token; a method of a generic
    handler or a registered one) ``UNAVAILABLE`` :data:`DRAINING_DETAILS` with the nack
    trailer before any code of it runs, counted in ``drain_refused``; its streaming
    calls are served (meshkit's client retries nacks of unary-response calls only), an
    unknown method is ``UNIMPLEMENTED``; the health service still answers
    (``NOT_SERVING``), and another client's calls are served (the GOAWAY of the stop
    moves that client on). The phase
    ends once no call was refused for ``_REFUSE_QUIET_S`` (widened here so the test can
    look inside it); the calls before the drain ran as usual. Before, the drain stopped
    at once after ``drain_delay_s``: no refusal phase, the calls racing the stop were
    ``CANCELLED``."""
    monkeypatch.setattr(meshkit.server, "_REFUSE_QUIET_S", 1.0, raising=False)
    monkeypatch.setattr(meshkit.server, "_REFUSE_MAX_S", 20.0, raising=False)
    served: list[str] = []
    srv = meshkit.MeshServer("echo", [add_echo("r1", served=served, registered=registered)],
                             registry=registry,
                             options=meshkit.ServeOptions(insecure=True, admin=None,
                                                          drain_delay_s=0.1, grace_s=5))
    await srv.start()
    drain: asyncio.Future[None] | None = None
    try:
        # a channel that says it is a meshkit client (as a MeshChannel's sub-channels do),
        # and a plain one
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}", options=[(
                "grpc.secondary_user_agent", MESH_USER_AGENT)]) as ch, \
                grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as plain:
            unary = ch.unary_unary(method("Unary"))
            assert await unary(b"x", timeout=5) == b"r1|x"
            assert await plain.unary_unary(method("Unary"))(b"p", timeout=5) == b"r1|p"
            drain = asyncio.ensure_future(srv.drain())
            refusal: grpc.aio.AioRpcError | None = None
            deadline = time.monotonic() + 10
            while refusal is None and time.monotonic() < deadline:
                try:
                    await unary(b"y", timeout=5)  # served while drain_delay_s runs
                except grpc.aio.AioRpcError as exc:
                    refusal = exc
                await asyncio.sleep(0.01)
            assert refusal is not None
            nack = (("meshkit-nack", "1"),)
            assert (refusal.code(), refusal.details(), tuple(refusal.trailing_metadata())) \
                == (grpc.StatusCode.UNAVAILABLE, DRAINING_DETAILS, nack)
            n_served = len(served)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await unary(b"z", timeout=5)
            assert len(served) == n_served  # no handler ran for the refused calls
            # a streaming call (which meshkit's client does not retry when nacked unless
            # safe to repeat) is served; an unknown method is UNIMPLEMENTED at once
            assert [x async for x in ch.unary_stream(method("ServerStream"))(
                b"2", timeout=5)] == [b"r1|0", b"r1|1"]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ch.unary_unary("/no.Such/Method")(b"z", timeout=5)
            assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
            resp = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert srv.drain_refused == 2
            # a client without meshkit's user agent is served in the phase
            assert await plain.unary_unary(method("Unary"))(b"q", timeout=5) == b"r1|q"
            assert [x async for x in plain.unary_stream(method("ServerStream"))(
                b"2", timeout=5)] == [b"r1|0", b"r1|1"]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await plain.unary_unary("/no.Such/Method")(b"z", timeout=5)
            assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
            assert srv.drain_refused == 2
            assert not drain.done()
            await asyncio.wait_for(drain, 10)  # once quiet for _REFUSE_QUIET_S
    finally:
        if drain is not None:
            await asyncio.wait_for(drain, 10)
        await srv.drain()


async def test_a_drain_fails_no_call_of_a_plain_grpc_round_robin_client(
    tmp_path: Path,
) -> None:
    """A gRPC client without meshkit (DNS or a headless Service giving it every address,
    ``round_robin``, no retry policy: here grpc.aio itself; grpc-js behaves the same)
    calls two meshkit servers while one of them drains (a rolling deploy).

    gRPC's graceful shutdown is the GOAWAY frame (PROTOCOL-HTTP2.md: "Servers should send
    GOAWAY before terminating a connection"; the client retries the streams after
    last-stream-id elsewhere): against two plain grpc.aio servers where one runs
    ``server.stop(2)`` such a client fails no call.

    What was wrong: the drain's refusal phase answered every new call ``UNAVAILABLE``
    "server draining: call refused before it ran" (the nack only mesh clients read) for
    as long as calls kept coming, up to 0.5 s, before the GOAWAY; a client that never
    learns of the deregistration keeps sending, so the phase ran its whole length and
    each of its calls there failed (261 of 866 in a run of this test). What happens now: only calls
    of meshkit clients (their user agent's ``meshkit/`` token) are refused in that phase;
    other calls are served as in-flight calls of the grace period, and the GOAWAY of
    ``server.stop(grace_s)`` moves the client to the other address."""
    servers = []
    for iid in ("e1", "e2"):
        reg = LocalRegistry(LocalOptions(path=tmp_path / iid / "reg", ttl_s=30.0,
                                         poll_interval_s=0.05))
        srv = meshkit.MeshServer("echo", [add_echo(iid)], registry=reg,
                                 options=meshkit.ServeOptions(
                                     insecure=True, instance_id=iid, admin=None,
                                     telemetry=None, drain_delay_s=0.1, grace_s=2.0))
        await srv.start()
        servers.append(srv)
    e1, e2 = servers
    ok: collections.Counter[bytes] = collections.Counter()
    fails: collections.Counter[tuple[grpc.StatusCode, str]] = collections.Counter()
    config = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
    try:
        async with grpc.aio.insecure_channel(
                f"ipv4:127.0.0.1:{e1.port},127.0.0.1:{e2.port}",
                options=[("grpc.service_config", config)]) as ch:
            unary = ch.unary_unary(method("Unary"))
            stop = asyncio.Event()

            async def worker() -> None:
                while not stop.is_set():
                    try:
                        ok[(await unary(b"x", timeout=5)).split(b"|")[0]] += 1
                    except grpc.aio.AioRpcError as exc:
                        fails[(exc.code(), (exc.details() or "")[:60])] += 1

            tasks = [asyncio.create_task(worker()) for _ in range(4)]
            try:
                await until(lambda: ok[b"e1"] > 50 and ok[b"e2"] > 50, timeout_s=15)
                await asyncio.wait_for(e1.drain(), 15)
                before = ok[b"e2"]
                await until(lambda: ok[b"e2"] > before + 100, timeout_s=15)
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 10)
    finally:
        for srv in servers:
            await asyncio.wait_for(srv.drain(), 15)
            await srv.registry.close()
    # a plain grpc.aio server's stop() fails none; allow grpc core's stop race
    # (grpc/grpc#41785: a call accepted as the server stops ends CANCELLED)
    assert sum(fails.values()) <= 2, (sum(fails.values()), sum(ok.values()), dict(fails))
    assert e1.drain_refused == 0  # none of its calls was refused: no meshkit client


@pytest.mark.parametrize("kind", ["bidi", "server-stream"])
async def test_a_mesh_clients_streaming_call_in_the_drain_refusal_phase_is_not_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str,
) -> None:
    """A meshkit client that has not yet seen the deregistration (its registry here never
    hears of it: the refusal phase is for such callers) opens a bidi stream, or a server
    stream not marked safe to repeat, over two endpoints, one of them in its refusal
    phase.

    What was wrong: the phase nacked every call of a meshkit client, but meshkit's client
    retries nacks only of unary-response calls (and of server streams safe to repeat), so
    these failed ``UNAVAILABLE`` "server draining: call refused before it ran" while a
    plain gRPC client's same call was served. What happens now: only a mesh client's
    unary-response calls are nacked; its streaming calls are served as in-flight calls."""
    monkeypatch.setattr(meshkit.server, "_REFUSE_QUIET_S", 1.5, raising=False)
    monkeypatch.setattr(meshkit.server, "_REFUSE_MAX_S", 4.0, raising=False)
    servers = []
    client_reg = LocalRegistry(LocalOptions(path=tmp_path / "client", ttl_s=60.0,
                                            poll_interval_s=0.05))
    for iid in ("e1", "e2"):
        reg = LocalRegistry(LocalOptions(path=tmp_path / iid, ttl_s=30.0,
                                         poll_interval_s=0.05))
        srv = meshkit.MeshServer("echo", [add_echo(iid)], registry=reg,
                                 options=meshkit.ServeOptions(
                                     insecure=True, instance_id=iid, admin=None,
                                     telemetry=None, drain_delay_s=0.05, grace_s=2.0))
        await srv.start()
        servers.append(srv)
        await client_reg.register(Instance(service="echo", instance_id=iid,
                                           host="127.0.0.1", port=srv.port))
    e1, _e2 = servers
    outcomes: list[Any] = []
    drain = None
    try:
        opts = meshkit.DialOptions(insecure=True, telemetry=None)
        async with meshkit.dial("echo", registry=client_reg, options=opts) as ch:
            await ch.wait_for_endpoints(2)
            drain = asyncio.ensure_future(e1.drain())
            await until(lambda: "service" in vars(e1._table), timeout_s=5)  # refusing
            for _ in range(6):  # round robin: some of them pick e1
                try:
                    if kind == "bidi":
                        got = [r async for r in ch.stream_stream(method("Bidi"))(
                            iter([b"a"]), timeout=5)]
                    else:
                        got = [r async for r in ch.unary_stream(method("ServerStream"))(
                            b"1", timeout=5)]
                    outcomes.append(("ok", len(got)))
                except grpc.aio.AioRpcError as exc:
                    outcomes.append((exc.code(), exc.details()))
            assert drain is not None and not drain.done()  # all made in the phase
    finally:
        # e2 drains beside e1 (each refusal phase waits out _REFUSE_QUIET_S, 1.5 s here)
        await asyncio.wait_for(asyncio.gather(
            *([drain] if drain is not None else []), servers[-1].drain()), 15)
        for srv in servers:
            await asyncio.wait_for(srv.drain(), 15)
            await srv.registry.close()
        await client_reg.close()
    assert all(o[0] == "ok" for o in outcomes), outcomes
    assert e1.drain_refused == 0, outcomes


_LEFTOVER_SERVE = r'''
import asyncio, pathlib, tempfile
import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.observability._live import live_server_stats
from tests.support.echo import add_echo

reg = LocalRegistry(LocalOptions(path=pathlib.Path(tempfile.mkdtemp()) / "reg", ttl_s=5.0))
held = []

async def main() -> None:
    started = asyncio.Event()

    def on_started(server: meshkit.MeshServer) -> None:
        held.append(server)
        started.set()

    asyncio.get_running_loop().create_task(meshkit.serve(
        "svc", [add_echo("e1")], registry=reg,
        options=meshkit.ServeOptions(insecure=True, instance_id="e1", drain_delay_s=0.0,
                                     grace_s=1.0, admin=None),
        on_started=on_started))
    await asyncio.wait_for(started.wait(), 10)

asyncio.run(main())
server = held[0]
print(server.live, server._stopped.is_set(), len(live_server_stats()))
'''


def test_a_serve_task_left_at_the_end_of_asyncio_run_ends_stopped() -> None:
    """A ``serve()`` task still running when ``asyncio.run()`` ends is cancelled by the
    run's sweep and drains, but the sweep cancels grpc.aio's own server tasks too:
    ``await server.stop(grace_s)`` in the drain raised ``CancelledError`` right after the
    deregistration, so the server never ended stopped (``live`` stayed true), its final
    counters were not recorded and its interceptors, admin server and registry were not
    closed: while anything held it (on Python 3.13 even after ``gc.collect()``) the
    process listed it as live (``/readyz`` 503, ``/metrics`` and ``/debug/mesh`` showing
    it), which broke the admin tests after it in the 3.13 suite. The steps after the
    deregistration now end in a ``finally``: it ends stopped and out of the live
    registry. Run in a child process: the fault leaves the server behind."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", _LEFTOVER_SERVE], cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)},
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False True 0", proc.stdout


def _add_whoami(_servicer: object, server: Any) -> None:
    """``t.Tenant/Whoami``: ``<current_claims() subject or ->|<set or -: current_deadline()>``."""
    async def whoami(request: bytes, context: Any) -> bytes:
        claims = current_claims()
        deadline = current_deadline()
        return f"{claims.subject if claims else '-'}|{'set' if deadline else '-'}".encode()

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "t.Tenant", {"Whoami": grpc.unary_unary_rpc_method_handler(whoami)}),))


async def test_a_server_started_in_a_deadline_scope_does_not_propagate_that_deadline(
        registry: LocalRegistry) -> None:
    """``deadline_scope`` is documented "for tests and for code that starts work outside
    gRPC": an application that bounded its start-up with it (``with deadline_scope(t):
    await server.start()``) got that start-up deadline propagated into every outgoing
    call of every handler of a server without deadline admission
    (``ServeOptions(deadline=None)``: no propagation), for the server's whole life: once
    the start-up deadline had passed, every call the handlers made failed
    ``DEADLINE_EXCEEDED`` at once (grpc.aio runs each call in a copy of the context
    ``server.start()`` ran in). Now the grpc server starts in a context of its own:
    ``current_deadline()`` in the handler is ``None``, as without the scope."""
    srv = meshkit.MeshServer("tenant", [(_add_whoami, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, deadline=None,
                                                          drain_delay_s=0.0, grace_s=1.0,
                                                          admin=None))
    with deadline_scope(time.monotonic() + 1000.0):
        await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            got = await ch.unary_unary("/t.Tenant/Whoami")(b"", timeout=5)
    finally:
        await srv.drain()
    assert got == b"-|-", got


_APP_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("app_region", default="-")


async def test_a_server_keeps_the_applications_context_variables_of_its_start(
        registry: LocalRegistry) -> None:
    """What a plain grpc.aio server does: an application that binds its own context
    variables before ``start()`` (``structlog.contextvars.bind_contextvars(region=...)``
    at start-up, for every log line) sees them in its handlers. Starting the grpc server
    without meshkit's per-call variables (the test above) must not drop the
    application's: the first fix started it in an empty context, and the handler read
    the default."""
    def add(_servicer: object, server: Any) -> None:
        async def region(request: bytes, context: Any) -> bytes:
            return f"{_APP_VAR.get()}|{'set' if current_deadline() else '-'}".encode()

        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "t.App", {"Region": grpc.unary_unary_rpc_method_handler(region)}),))

    srv = meshkit.MeshServer("app", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, deadline=None,
                                                          drain_delay_s=0.0, grace_s=1.0,
                                                          admin=None))
    token = _APP_VAR.set("eu-west")
    try:
        with deadline_scope(time.monotonic() + 1000.0):
            await srv.start()
    finally:
        _APP_VAR.reset(token)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            got = await ch.unary_unary("/t.App/Region")(b"", timeout=5)
    finally:
        await srv.drain()
    assert got == b"eu-west|-", got


_STARTER_TRACE_ID = 0x1234567890ABCDEF1234567890ABCDEF


async def test_a_server_started_under_a_span_and_baggage_does_not_hand_them_to_its_calls(
        registry: LocalRegistry) -> None:
    """A server started from a handler serving a traced call of user "admin" (its current
    span, W3C baggage ``user.id=admin``): d2ded0f kept every context variable but
    meshkit's, OpenTelemetry's among them, so every call the new server served ran under
    the starter's span (without an SDK, the calls' current span; their outgoing calls
    carried that trace) with the starter's baggage. The calls now start with an empty
    OpenTelemetry context."""
    from opentelemetry import baggage, trace
    from opentelemetry import context as otel_context
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    def add(_servicer: object, server: Any) -> None:
        async def seen(request: bytes, context: Any) -> bytes:
            sc = trace.get_current_span().get_span_context()
            return f"{sc.trace_id:032x}|{baggage.get_baggage('user.id')}".encode()

        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "t.Seen", {"Seen": grpc.unary_unary_rpc_method_handler(seen)}),))

    srv = meshkit.MeshServer("seen", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0,
                                                          grace_s=1.0, admin=None))
    starter = trace.set_span_in_context(NonRecordingSpan(SpanContext(
        _STARTER_TRACE_ID, 0x1122334455667788, is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED))))
    starter = baggage.set_baggage("user.id", "admin", context=starter)
    token = otel_context.attach(starter)
    try:
        await srv.start()
    finally:
        otel_context.detach(token)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            got = (await ch.unary_unary("/t.Seen/Seen")(b"", timeout=5)).decode()
    finally:
        await srv.drain()
    trace_id, user = got.split("|")
    assert int(trace_id, 16) != _STARTER_TRACE_ID, "the starter's span is the calls' span"
    assert user == "None", f"the starter's baggage reached the calls: user.id={user}"


async def _request_length(request: bytes, context: Any) -> bytes:
    return b"%d" % len(request)


async def test_a_bytes_named_server_option_overrides_the_limits_receive_size(
        registry: LocalRegistry) -> None:
    """``ServeOptions(server_options=((b"grpc.max_receive_message_length", 1000),))`` (a
    bytes name, as grpc takes them and plain ``grpc.aio.server(options=)`` applies) was
    silently ignored: meshkit merged the options into a dict keyed by name, the bytes key
    sat beside ``ServerLimits``' own ``"grpc.max_receive_message_length"`` (4 MiB) and
    grpc core applied that one, so a 5000-byte request was accepted where the operator
    capped requests at 1000 bytes (a plain grpc.aio server answers
    ``RESOURCE_EXHAUSTED``). Names are decoded where the options are checked: the
    override applies, key by key, as documented."""
    def add(_servicer: object, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "t.Sizes", {"Length": grpc.unary_unary_rpc_method_handler(_request_length)}),))

    srv = meshkit.MeshServer("sizes", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, drain_delay_s=0.0, grace_s=1.0, admin=None,
                                 server_options=((b"grpc.max_receive_message_length",
                                                  1000),)))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            length = ch.unary_unary("/t.Sizes/Length")
            assert await length(b"\0" * 900, timeout=5) == b"900"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await length(b"\0" * 5000, timeout=5)
    finally:
        await srv.drain()
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err.value


def _gate_timers(loop: asyncio.AbstractEventLoop, gate: Any) -> list[Any]:
    """The timers ``gate`` has pending on ``loop``: from asyncio's schedule (its private
    ``_scheduled`` heap) where the loop keeps one, else (uvloop) the gate's own handle."""
    scheduled = getattr(loop, "_scheduled", None)
    if scheduled is None:
        handle = gate._sweep
        return [] if handle is None or handle.cancelled() else [handle]
    return [h for h in scheduled if not h.cancelled()
            and getattr(h._callback, "__self__", None) is gate]


async def _gate_timers_after_stop(registry: LocalRegistry, header_only: bool) -> list[Any]:
    """Start a server (default ``ServerLimits``: ``first_message_timeout_s=10``), make one
    call (and leave one header-only call open, with ``header_only``), drain it, and give
    the gate's timers still pending on the loop."""
    from meshkit.server import ServerLimits

    loop = asyncio.get_running_loop()
    srv = meshkit.MeshServer("slow", [(_add_slow, None)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, drain_delay_s=0, grace_s=0.3, admin=None,
                                 limits=ServerLimits()))
    await srv.start()
    gate = srv.gate
    assert gate is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            assert await ch.unary_unary("/test.Slow/Hold")(b"x", timeout=5) == b"held 1"
            assert _gate_timers(loop, gate), "the gate armed no timer: nothing tested"
            idle: Any = ch.stream_stream("/test.Slow/Hold")() if header_only else None
            if idle is not None:
                await asyncio.wait_for(idle.wait_for_connection(), 5)
                await until(lambda: bool(gate._waiting), timeout_s=5,
                            what="the header-only call to wait for its request")
            await asyncio.wait_for(srv.drain(), 10)
            if idle is not None:  # ended by the stop, not served
                assert await asyncio.wait_for(idle.code(), 5) != grpc.StatusCode.OK
    finally:
        await srv.drain()
    return _gate_timers(loop, gate)


@pytest.mark.parametrize("header_only", [False, True], ids=["calls-over", "call-waiting"])
async def test_a_stopped_server_leaves_no_request_gate_timer_on_the_loop(
        registry: LocalRegistry, header_only: bool) -> None:
    """The request gate arms one timer (``first_message_timeout_s``, 10 s by default)
    when a call starts waiting for its request and leaves it armed until due: a drained
    server, whether its calls were over or one still waited for its request (ended by
    the stop), left the gate's ``_expire`` scheduled on the loop for up to 10 s after
    the stop, holding the gate and its handlers. Now the drain's last step cancels it
    (``RequestGate.close()``), and a closed gate arms none again."""
    assert await _gate_timers_after_stop(registry, header_only) == []


# -- plain-function handlers run on the server's own threads ---------------------------------

# More blocked calls than the loop's default executor has threads (min(32, cpus + 4)), all
# admitted (call slots raised past them), and more than the server's handler threads.
_BLOCKED_CALLS = 40
_SLOTS = 64


def _blocking_service(release: threading.Event,
                      threads: set[str] | None = None) -> tuple[Any, None]:
    """``(add_fn, None)`` of a service whose ``/t.Busy/Block`` is a plain function that
    blocks until ``release`` is set (a handler waiting on a slow database; it notes its
    thread's name in ``threads``), and whose ``/t.Busy/Ping`` is an ``async def`` that
    answers at once."""

    def block(request: bytes, context: Any) -> bytes:
        if threads is not None:
            threads.add(threading.current_thread().name)
        release.wait(30)
        return b"done"

    async def ping(request: bytes, context: Any) -> bytes:
        return b"pong"

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "t.Busy", {"Block": grpc.unary_unary_rpc_method_handler(block),
                       "Ping": grpc.unary_unary_rpc_method_handler(ping)}),))

    return add, None


@contextlib.asynccontextmanager
async def _busy_calls(srv: meshkit.MeshServer,
                      release: threading.Event) -> AsyncIterator[grpc.aio.Channel]:
    """``_BLOCKED_CALLS`` calls of ``Block`` in flight on ``srv``, every one admitted
    (and so handed to a thread, or queued for one); released, awaited and the channel
    closed on the way out."""
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}")
    block: Any = ch.unary_unary("/t.Busy/Block")
    calls = [asyncio.ensure_future(block(b"x", timeout=30)) for _ in range(_BLOCKED_CALLS)]
    try:
        await until(lambda: srv.gate is not None and srv.gate.active >= _BLOCKED_CALLS,
                    timeout_s=10, what="every blocked call admitted")
        await asyncio.sleep(0.3)  # each handed to the executor
        yield ch
    finally:
        release.set()
        await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 15)
        await ch.close()


async def test_metrics_scrape_answers_while_blocking_handlers_hold_every_handler_thread(
    tmp_path: Path,
) -> None:
    """A busy server (its plain-function handlers waiting on a slow dependency, more
    calls than threads) still answers its probes and its scrape. The handlers ran in
    ``asyncio``'s default executor, where the admin server also rendered ``/metrics``
    (``asyncio.to_thread``): the scrape waited until a handler returned (here never; in
    production behind every queued call, past Prometheus' 10 s scrape timeout with 2 s
    handlers), and ``MeshkitInstanceDown`` ("it died or hangs") fired for an instance
    that was only busy. Now the handlers run on the server's own threads
    (``meshkit-handler-<service>``) and the scrape on the admin server's."""
    release = threading.Event()
    threads: set[str] = set()
    reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=2.0, poll_interval_s=0.05))
    srv = meshkit.MeshServer(
        "busysync", [_blocking_service(release, threads)], registry=reg,
        options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0, grace_s=0.5,
                                     limits=meshkit.ServerLimits(max_concurrent_rpcs=_SLOTS)))
    await srv.start()
    try:
        assert srv.admin is not None
        async with _busy_calls(srv, release) as ch:
            # what runs on the loop answers at once
            answer = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=3)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            ping: Any = ch.unary_unary("/t.Busy/Ping")
            assert await ping(b"", timeout=3) == b"pong"
            timeout = aiohttp.ClientTimeout(total=3.0)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                for path in ("/healthz", "/readyz", "/debug/mesh"):
                    async with http.get(srv.admin.url + path) as resp:
                        assert resp.status == 200, path
                try:
                    async with http.get(srv.admin.url + "/metrics") as resp:
                        body = await resp.text()
                except TimeoutError:
                    raise AssertionError(
                        "/metrics did not answer within 3 s while plain-function handlers "
                        "held every handler thread") from None
                assert resp.status == 200
                assert "grpc_server_started_total" in body
            # the loop's default executor is free for asyncio.to_thread work meanwhile
            assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), 3) == 42
            assert not release.is_set()  # answered while the handlers still blocked
            assert threads and all(t.startswith("meshkit-handler-busysync")
                                   for t in threads), threads
    finally:
        release.set()
        await srv.drain()
        await reg.close()


async def test_consul_heartbeat_of_a_busy_server_survives_an_agent_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Load must not deregister an instance that is merely busy. A server registered in
    Consul by host name (``consul://consul:8500`` in ``deploy/k8s``; ``localhost`` here)
    whose plain-function handlers are all blocked loses its heartbeat connection (the
    agent restarts, keeping its state): the keeper's next pass connects again, and
    aiohttp resolves the agent's name with ``loop.getaddrinfo``, in the loop's default
    executor. The handlers ran there too: the lookup waited behind them, every pass
    timed out and the TTL check went critical (``?passing`` watches dropped the
    instance; the agent reaps it after ``deregister_critical_after_s``), although the
    process was alive, serving and able to reach the agent. Now the handlers run on the
    server's own threads. aiohttp's DNS cache (10 s) is turned off here, as it will have
    lapsed by the time a long-lived server's agent restarts. A control without the load
    (the same restart) stays passing."""
    original_init = aiohttp.TCPConnector.__init__

    def no_dns_cache(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["use_dns_cache"] = False  # stands for the 10 s cache having lapsed
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(aiohttp.TCPConnector, "__init__", no_dns_cache)
    ttl_s = 2.0  # the keeper passes every ttl_s / 3: a restart's gap leaves a wide margin

    async def run(loaded: bool) -> list[str]:
        release = threading.Event()
        async with ConsulDouble() as double:
            opts = ConsulOptions(addr=f"localhost:{double.port}", ttl_s=ttl_s,
                                 request_timeout_s=1.0, backoff_base_s=0.05,
                                 backoff_max_s=0.2)
            reg = ConsulRegistry(opts)
            srv = meshkit.MeshServer(
                "busyconsul", [_blocking_service(release)], registry=reg,
                options=meshkit.ServeOptions(
                    insecure=True, drain_delay_s=0.0, grace_s=0.5, admin=None,
                    instance_id="busyconsul-1",
                    limits=meshkit.ServerLimits(max_concurrent_rpcs=_SLOTS)))
            await srv.start()
            seen: list[str] = []
            try:
                async with contextlib.AsyncExitStack() as stack:
                    if loaded:
                        await stack.enter_async_context(_busy_calls(srv, release))
                    # the agent restarts (keeping its state): pooled connections are gone
                    await double.stop()
                    await asyncio.sleep(0.1)
                    await double.start()
                    end = time.monotonic() + 2 * ttl_s + 0.5
                    while time.monotonic() < end:
                        check = double.service_check("busyconsul-1")
                        seen.append("gone" if check is None else check.status)
                        await asyncio.sleep(0.1)
            finally:
                release.set()
                await srv.drain()
                await reg.close()
            return seen

    # the control and the loaded run side by side (each its own agent and server), as
    # each mostly watches its check for 2 * ttl_s: blocking handlers on the loop's
    # default executor would hold up both runs' name lookups, so the loaded run is
    # judged first
    control, loaded = await asyncio.gather(asyncio.wait_for(run(loaded=False), 15),
                                           asyncio.wait_for(run(loaded=True), 20))
    assert set(loaded) == {"passing"}, (
        "the TTL check of a live, busy server went "
        f"{sorted(set(loaded) - {'passing'})} after an agent restart: its heartbeat's "
        "name lookup waited behind the blocking handlers (the control without load "
        f"beside it: {sorted(set(control))})")
    assert set(control) == {"passing"}, control  # the restart alone costs nothing


async def test_the_drain_does_not_wait_for_a_stuck_handler_and_its_threads_end_after(
    registry: LocalRegistry,
) -> None:
    """The server's handler threads (``ServeOptions.handler_threads``, here 2) are its
    own: a third blocked call waits for one of them (the loop's default executor is not
    used), the drain ends after ``grace_s`` without waiting for the handlers still
    blocked, and once they return their threads end (nothing is left queued on them)."""
    release = threading.Event()
    threads: set[str] = set()
    srv = meshkit.MeshServer(
        "stuck", [_blocking_service(release, threads)], registry=registry,
        options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0, grace_s=0.3,
                                     admin=None, handler_threads=2))
    await srv.start()

    def alive() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("meshkit-handler-stuck")]

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            block: Any = ch.unary_unary("/t.Busy/Block")
            calls = [asyncio.ensure_future(block(b"x", timeout=20)) for _ in range(3)]
            await until(lambda: len(threads) == 2, timeout_s=5, what="two handlers running")
            await asyncio.sleep(0.2)
            assert len(threads) == 2 and len(alive()) == 2  # the third waits for a thread
            t0 = time.monotonic()
            await asyncio.wait_for(srv.drain(), 5)
            assert time.monotonic() - t0 < 3.0  # grace_s, not the handlers' 30 s
            ended = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
            assert all(isinstance(e, grpc.aio.AioRpcError) for e in ended), ended
        release.set()
        await until(lambda: not alive(), timeout_s=5, what="the handler threads to end")
        assert len(threads) == 2  # the queued call never ran
    finally:
        release.set()
        await srv.drain()


def test_bad_handler_threads_are_refused_quoting_the_value() -> None:
    """``ServeOptions.handler_threads`` is a thread count (>= 1) or ``None`` (Python's
    default: ``min(32, cpus + 4)``)."""
    assert meshkit.ServeOptions(insecure=True).handler_threads is None
    assert meshkit.ServeOptions(insecure=True, handler_threads=64).handler_threads == 64
    for bad in (0, -1, 2.0, True, "8"):
        with pytest.raises(meshkit.ConfigError, match=f"handler_threads.*{bad!r}"):
            meshkit.ServeOptions(insecure=True, handler_threads=bad)  # type: ignore[arg-type]
