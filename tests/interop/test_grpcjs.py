"""Interop with a gRPC implementation nobody here wrote: @grpc/grpc-js (Node), both ways.

A grpc-js client (``grpcjs_client.js``) calls meshkit servers: every call kind, status
codes with their details and trailers, deadlines, cancellation, compression, a large
message, mTLS with mesh-issued certificates, and request cardinality violations. A meshkit
channel calls a grpc-js server (``grpcjs_server.js``): every call kind, a status, metadata
and the deadline it carries.

Needs ``node`` and @grpc/grpc-js in ``.cache/grpcjs`` under the repository (or the
directory ``MESHKIT_GRPCJS_DIR`` names), installed by ``bash scripts/install-grpcjs.sh``
(pinned; a no-op once installed): a missing one skips, and fails under ``CI=true``. Every
node process is killed when its test ends (each run is bounded: 20 s for a client, the
server's life for a server)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.auth import TLSOptions, init_ca_dir, issue_into_dir
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from tests.support.echo import mesh_echo, method
from tests.support.skips import skip_or_fail
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

_HERE = Path(__file__).resolve().parent
JS_DIR = Path(os.environ.get("MESHKIT_GRPCJS_DIR") or _HERE.parents[1] / ".cache" / "grpcjs")

# grpc status codes as numbers (grpc-js reports numbers)
OK, CANCELLED, DEADLINE_EXCEEDED, FAILED_PRECONDITION = 0, 1, 4, 9
UNIMPLEMENTED, UNAVAILABLE = 12, 14


def _node() -> tuple[str, dict[str, str]]:
    """The node binary and an environment in which it finds @grpc/grpc-js; skips the
    test when either is missing (fails it under ``CI=true``)."""
    node = shutil.which("node")
    if node is None:
        skip_or_fail("node is not installed (Debian: nodejs; the grpc-js interop tests need "
                     "it and npm)")
    modules = JS_DIR / "node_modules"
    if not (modules / "@grpc" / "grpc-js" / "package.json").is_file():
        skip_or_fail(f"@grpc/grpc-js is not installed in {JS_DIR}: run "
                     "bash scripts/install-grpcjs.sh")
    assert node is not None
    return node, {**os.environ, "NODE_PATH": str(modules)}


async def run_js(spec: dict[str, Any], timeout_s: float = 20.0) -> list[dict[str, Any]]:
    """Run the grpc-js client with ``spec`` (see ``grpcjs_client.js``): its result lines,
    one per op. Fails the test when it crashes or ``timeout_s`` passes (then it is
    killed, as it is when the test is cancelled)."""
    node, env = _node()
    proc = await asyncio.create_subprocess_exec(
        node, str(_HERE / "grpcjs_client.js"), json.dumps(spec), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = [json.loads(x) for x in out.decode().splitlines() if x.startswith("{")]
    assert proc.returncode == 0 and len(lines) == len(spec["ops"]), (
        proc.returncode, lines, err.decode()[-2000:])
    return lines


@contextlib.asynccontextmanager
async def js_server(tmp_path: Path) -> AsyncIterator[int]:
    """A running grpc-js server (``grpcjs_server.js``) on loopback: its port. Killed on the
    way out."""
    node, env = _node()
    with (tmp_path / "grpcjs_server.err").open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            node, str(_HERE / "grpcjs_server.js"), env=env, stdout=asyncio.subprocess.PIPE,
            stderr=err)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        assert line.startswith("PORT "), (line, (tmp_path / "grpcjs_server.err").read_text())
        yield int(line.split()[1])
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def _registry(tmp_path: Path) -> LocalRegistry:
    return LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=30.0, poll_interval_s=0.05))


def _op(kind: str, name: str, **fields: Any) -> dict[str, Any]:
    """One op of the grpc-js client on the echo service's ``name``, 10 s deadline."""
    return {"kind": kind, "method": method(name), "timeoutMs": 10_000, **fields}


def _status(got: dict[str, Any]) -> tuple[int, str, list[str]]:
    return got["code"], got["details"], got["responses"]


# --- grpc-js client -> meshkit server ---------------------------------------------------


