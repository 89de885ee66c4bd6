"""meshkit's built-in services and call ends as @grpc/grpc-js (Node) sees them (hunt 44,
area interop; no fault found in these, kept as regression cover).

A grpc-js client against a meshkit server: the health service's ``Check`` (the server, a
service, an unknown one: ``NOT_FOUND``), ``List`` and ``Watch`` of an unknown service
(``SERVICE_UNKNOWN``, the stream kept open, grpc/grpc doc/health-checking.md); server
reflection's ``list_services`` under ``grpc.reflection.v1`` and ``v1alpha``; streams of
each kind cancelled by the client mid-way (every call slot given back); status details
outside ASCII both ways (``grpc-message`` is percent-encoded UTF-8, gRPC over HTTP/2
spec, PROTOCOL-HTTP2.md "Responses"). Node and @grpc/grpc-js as ``test_grpcjs.py`` needs
them; every node process is killed when its test ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance
from tests.interop.test_grpcjs import _HERE, _node, _op, _registry, run_js
from tests.interop.test_hunt37_b1_grpcjs_features import _serving
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

OK, CANCELLED, DEADLINE_EXCEEDED, NOT_FOUND, FAILED_PRECONDITION = 0, 1, 4, 5, 9

HEALTH = "/grpc.health.v1.Health/"
# HealthCheckResponse{status} serialized: SERVING (1), SERVICE_UNKNOWN (3)
SERVING, SERVICE_UNKNOWN = "\x08\x01", "\x08\x03"
# ServerReflectionRequest{list_services: ""} (field 7, a string), serialized
LIST_SERVICES = "\x3a\x00"

# status details outside ASCII, with what grpc-message's percent-encoding must keep apart
DETAILS = ["naïve ✓ 100% done", "a%20b stays as written", "line one\nline two", "日本語"]


def _health(name: str, req: str, kind: str = "unary", timeout_ms: int = 5000) -> dict[str, Any]:
    return {"kind": kind, "method": HEALTH + name, "req": req, "timeoutMs": timeout_ms}


def _reflection(version: str) -> dict[str, Any]:
    return {"kind": "bidi", "method": f"/grpc.reflection.{version}.ServerReflection/"
            "ServerReflectionInfo", "reqs": [LIST_SERVICES], "timeoutMs": 5000}


async def test_grpcjs_reads_health_check_list_and_watch(tmp_path: Path) -> None:
    """``Check`` of the server ("") and of a served service is ``SERVING``, of an unknown
    one ``NOT_FOUND``; ``List`` names every service ``SERVING``; ``Watch`` of an unknown
    service answers ``SERVICE_UNKNOWN`` and keeps the stream open (ended by the caller's
    deadline, as the health protocol says)."""
    async with _serving(tmp_path) as srv:
        check, echo, unknown, listed, watch = await run_js({
            "target": f"127.0.0.1:{srv.port}", "ops": [
                _health("Check", ""),
                _health("Check", "\x0a\x04echo"),
                _health("Check", "\x0a\x07unknown"),
                _health("List", ""),
                _health("Watch", "\x0a\x07unknown", kind="sstream", timeout_ms=1000)]})
    assert (check["code"], check["responses"]) == (OK, [SERVING]), check
    assert (echo["code"], echo["responses"]) == (OK, [SERVING]), echo
    assert (unknown["code"], unknown["responses"]) == (NOT_FOUND, []), unknown
    assert listed["code"] == OK, listed
    [body] = listed["responses"]
    for service in ("echo", "meshkit.test.Echo", "interop.Probe"):
        # HealthListResponse.statuses: map entry {key: service, value: {status: SERVING}}
        assert f"\x0a{chr(len(service))}{service}\x12\x02{SERVING}" in body, (service, body)
    assert (watch["code"], watch["responses"]) == (DEADLINE_EXCEEDED, [SERVICE_UNKNOWN]), watch


@pytest.mark.parametrize("version", ["v1", "v1alpha"], ids=["v1", "v1alpha"])
async def test_grpcjs_lists_services_through_reflection(tmp_path: Path, version: str) -> None:
    """A grpc-js reflection stream (``list_services``) under ``version`` is answered with
    the services served, health's and reflection's own (v1alpha: grpcio-reflection has
    no descriptor of v1 to describe it by, so v1 is served but not listed)."""
    async with _serving(tmp_path) as srv:
        [got] = await run_js({"target": f"127.0.0.1:{srv.port}",
                              "ops": [_reflection(version)]})
    assert got["code"] == OK, got
    [body] = got["responses"]
    for service in ("meshkit.test.Echo", "interop.Probe", "grpc.health.v1.Health",
                    "grpc.reflection.v1alpha.ServerReflection"):
        # ListServiceResponse.service: ServiceResponse {name: service}
        assert f"\x0a{chr(len(service))}{service}" in body, (service, body)


async def test_grpcjs_streams_cancelled_mid_way_give_their_slots_back(tmp_path: Path) -> None:
    """A bidi stream and a client stream held open after their first message, and a
    server stream of 100,000 messages, each cancelled by the grpc-js client mid-way: each
    ends ``CANCELLED`` (the bidi having had its first answer), the server gives every
    call slot back, and the next call is served."""
    async with _serving(tmp_path) as srv:
        target = f"127.0.0.1:{srv.port}"
        bidi, upload, download = await run_js({"target": target, "concurrent": True, "ops": [
            _op("bidi", "Bidi", reqs=["a"], holdOpen=True, cancelAfterMs=500),
            _op("cstream", "ClientStream", reqs=["a"], holdOpen=True, cancelAfterMs=500),
            _op("sstream", "ServerStream", req="100000", cancelAfterMs=30)]})
        gate = srv.gate
        assert gate is not None
        await until(lambda: gate.slots == 0 and gate.active == 0, timeout_s=10,
                    what="the cancelled streams' slots given back")
        [after] = await run_js({"target": target, "ops": [_op("unary", "Unary", req="n")]})
    assert (bidi["code"], bidi["responses"]) == (CANCELLED, ["e1|a"]), bidi
    assert (upload["code"], upload["responses"]) == (CANCELLED, []), upload
    assert download["code"] == CANCELLED and len(download["responses"]) < 100_000, (
        download["code"], len(download["responses"]))
    assert (after["code"], after["responses"]) == (OK, ["e1|n"]), after


def _add_details(_servicer: Any, server: Any) -> None:
    """``interop.Hunt44/Fail``: the request (UTF-8 text) is the details of the
    ``FAILED_PRECONDITION`` it ends with."""

    async def fail(request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, request.decode())
        raise AssertionError("abort returned")  # pragma: no cover

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "interop.Hunt44", {"Fail": grpc.unary_unary_rpc_method_handler(fail)}),))


async def test_grpcjs_reads_a_meshkit_servers_details_outside_ascii(tmp_path: Path) -> None:
    """Details a meshkit handler aborts with (accents, a symbol, ``%`` as written, a line
    break, CJK) reach a grpc-js client as written."""
    registry = _registry(tmp_path)
    server = meshkit.MeshServer("details", [(_add_details, None)], registry=registry,
                                options=meshkit.ServeOptions(insecure=True, telemetry=None,
                                                             drain_delay_s=0.0, grace_s=1.0))
    try:
        await server.start()
        got = await run_js({"target": f"127.0.0.1:{server.port}", "ops": [
            {"kind": "unary", "method": "/interop.Hunt44/Fail", "timeoutMs": 5000,
             "req": text.encode().decode("latin1")} for text in DETAILS]})
    finally:
        await server.drain()
        await registry.close()
    assert [(g["code"], g["details"]) for g in got] == [
        (FAILED_PRECONDITION, text) for text in DETAILS], got


@contextlib.asynccontextmanager
async def _details_server() -> AsyncIterator[int]:
    """``grpcjs_hunt44_details_server.js`` running: its port. Killed on the way out."""
    node, env = _node()
    proc = await asyncio.create_subprocess_exec(
        node, str(_HERE / "grpcjs_hunt44_details_server.js"), env=env,
        stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        assert line.startswith("PORT "), line
        yield int(line.split()[1])
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_a_meshkit_channel_reads_a_grpcjs_servers_details_outside_ascii(
    tmp_path: Path,
) -> None:
    """Details a grpc-js server ends a call with (the same texts) reach a caller of a
    :func:`meshkit.dial` channel as written, with the server's status code."""
    registry = _registry(tmp_path)
    try:
        async with _details_server() as port:
            await registry.register(Instance(service="js", instance_id="j1",
                                             host="127.0.0.1", port=port))
            opts = meshkit.DialOptions(insecure=True, telemetry=None)
            async with meshkit.dial("js", registry=registry, options=opts) as ch:
                fail: Any = ch.unary_unary("/interop.Details/Fail")
                got = []
                for text in DETAILS:
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await fail(text.encode(), timeout=10)
                    got.append((info.value.code(), info.value.details()))
    finally:
        await registry.close()
    assert got == [(grpc.StatusCode.FAILED_PRECONDITION, text) for text in DETAILS]
