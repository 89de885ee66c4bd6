"""A unary-request call (unary or server-streaming method) that sends some other number
of request messages than one, against a meshkit server, whose request gate reads every
unary request itself (``RequestGate``).

gRPC's status code table (grpc/grpc doc/statuscodes.md): "Request cardinality violation
(method requires exactly one request but client sent some other number of requests) |
UNIMPLEMENTED | Server". The client here is a plain grpc.aio channel calling the echo
service's unary methods with a streaming stub (a proto that changed on one side)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.errors import ConfigError
from tests.conftest import EchoFactory
from tests.support.echo import method
from tests.support.wait import until


async def _requests(*items: bytes, hold_s: float = 0.0) -> AsyncIterator[bytes]:
    """``items``, then the stream stays open ``hold_s`` before its half-close."""
    for item in items:
        yield item
    if hold_s:
        await asyncio.sleep(hold_s)


async def _call(port: int, kind: str, name: str, requests: AsyncIterator[bytes],
                timeout_s: float = 10.0) -> tuple[grpc.StatusCode, str, list[bytes]]:
    """Call ``name`` of the echo service on ``port`` with a ``kind`` (``stream_unary`` or
    ``stream_stream``) stub: ``(code, details, responses)``."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        got: list[bytes] = []
        try:
            if kind == "stream_unary":
                upload: Any = ch.stream_unary(method(name))
                got.append(await upload(requests, timeout=timeout_s))
            else:
                bidi: Any = ch.stream_stream(method(name))
                call: Any = bidi(requests, timeout=timeout_s)
                async for item in call:
                    got.append(item)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or "", got
        return grpc.StatusCode.OK, "", got


CHECKED = {"limits": meshkit.ServerLimits(check_request_count=True)}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("kind", "name", "reqs", "checked", "details"), [
    ("stream_unary", "Unary", [b"a", b"b"], True, "more than one request message"),
    ("stream_stream", "ServerStream", [b"2", b"3"], True, "more than one request message"),
    ("stream_unary", "Unary", [b"a", b"b", b"c"], True, "more than one request message"),
    ("stream_unary", "Unary", [], False, "request message missing"),
    ("stream_stream", "ServerStream", [], False, "request message missing"),
    ("stream_unary", "Unary", [], True, "request message missing"),
], ids=["unary-two", "server-stream-two", "unary-three", "unary-none", "server-stream-none",
        "unary-none-checked"])
async def test_a_request_cardinality_violation_is_refused_unimplemented(
    echo_servers: EchoFactory, kind: str, name: str, reqs: list[bytes], checked: bool,
    details: str,
) -> None:
    """No request at all was refused ``INVALID_ARGUMENT`` "request message missing" (a
    code the table says the library never generates): now ``UNIMPLEMENTED``, always. With
    ``ServerLimits(check_request_count=True)``, two requests to a unary method (which ran
    the handler on the first, dropped the second and answered ``OK``: the client's data
    silently lost) and two to a server-streaming method (answered for the first only,
    ``OK``) are refused ``UNIMPLEMENTED`` too, before the handler ran (it never sees a call
    it cannot serve whole, as in grpc-java and grpc-js, which run a unary handler at the
    half-close)."""
    served: list[str] = []
    srv = await echo_servers("e1", served=served, **(CHECKED if checked else {}))
    code, text, got = await _call(srv.port, kind, name, _requests(*reqs))
    assert (code, got) == (grpc.StatusCode.UNIMPLEMENTED, []), (code, text, got)
    assert text.startswith(details) and "the method takes exactly one" in text, text
    assert served == []  # the handler never ran
    # the server goes on serving well-formed calls
    ok = await _call(srv.port, "stream_unary", "Unary", _requests(b"x"))
    assert ok == (grpc.StatusCode.OK, "", [b"e1|x"])
    gate = srv.gate
    assert gate is not None
    # the server gives a call's slot back once its status is sent: the client may have
    # its answer a moment before
    await until(lambda: gate.active == 0 and gate.slots == 0, timeout_s=5,
                what="the slots given back")


@pytest.mark.timeout(60)
async def test_without_the_check_a_second_request_is_not_read(
    echo_servers: EchoFactory,
) -> None:
    """The default (``check_request_count=False``): the gate reads one message per
    unary-request call, as grpc.aio does; a second is never read and the call is served
    from the first, ``OK`` (what grpc.aio answers; the check costs every call a read)."""
    srv = await echo_servers("e1")
    got = await _call(srv.port, "stream_unary", "Unary", _requests(b"a", b"b"))
    assert got == (grpc.StatusCode.OK, "", [b"e1|a"])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("checked", [False, True], ids=["default", "checked"])
async def test_one_request_from_a_streaming_stub_is_served(
    echo_servers: EchoFactory, checked: bool,
) -> None:
    """Exactly one request, from a streaming stub that half-closes a moment after its
    message (not with it, as a unary client does), is served as usual (with the check,
    once the request stream is closed); so is a unary call, and a health check."""
    served: list[str] = []
    srv = await echo_servers("e1", served=served, **(CHECKED if checked else {}))
    got = await _call(srv.port, "stream_unary", "Unary", _requests(b"a", hold_s=0.2))
    assert got == (grpc.StatusCode.OK, "", [b"e1|a"])
    got = await _call(srv.port, "stream_stream", "ServerStream", _requests(b"2", hold_s=0.2))
    assert got == (grpc.StatusCode.OK, "", [b"e1|0", b"e1|1"])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        unary: Any = ch.unary_unary(method("Unary"))
        assert await unary(b"u", timeout=10) == b"e1|u"
        health: Any = ch.unary_unary("/grpc.health.v1.Health/Check")
        assert await health(b"", timeout=10) == b"\x08\x01"  # SERVING
    assert served == ["Unary", "Unary"]