async def test_a_grpcjs_client_makes_every_kind_of_call(tmp_path: Path) -> None:
    """Unary, server-streaming, client-streaming and bidi calls from grpc-js are served;
    a status the handler sets comes with its details and trailers; an unknown method is
    ``UNIMPLEMENTED``; a call past its deadline ends ``DEADLINE_EXCEEDED``; a 1 MiB
    request and response pass; the server's call slots are all given back."""
    async with mesh_echo("echo", "e1", _registry(tmp_path), telemetry=None) as srv:
        got = await run_js({"target": f"127.0.0.1:{srv.port}", "ops": [
            _op("unary", "Unary", req="a"),
            _op("sstream", "ServerStream", req="3"),
            _op("cstream", "ClientStream", reqs=["a", "b", "c"]),
            _op("bidi", "Bidi", reqs=["x", "y"]),
            _op("cstream", "ClientStream", reqs=[]),
            _op("unary", "Fail", req="FAILED_PRECONDITION:7"),
            _op("unary", "Nope", req="a"),
            _op("unary", "Sleep", req="5000", timeoutMs=300),
            _op("unary", "Unary", reqBytes=1 << 20),
        ]})
        assert [_status(g) for g in got[:5]] == [
            (OK, "", ["e1|a"]),
            (OK, "", ["e1|0", "e1|1", "e1|2"]),
            (OK, "", ["e1|a,b,c"]),
            (OK, "", ["e1|x", "e1|y"]),
            (OK, "", ["e1|"]),
        ]
        fail, nope, late, large = got[5:]
        assert _status(fail) == (FAILED_PRECONDITION, "asked to fail on e1", [])
        assert fail["trailers"].get("retry-after") == "7", fail
        assert (nope["code"], nope["responses"]) == (UNIMPLEMENTED, []), nope
        assert (late["code"], late["responses"]) == (DEADLINE_EXCEEDED, []), late
        assert large["code"] == OK, large
        assert large["responses"] == ["e1|" + "a" * (1 << 20)], len(large["responses"])
        gate = srv.gate
        assert gate is not None
        await until(lambda: gate.slots == 0 and gate.active == 0, timeout_s=10,
                    what="the gate's slots given back")


async def test_a_grpcjs_client_cancelling_frees_the_call(tmp_path: Path) -> None:
    """A grpc-js client cancels a unary call the handler is still serving: the client sees
    ``CANCELLED``, and the server gives the call's slot back (no slot held for a caller
    that left); the next call is served."""
    async with mesh_echo("echo", "e1", _registry(tmp_path), telemetry=None) as srv:
        got = await run_js({"target": f"127.0.0.1:{srv.port}", "ops": [
            _op("unary", "Sleep", req="5000", cancelAfterMs=300),
            _op("unary", "Unary", req="after"),
        ]})
        assert [_status(g)[::2] for g in got] == [(CANCELLED, []), (OK, ["e1|after"])]
        gate = srv.gate
        assert gate is not None
        await until(lambda: gate.slots == 0 and gate.active == 0, timeout_s=10,
                    what="the cancelled call's slot given back")


async def test_a_grpcjs_client_compressing_its_messages_is_served(tmp_path: Path) -> None:
    """A grpc-js channel that compresses every message (gzip, and deflate) is answered;
    grpc core decompresses them before meshkit's request gate reads them."""
    async with mesh_echo("echo", "e1", _registry(tmp_path), telemetry=None) as srv:
        for algorithm in (2, 1):  # grpc-js: 1 deflate, 2 gzip
            got = await run_js({
                "target": f"127.0.0.1:{srv.port}",
                "options": {"grpc.default_compression_algorithm": algorithm},
                "ops": [_op("unary", "Unary", reqBytes=100_000),
                        _op("bidi", "Bidi", reqs=["x" * 5000, "y"])]})
            ok = [(OK, "", ["e1|" + "a" * 100_000]), (OK, "", ["e1|" + "x" * 5000, "e1|y"])]
            assert [_status(g) for g in got] == ok, (algorithm, [g["code"] for g in got])


async def test_a_grpcjs_client_with_a_mesh_certificate_is_served_over_mtls(
    tmp_path: Path,
) -> None:
    """A meshkit server with mesh mTLS serves a grpc-js client that presents a workload
    certificate of the same mesh CA (Node's TLS stack against grpc core's), and refuses
    one that presents none."""
    pki = tmp_path / "pki"
    init_ca_dir(pki, trust_domain="meshkit.test", ttl_days=2)
    own = issue_into_dir(pki, "echo", ttl_h=1.0, dns=("localhost",), ips=("127.0.0.1",))
    js = issue_into_dir(pki, "jsclient", ttl_h=1.0, dns=("localhost",), ips=("127.0.0.1",))
    tls = TLSOptions(ca_file=own.ca_file, cert_file=own.cert_file, key_file=own.key_file)
    async with mesh_echo("echo", "e1", _registry(tmp_path), telemetry=None, insecure=False,
                         tls=tls) as srv:
        target = f"127.0.0.1:{srv.port}"
        [good] = await run_js({"target": target, "tls": {
            "ca": str(js.ca_file), "key": str(js.key_file), "cert": str(js.cert_file)},
            "ops": [_op("unary", "Unary", req="a")]})
        [anonymous] = await run_js({"target": target, "tls": {"ca": str(js.ca_file)},
                                    "ops": [_op("unary", "Unary", req="a", timeoutMs=5000)]})
    assert _status(good) == (OK, "", ["e1|a"])
    assert (anonymous["code"], anonymous["responses"]) == (UNAVAILABLE, []), anonymous


