"""meshkit's features as a peer nobody here wrote sees them: @grpc/grpc-js (Node).

A grpc-js client (``grpcjs_client.js``) against a meshkit server with each feature on:
JWT refusals (status and details a grpc-js caller reads), rate limiting (``retry-after``
and ``grpc-retry-pushback-ms`` trailers, and grpc-js' own retry policy waiting out the
pushback, gRFC A6), the deadline a handler sees and propagates, binary metadata both
ways, gzip both ways and the decompressed-size limit, the request gate (a header-only
call, an oversized request), a drain (calls in flight finish, a health ``Watch`` is told
``NOT_SERVING`` and ended ``OK``, a round-robin grpc-js channel over two servers loses no
call), and a client killed mid-call (every call slot given back). A meshkit channel
against a grpc-js server: the server's pushback honoured, ``-1`` not retried, rich-error
trailers passed on, and a grpc-js server shutting down gracefully mid-traffic (no call
lost). Node and @grpc/grpc-js as ``test_grpcjs.py`` needs them; every node process is
killed when its test ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.auth import (
    AuthOptions,
    IssuerOptions,
    JWTVerifier,
    KeySet,
    TLSOptions,
    TokenIssuer,
    VerifierOptions,
    init_ca_dir,
    issue_into_dir,
)
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from meshkit.resilience import RateLimitOptions, RetryOptions, RetryPolicy
from meshkit.resilience._deadline import current_deadline
from tests.interop.test_grpcjs import _HERE, _node, _op, run_js
from tests.support.echo import add_echo
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

# grpc status codes as numbers (grpc-js reports numbers)
OK, CANCELLED, PERMISSION_DENIED, RESOURCE_EXHAUSTED = 0, 1, 7, 8
UNAVAILABLE, UNAUTHENTICATED = 14, 16

PROBE = "interop.Probe"
WATCH = "/grpc.health.v1.Health/Watch"
SERVING, NOT_SERVING = "\x08\x01", "\x08\x02"  # HealthCheckResponse{status}, serialized


def _add_probe(_servicer: Any, server: Any) -> None:
    """``interop.Probe``: ``Remaining`` answers the call's time left as the handler reads
    it (JSON, seconds: ``context.time_remaining()`` and meshkit's propagated deadline);
    ``Meta`` sends response headers ``h-bin`` (bytes 0, 255, 1) and ``h`` and echoes the
    request's ``x-*`` headers as trailers; ``Gz`` answers 100,000 ``z`` gzip-compressed."""

    async def remaining(request: bytes, context: Any) -> bytes:
        deadline = current_deadline()
        return json.dumps({"time_remaining": context.time_remaining(), "propagated": (
            None if deadline is None else deadline - time.monotonic())}).encode()

    async def meta(request: bytes, context: Any) -> bytes:
        await context.send_initial_metadata((("h-bin", b"\x00\xff\x01"), ("h", "v")))
        context.set_trailing_metadata(tuple(
            (k, v) for k, v in context.invocation_metadata() if k.startswith("x-")))
        return b"ok"

    async def gz(request: bytes, context: Any) -> bytes:
        context.set_compression(grpc.Compression.Gzip)
        return b"z" * 100_000

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(PROBE, {
        "Remaining": grpc.unary_unary_rpc_method_handler(remaining),
        "Meta": grpc.unary_unary_rpc_method_handler(meta),
        "Gz": grpc.unary_unary_rpc_method_handler(gz),
    }),))


@contextlib.asynccontextmanager
async def _serving(tmp_path: Path, instance_id: str = "e1",
                   **options: Any) -> AsyncIterator[meshkit.MeshServer]:
    """A started meshkit server of the echo and probe services (plaintext, no telemetry,
    no drain delay unless ``options`` say), drained on the way out."""
    opts: dict[str, Any] = {"insecure": True, "drain_delay_s": 0.0, "grace_s": 2.0,
                            "telemetry": None, "instance_id": instance_id, **options}
    registry = LocalRegistry(LocalOptions(path=tmp_path / f"reg-{instance_id}", ttl_s=15.0))
    srv = meshkit.MeshServer("echo", [add_echo(instance_id), (_add_probe, None)],
                             registry=registry, options=meshkit.ServeOptions(**opts))
    try:
        await srv.start()
        yield srv
    finally:
        await srv.drain()
        await registry.close()