@pytest.mark.timeout(60)
async def test_two_health_check_requests_are_refused_with_the_check(
    echo_servers: EchoFactory,
) -> None:
    """The health service's ``Check`` (a reserved place, read without a permit) is
    checked as any unary method."""
    srv = await echo_servers("e1", **CHECKED)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        check: Any = ch.stream_unary("/grpc.health.v1.Health/Check")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await check(_requests(b"", b""), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED, info.value
    gate = srv.gate
    assert gate is not None
    # counted, and the slot given back, once the refusal is sent: the client may have it
    # a moment before (a loaded clean-clone CI run read the gate too early)
    await until(lambda: gate.cardinality == 1 and gate.slots == 0, timeout_s=5,
                what="the refusal counted and its slot given back")


@pytest.mark.timeout(60)
async def test_with_the_check_a_request_stream_left_open_ends_in_time(
    echo_servers: EchoFactory,
) -> None:
    """With the check, a call whose client sends its one message and keeps the request
    stream open (never half-closes) waits for the half-close as for its request, no
    longer than ``first_message_timeout_s``: ``CANCELLED`` "request did not arrive in
    time", its slot given back, the handler never run."""
    served: list[str] = []
    limits = meshkit.ServerLimits(check_request_count=True, first_message_timeout_s=0.5)
    srv = await echo_servers("e1", served=served, limits=limits)
    code, text, _ = await _call(srv.port, "stream_unary", "Unary",
                                _requests(b"a", hold_s=30), timeout_s=20)
    assert (code, text) == (grpc.StatusCode.CANCELLED, "request did not arrive in time")
    assert served == []
    gate = srv.gate
    assert gate is not None and gate.timed_out == 1
    await until(lambda: gate.slots == 0, timeout_s=5, what="the slot given back")


def test_the_check_needs_the_gate() -> None:
    """``check_request_count`` is a bool, and needs the gate that reads the requests."""
    with pytest.raises(ConfigError, match="read_requests=False"):
        meshkit.ServerLimits(check_request_count=True, read_requests=False)
    with pytest.raises(ConfigError, match=r"check_request_count.*'yes'"):
        meshkit.ServerLimits(check_request_count="yes")  # type: ignore[arg-type]
    assert meshkit.ServerLimits().check_request_count is False


@pytest.mark.timeout(60)
@pytest.mark.parametrize("requests", [[], [b"a", b"b"]], ids=["none", "two"])
async def test_a_request_cardinality_refusal_is_seen_by_telemetry(
    tmp_path: Any, requests: list[bytes],
) -> None:
    """README: ``meshkit_server_gate_refusals_total`` counts the calls "refused by the
    request gate before any code of the call ran (so not in
    ``grpc_server_handled_total``)", and the cardinality refusal is one of them. A call
    with no request message, or two with the check on (a proto that differs between the
    two sides: every call of that method fails), is counted in the gate's
    :attr:`~meshkit._limits.RequestGate.cardinality` (reason ``cardinality``); it was
    counted nowhere (review of 7214bd1), so an operator's dashboards saw no call at
    all."""
    from prometheus_client import CollectorRegistry

    from meshkit.discovery import LocalOptions, LocalRegistry
    from meshkit.observability import TelemetryOptions
    from tests.support.echo import add_echo

    prom = CollectorRegistry()
    reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=5, poll_interval_s=0.05))
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=reg, options=meshkit.ServeOptions(
        insecure=True, drain_delay_s=0.0, grace_s=1.0, admin=None,
        limits=meshkit.ServerLimits(check_request_count=True),
        telemetry=TelemetryOptions(registry=prom, tracing=False)))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ch.stream_unary(method("Unary"))(iter(requests), timeout=5)
            assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
        gate = srv.gate
        assert gate is not None
        # counted once the refusal is sent: the client may read it first (a loaded
        # clean-clone run read 0)
        await until(lambda: gate.cardinality >= 1, timeout_s=5, what="the refusal counted")
        seen = {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in prom.collect() for s in fam.samples
                if s.name in ("grpc_server_handled_total",
                              "meshkit_server_gate_refusals_total") and s.value}
        counts = (gate.cardinality, gate.shed, gate.timed_out, gate.evicted)
        stats = srv.stats()
    finally:
        await srv.drain()
        await reg.close()
    assert counts == (1, 0, 0, 0), counts
    assert stats.gate_cardinality == 1 and stats.as_dict()["gate_cardinality"] == 1, stats
    # in the gate's metric, not in grpc_server_handled_total (the gate refuses before
    # telemetry, by design)
    assert seen == {("meshkit_server_gate_refusals_total",
                     (("reason", "cardinality"), ("service", "echo"))): 1.0}, seen