async def test_a_request_cardinality_violation_from_grpcjs_is_unimplemented(
    tmp_path: Path,
) -> None:
    """A grpc-js client whose stub streams requests to a method meshkit serves as unary
    (a proto changed on one side). gRPC's status code table (grpc/grpc
    doc/statuscodes.md): "Request cardinality violation (method requires exactly one
    request but client sent some other number of requests) | UNIMPLEMENTED | Server",
    as a grpc-js server answers. No request at all was refused ``INVALID_ARGUMENT``
    "request message missing" (a code "never generated by the library"); with
    ``ServerLimits(check_request_count=True)`` a second request, which was dropped with
    the call answered ``OK`` (a server-streaming method: answered for the first only),
    is refused too, before the handler runs."""
    limits = meshkit.ServerLimits(check_request_count=True)
    async with mesh_echo("echo", "e1", _registry(tmp_path), telemetry=None,
                         limits=limits) as srv:
        got = await run_js({"target": f"127.0.0.1:{srv.port}", "ops": [
            _op("cstream", "Unary", reqs=["a", "b"]),
            _op("bidi", "ServerStream", reqs=["2", "3"]),
            _op("cstream", "Unary", reqs=[]),
            _op("bidi", "ServerStream", reqs=[]),
            _op("cstream", "Unary", reqs=["a"]),  # one request: served
            _op("bidi", "ServerStream", reqs=["2"]),
        ]})
    two = "more than one request message: the method takes exactly one"
    none = "request message missing: the method takes exactly one"
    assert [_status(g) for g in got] == [
        (UNIMPLEMENTED, two, []),
        (UNIMPLEMENTED, two, []),
        (UNIMPLEMENTED, none, []),
        (UNIMPLEMENTED, none, []),
        (OK, "", ["e1|a"]),
        (OK, "", ["e1|0", "e1|1"]),
    ]


# --- meshkit client -> grpc-js server ---------------------------------------------------


async def _requests(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def test_a_meshkit_channel_makes_every_kind_of_call_to_a_grpcjs_server(
    tmp_path: Path,
) -> None:
    """A :func:`meshkit.dial` channel (plaintext) to a grpc-js server found in the
    registry: every call kind is answered; a status comes with its code and details; a
    request header reaches the server (echoed back as a trailer); the call's deadline
    reaches it (``grpc-timeout``), no longer than the caller's timeout."""
    reg = _registry(tmp_path)
    try:
        async with js_server(tmp_path) as port:
            await reg.register(Instance(service="js", instance_id="j1", host="127.0.0.1",
                                        port=port))
            opts = meshkit.DialOptions(insecure=True, telemetry=None)
            async with meshkit.dial("js", registry=reg, options=opts) as ch:
                unary: Any = ch.unary_unary("/interop.Js/Unary")
                assert await unary(b"a", timeout=10) == b"js|a"
                stream: Any = ch.unary_stream("/interop.Js/ServerStream")
                assert [m async for m in stream(b"3", timeout=10)] == [
                    b"js|0", b"js|1", b"js|2"]
                upload: Any = ch.stream_unary("/interop.Js/ClientStream")
                assert await upload(_requests(b"a", b"b"), timeout=10) == b"js|a,b"
                bidi: Any = ch.stream_stream("/interop.Js/Bidi")
                assert [m async for m in bidi(_requests(b"x", b"y"), timeout=10)] == [
                    b"js|x", b"js|y"]

                call = unary(b"m", timeout=10, metadata=(("x-echo", "hello"),))
                assert await call == b"js|m"
                assert ("x-echo", "hello") in tuple(await call.trailing_metadata())

                fail: Any = ch.unary_unary("/interop.Js/Fail")
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await fail(b"%d" % FAILED_PRECONDITION, timeout=10)
                assert (info.value.code(), info.value.details()) == (
                    grpc.StatusCode.FAILED_PRECONDITION, "asked to fail")

                # grpc core rounds the grpc-timeout header up (to whole ms, or a coarser
                # unit), and the two clocks are read apart: a few ms over the timeout
                deadline: Any = ch.unary_unary("/interop.Js/Deadline")
                left_ms = int(await deadline(b"", timeout=5))
                assert 0 < left_ms <= 5100, left_ms
    finally:
        await reg.close()