def _probe(name: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "unary", "method": f"/{PROBE}/{name}", "timeoutMs": 10_000, **fields}


def _codes(got: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(g["code"], g["details"]) for g in got]


# --- grpc-js client -> meshkit server ---------------------------------------------------


async def test_grpcjs_reads_the_jwt_refusals(tmp_path: Path) -> None:
    """Every call kind without a valid bearer token is ``UNAUTHENTICATED`` with details
    saying why (missing, expired, audience, scheme), as grpc-js reads them; a valid token
    is served."""
    keys = KeySet.generate()
    verifier = JWTVerifier(VerifierOptions(issuer="https://userd", audience="ecom"), keys)
    issuer = TokenIssuer(keys, IssuerOptions(issuer="https://userd", audience="ecom"))
    past = TokenIssuer(keys, IssuerOptions(issuer="https://userd", audience="ecom", ttl_s=60,
                                           clock=lambda: time.time() - 3600))

    def bearer(token: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token}"}

    async with _serving(tmp_path, auth=AuthOptions(verifier=verifier,
                                                   check_peers=False)) as srv:
        got = await run_js({"target": f"127.0.0.1:{srv.port}", "ops": [
            _op("unary", "Unary", req="a", metadata=bearer(issuer.issue(subject="u1"))),
            _op("unary", "Unary", req="a"),
            _op("unary", "Unary", req="a", metadata=bearer(past.issue(subject="u1"))),
            _op("unary", "Unary", req="a",
                metadata=bearer(issuer.issue(subject="u1", audience="other"))),
            _op("unary", "Unary", req="a", metadata={"authorization": "Basic Zm9vOmJhcg=="}),
            _op("sstream", "ServerStream", req="2"),
            _op("cstream", "ClientStream", reqs=["x"]),
            _op("bidi", "Bidi", reqs=["x"]),
        ]})
    assert got[0]["responses"] == ["e1|a"]
    missing = (UNAUTHENTICATED, "missing bearer token")
    assert _codes(got) == [
        (OK, ""), missing, (UNAUTHENTICATED, "token expired"),
        (UNAUTHENTICATED, "token audience not accepted"),
        (UNAUTHENTICATED, "authorization scheme must be Bearer"), missing, missing, missing]
    assert all(g["responses"] == [] for g in got[1:])


async def test_grpcjs_with_another_workloads_or_another_cas_certificate(
    tmp_path: Path,
) -> None:
    """A mesh mTLS server allowing only ``orderd``: a grpc-js client presenting the mesh
    CA's certificate of another workload is refused ``PERMISSION_DENIED`` naming the
    method (health included); one presenting a certificate of another CA fails the
    handshake (``UNAVAILABLE``)."""
    pki, other = tmp_path / "pki", tmp_path / "other"
    init_ca_dir(pki, trust_domain="meshkit.test", ttl_days=2)
    init_ca_dir(other, trust_domain="meshkit.test", ttl_days=2)
    names: dict[str, Any] = {"ttl_h": 1.0, "dns": ("localhost",), "ips": ("127.0.0.1",)}
    own = issue_into_dir(pki, "echo", **names)
    js = issue_into_dir(pki, "jsclient", **names)
    foreign = issue_into_dir(other, "jsclient", **names)
    tls = TLSOptions(ca_file=own.ca_file, cert_file=own.cert_file, key_file=own.key_file,
                     allowed_peers=("spiffe://meshkit.test/svc/orderd",))
    ops = [_op("unary", "Unary", req="a", timeoutMs=5000),
           {"kind": "unary", "method": "/grpc.health.v1.Health/Check", "req": "",
            "timeoutMs": 5000}]
    async with _serving(tmp_path, insecure=False, tls=tls) as srv:
        target = f"127.0.0.1:{srv.port}"
        other_workload = await run_js({"target": target, "ops": ops, "tls": {
            "ca": str(js.ca_file), "key": str(js.key_file), "cert": str(js.cert_file)}})
        other_ca = await run_js({"target": target, "ops": ops, "tls": {
            "ca": str(js.ca_file), "key": str(foreign.key_file),
            "cert": str(foreign.cert_file)}})
    assert _codes(other_workload) == [
        (PERMISSION_DENIED, "caller is not allowed to call /meshkit.test.Echo/Unary"),
        (PERMISSION_DENIED, "caller is not allowed to call /grpc.health.v1.Health/Check")]
    assert [g["code"] for g in other_ca] == [UNAVAILABLE, UNAVAILABLE], other_ca


async def test_grpcjs_keepalive_at_the_servers_ping_floor_keeps_its_call(
    tmp_path: Path,
) -> None:
    """A grpc-js channel pinging every second (``grpc.keepalive_time_ms``, also without
    calls) on a server whose ``min_ping_interval_s`` is 1 s keeps a 4 s call: no
    ``too_many_pings`` GOAWAY ends it."""
    async with _serving(tmp_path, limits=meshkit.ServerLimits(min_ping_interval_s=1.0)) as srv:
        [got] = await run_js({"target": f"127.0.0.1:{srv.port}",
                              "options": {"grpc.keepalive_time_ms": 1000,
                                          "grpc.keepalive_permit_without_calls": 1},
                              "ops": [_op("unary", "Sleep", req="4000", timeoutMs=20_000)]},
                             timeout_s=30)
    assert (got["code"], got["responses"]) == (OK, ["e1"]), got


async def test_grpcjs_reads_the_rate_limit_pushback(tmp_path: Path) -> None:
    """A refused call of every kind is ``RESOURCE_EXHAUSTED`` with ``retry-after`` (whole
    seconds) and ``grpc-retry-pushback-ms`` (the wait in ms) as grpc-js reads trailers;
    with the call's deadline before the window ends (2 s), the pushback is ``-1``."""
    limits = RateLimitOptions(default_rule="1/minute", strategy="moving-window")
    async with _serving(tmp_path, rate_limit=limits) as srv:
        got = await run_js({"target": f"127.0.0.1:{srv.port}", "ops": [
            _op("unary", "Unary", req="a"),
            _op("unary", "Unary", req="b", timeoutMs=120_000),
            _op("unary", "Unary", req="c", timeoutMs=2000),
            _op("sstream", "ServerStream", req="1"),
            _op("sstream", "ServerStream", req="1", timeoutMs=120_000),
            _op("bidi", "Bidi", reqs=["1"]),
            _op("bidi", "Bidi", reqs=["1"], timeoutMs=120_000),
        ]})
    assert [g["code"] for g in got] == [OK, RESOURCE_EXHAUSTED, RESOURCE_EXHAUSTED, OK,
                                         RESOURCE_EXHAUSTED, OK, RESOURCE_EXHAUSTED]
    for refused in (got[1], got[4], got[6]):
        assert refused["details"].startswith("rate limit exceeded for /meshkit.test.Echo/")
        trailers = refused["trailers"]
        assert 50 <= int(trailers["retry-after"]) <= 60, refused
        assert 50_000 <= int(trailers["grpc-retry-pushback-ms"]) <= 60_000, refused
    assert got[2]["trailers"]["grpc-retry-pushback-ms"] == "-1", got[2]


async def test_grpcjs_retry_policy_waits_out_the_pushback(tmp_path: Path) -> None:
    """A grpc-js channel whose service config retries ``RESOURCE_EXHAUSTED`` (2 attempts,
    10 ms backoff) gets the call refused by a "1/second" rule served on its second
    attempt: grpc-js waited the pushback (an attempt 10 ms later would be refused too)."""
    config = json.dumps({"methodConfig": [{
        "name": [{"service": "meshkit.test.Echo"}],
        "retryPolicy": {"maxAttempts": 2, "initialBackoff": "0.01s", "maxBackoff": "0.01s",
                        "backoffMultiplier": 1,
                        "retryableStatusCodes": ["RESOURCE_EXHAUSTED"]}}]})
    limits = RateLimitOptions(default_rule="1/second", strategy="moving-window")
    async with _serving(tmp_path, rate_limit=limits) as srv:
        first, second = await run_js({
            "target": f"127.0.0.1:{srv.port}", "options": {"grpc.service_config": config},
            "ops": [_op("unary", "Unary", req="a"), _op("unary", "Unary", req="b")]})
    assert (first["code"], first["responses"]) == (OK, ["e1|a"]), first
    assert (second["code"], second["responses"]) == (OK, ["e1|b"]), second
    assert second["headers"].get("grpc-previous-rpc-attempts") == "1", second


async def test_grpcjs_deadline_reaches_the_handler(tmp_path: Path) -> None:
    """A grpc-js deadline arrives as the handler's time left and meshkit's propagated
    deadline, no longer than the caller's; one 31 years away is propagated as one day."""
    async with _serving(tmp_path) as srv:
        got = await run_js({"target": f"127.0.0.1:{srv.port}", "ops": [
            _probe("Remaining", timeoutMs=2000), _probe("Remaining", timeoutMs=10**12)]})
    near, far = (json.loads(g["responses"][0]) for g in got)
    assert 0 < near["time_remaining"] <= 2.05 and 0 < near["propagated"] <= 2.05, near
    assert far["time_remaining"] > 10**8 and 86_000 < far["propagated"] <= 86_400, far


async def test_binary_metadata_both_ways(tmp_path: Path) -> None:
    """``-bin`` metadata from grpc-js (an empty value too) reaches the handler as bytes;
    the handler's ``-bin`` response header and trailers reach grpc-js as sent."""
    async with _serving(tmp_path) as srv:
        [got] = await run_js({"target": f"127.0.0.1:{srv.port}", "ops": [_probe(
            "Meta", metadata={"x-a-bin": "\x00\xff", "x-t": "text", "x-e-bin": ""})]})
    assert (got["code"], got["responses"]) == (OK, ["ok"]), got
    assert got["headers"]["h-bin"] == "\x00\xff\x01" and got["headers"]["h"] == "v", got
    assert {k: got["trailers"].get(k) for k in ("x-a-bin", "x-t", "x-e-bin")} == {
        "x-a-bin": "\x00\xff", "x-t": "text", "x-e-bin": ""}, got


async def test_gzip_responses_and_the_decompressed_size_limit(tmp_path: Path) -> None:
    """grpc-js reads a gzip-compressed response; a gzip request under the size limit
    compressed but over it decompressed (1 MB of ``a``: a compression bomb) is refused
    ``RESOURCE_EXHAUSTED``; one under it decompressed is served."""
    limits = meshkit.ServerLimits(max_receive_message_bytes=10_000)
    async with _serving(tmp_path, limits=limits) as srv:
        [gz] = await run_js({"target": f"127.0.0.1:{srv.port}", "ops": [_probe("Gz")]})
        bomb, fits = await run_js({
            "target": f"127.0.0.1:{srv.port}",
            "options": {"grpc.default_compression_algorithm": 2},  # gzip
            "ops": [_op("unary", "Unary", reqBytes=1_000_000),
                    _op("unary", "Unary", reqBytes=9_000)]})
    assert (gz["code"], gz["responses"]) == (OK, ["z" * 100_000]), gz["code"]
    assert (bomb["code"], bomb["responses"]) == (RESOURCE_EXHAUSTED, []), bomb
    assert (fits["code"], fits["responses"]) == (OK, ["e1|" + "a" * 9_000]), fits["code"]


async def test_request_gate_with_grpcjs(tmp_path: Path) -> None:
    """A grpc-js call of a unary method that sends headers and no message is ended
    ``CANCELLED`` "request did not arrive in time" after ``first_message_timeout_s``; an
    oversized request is ``RESOURCE_EXHAUSTED``, unary or streamed; the slots are all
    given back."""
    limits = meshkit.ServerLimits(first_message_timeout_s=1.0, max_receive_message_bytes=10_000)
    async with _serving(tmp_path, limits=limits) as srv:
        got = await run_js({"target": f"127.0.0.1:{srv.port}", "ops": [
            _op("cstream", "Unary", reqs=[], holdOpen=True, timeoutMs=8000),
            _op("unary", "Unary", reqBytes=20_000),
            _op("cstream", "ClientStream", reqs=["a" * 20_000]),
            _op("unary", "Unary", req="after"),
        ]})
        gate = srv.gate
        assert gate is not None
        await until(lambda: gate.slots == 0 and gate.active == 0, timeout_s=10,
                    what="the gate's slots given back")
    assert [g["code"] for g in got] == [CANCELLED, RESOURCE_EXHAUSTED, RESOURCE_EXHAUSTED,
                                         OK], _codes(got)
    assert got[0]["details"] == "request did not arrive in time"
    assert got[3]["responses"] == ["e1|after"]


async def test_a_drain_with_grpcjs_calls_in_flight(tmp_path: Path) -> None:
    """Draining while grpc-js has a call in flight and a health ``Watch`` open: the call
    is answered ``OK``; the watcher sees ``SERVING``, then ``NOT_SERVING``, and its stream
    ends ``OK``; once stopped, a new call is ``UNAVAILABLE``."""
    async with _serving(tmp_path, grace_s=5.0) as srv:
        target = f"127.0.0.1:{srv.port}"
        calls = asyncio.ensure_future(run_js({"target": target, "concurrent": True, "ops": [
            {"kind": "sstream", "method": WATCH, "req": "", "timeoutMs": 15_000},
            _op("unary", "Sleep", req="2500", delayMs=300)]}))  # the watch open before
        await until(lambda: srv.gate is not None and srv.gate.slots == 1, timeout_s=15,
                    what="the grpc-js call in flight")
        await srv.drain()
        watch, sleep = await calls
        [late] = await run_js({"target": target, "ops": [_op("unary", "Unary", req="x")]})
    assert (sleep["code"], sleep["responses"]) == (OK, ["e1"]), sleep
    assert (watch["code"], watch["responses"]) == (OK, [SERVING, NOT_SERVING]), watch
    assert late["code"] == UNAVAILABLE, late


class _Reached(grpc.aio.ServerInterceptor):
    """Counts the calls of unary methods that reached the server's chain (grpc core
    handed them to Python and the request gate let them in) in :attr:`calls`."""

    def __init__(self) -> None:
        self.calls = 0

    async def intercept_service(self, continuation: Any,
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        async def counted(request: Any, context: Any) -> Any:
            self.calls += 1
            return await inner(request, context)

        return handler._replace(unary_unary=counted)


async def test_a_round_robin_grpcjs_channel_loses_no_call_to_a_drain(tmp_path: Path) -> None:
    """A grpc-js channel balancing round robin over two meshkit servers keeps calling
    (200 calls, one every 8 ms) while one drains: every call that reached the draining
    server is answered, by both before the drain and by the other after; a call that
    reached neither server's code is ``CANCELLED`` (grpc core's end of a call still
    waiting in it as the server stops: see below), and no other status is seen."""
    config = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
    # The 200 calls are sent on a timer, whatever came back: on a loaded box grpc-js
    # sends every call to the first server it has connected to until the other one's
    # handshake ends, and bursts the calls its stalled timers owed, while each 50 ms
    # call takes hundreds of ms; 30 and more in flight at one server were measured, and
    # the request gate's default cap (32) shed the rest "server busy" with no drain at
    # all (3 of 8 runs). That is the gate's overload refusal, not this test's drain: a
    # cap over the 200 calls cannot shed one.
    limits = meshkit.ServerLimits(max_concurrent_rpcs=256)
    reached_a, reached_b = _Reached(), _Reached()
    async with _serving(tmp_path, "a", drain_delay_s=0.3, limits=limits,
                        interceptors=(reached_a,)) as a, \
            _serving(tmp_path, "b", drain_delay_s=0.3, limits=limits,
                     interceptors=(reached_b,)) as b:
        calls = asyncio.ensure_future(run_js({
            "target": f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}",
            "options": {"grpc.service_config": config}, "concurrent": True,
            "ops": [_op("unary", "Sleep", req="50", delayMs=300 + 8 * i) for i in range(200)]},
            timeout_s=40))
        await until(lambda: a.gate is not None and a.gate.slots > 0, timeout_s=15,
                    what="grpc-js calls reaching a")
        await a.drain()
        got = await calls
    answered = {server: sum(1 for g in got if g["code"] == OK and g["responses"] == [server])
                for server in ("a", "b")}
    failed = [(g["code"], g["details"]) for g in got if g["code"] != OK]
    # The drain loses no call it let in: each call that reached a's (or b's) code was
    # answered OK (the stop gives them grace_s).
    assert answered == {"a": reached_a.calls, "b": reached_b.calls}, (answered, failed)
    assert answered["a"] > 0 and answered["b"] > 0, answered
    # A call grpc-js sent to a in the moment of its stop (before grpc-js read the
    # GOAWAY), or one still waiting in grpc core for a's starved poller thread to hand
    # it to Python (grpc.aio takes one call at a time), is ended CANCELLED by grpc core
    # (grpc/grpc#41785; documented in meshkit.server, step 3: the nack refusals that
    # close this window are for mesh clients), as with any grpc.aio server: none of
    # a's code ran (the count above: no call that reached a is among them). Seen in
    # about one idle run of ten; 1 to 22 of the 200 on a loaded box, as many as grpc-js
    # had sent a in that moment, so their number is not bounded here.
    assert all(f == (CANCELLED, "CANCELLED") for f in failed), failed


async def test_a_killed_grpcjs_client_gives_every_slot_back(tmp_path: Path) -> None:
    """A grpc-js process killed with calls of every kind open (header-only and waiting
    ones, open request streams, a long response stream, a sleeping handler): the server
    gives back every call slot and request-stream place, and serves the next caller."""
    node, env = _node()
    async with _serving(tmp_path, limits=meshkit.ServerLimits(check_request_count=True)) as srv:
        spec = {"target": f"127.0.0.1:{srv.port}", "concurrent": True, "ops": [
            _op("bidi", "Bidi", reqs=["a"], holdOpen=True),
            _op("cstream", "ClientStream", reqs=["a"], holdOpen=True),
            _op("cstream", "Unary", reqs=[], holdOpen=True),
            _op("cstream", "Unary", reqs=["a"], holdOpen=True),
            _op("unary", "Sleep", req="20000"),
            _op("sstream", "ServerStream", req="100000000"),
        ]}
        gate = srv.gate
        assert gate is not None
        proc = await asyncio.create_subprocess_exec(
            node, str(_HERE / "grpcjs_client.js"), json.dumps(spec), env=env,
            stdout=asyncio.subprocess.DEVNULL)
        try:
            # slots: the three unary-request calls and the response stream's
            await until(lambda: gate.slots == 4 and gate.streams == 2, timeout_s=15,
                        what="the grpc-js calls open")
        finally:
            proc.kill()
            await proc.wait()
        await until(lambda: gate.slots == 0 and gate.active == 0 and gate.streams == 0,
                    timeout_s=10, what="every slot given back")
        [after] = await run_js({"target": f"127.0.0.1:{srv.port}",
                                "ops": [_op("unary", "Unary", req="next")]})
    assert (after["code"], after["responses"]) == (OK, ["e1|next"]), after


# --- meshkit client -> grpc-js server ---------------------------------------------------


@contextlib.asynccontextmanager
async def _js_servers(n: int) -> AsyncIterator[list[tuple[int, Any]]]:
    """``n`` grpc-js servers (``grpcjs_server.js``): ``(port, process)`` each, a line
    ``SHUTDOWN`` on its stdin shuts it down gracefully. Killed on the way out."""
    node, env = _node()
    procs: list[Any] = []
    try:
        out = []
        for _ in range(n):
            proc = await asyncio.create_subprocess_exec(
                node, str(_HERE / "grpcjs_server.js"), env=env, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE)
            procs.append(proc)
            line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
            assert line.startswith("PORT "), line
            out.append((int(line.split()[1]), proc))
        yield out
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


async def test_a_meshkit_channel_honours_a_grpcjs_servers_pushback(tmp_path: Path) -> None:
    """A grpc-js server's ``grpc-retry-pushback-ms`` reaches meshkit's retry: 700 ms is
    waited before the next attempt, ``-1`` sends none; a rich error's
    ``grpc-status-details-bin`` trailer comes through the channel as the server sent it."""
    registry = LocalRegistry(LocalOptions(path=tmp_path / "reg", poll_interval_s=0.05, ttl_s=15.0))
    retry = RetryOptions(default=RetryPolicy(max_attempts=3, idempotent=True, retryable_codes={
        grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}))
    try:
        async with _js_servers(1) as [(port, _proc)]:
            await registry.register(Instance(service="js", instance_id="j1", host="127.0.0.1",
                                             port=port))
            opts = meshkit.DialOptions(insecure=True, telemetry=None, retry=retry)
            async with meshkit.dial("js", registry=registry, options=opts) as ch:
                flaky: Any = ch.unary_unary("/interop.Js/Flaky")
                started = time.monotonic()
                assert await flaky(b"wait:1:8:700", timeout=10) == b"js|2"
                assert time.monotonic() - started >= 0.65
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await flaky(b"never:1:14:-1", timeout=10)
                assert (refused.value.code(), refused.value.details()) == (
                    grpc.StatusCode.UNAVAILABLE, "flaky")
                assert await flaky(b"never:1:14:-1", timeout=10) == b"js|2"  # one attempt
                fail: Any = ch.unary_unary("/interop.Js/Fail")
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await fail(b"3", timeout=10)
                assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert dict(failed.value.trailing_metadata() or ()).get(
                    "grpc-status-details-bin") == b"\x08\x03\x12\rasked to fail"
    finally:
        await registry.close()


async def test_a_grpcjs_server_shutting_down_loses_no_meshkit_call(tmp_path: Path) -> None:
    """One of two grpc-js servers shuts down gracefully (GOAWAY) while a meshkit channel
    sends 200 calls, one every 10 ms, and is killed after: every call is answered."""
    registry = LocalRegistry(LocalOptions(path=tmp_path / "reg", poll_interval_s=0.05, ttl_s=15.0))
    try:
        async with _js_servers(2) as [(p1, proc1), (p2, _proc2)]:
            for iid, port in (("j1", p1), ("j2", p2)):
                await registry.register(Instance(service="js", instance_id=iid,
                                                 host="127.0.0.1", port=port))
            opts = meshkit.DialOptions(insecure=True, telemetry=None)
            async with meshkit.dial("js", registry=registry, options=opts) as ch:
                unary: Any = ch.unary_unary("/interop.Js/Unary")
                failed: list[Any] = []

                async def call(i: int) -> None:
                    await asyncio.sleep(i * 0.01)
                    try:
                        assert await unary(b"x", timeout=10) == b"js|x"
                    except grpc.aio.AioRpcError as exc:
                        failed.append((i, exc.code(), exc.details()))

                calls = asyncio.gather(*(call(i) for i in range(200)))
                await asyncio.sleep(0.7)
                proc1.stdin.write(b"SHUTDOWN\n")
                await proc1.stdin.drain()
                assert await asyncio.wait_for(proc1.stdout.readline(), 10) == b"STOPPED\n"
                await asyncio.sleep(0.3)
                proc1.kill()
                await asyncio.wait_for(calls, 30)
        assert failed == []
    finally:
        await registry.close()
