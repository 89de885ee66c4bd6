"""The wrong-server case (tests/test_hunt38_c10_wrong_server_unimplemented.py) for streams:
a registry entry outlives its instance and a server of another service takes its address
on a plaintext mesh; that server refuses the service's methods ``UNIMPLEMENTED`` "Method
not found!" (grpc's own refusal: none of the call ran). A unary call refused so is sent on
to another endpoint, which decides the refusing endpoint's outcome; a server stream, an
upload or a bidi stream was reported ``UNIMPLEMENTED`` (no outlier-ejection failure), so
the wrong endpoint was never ejected and went on taking (and failing) its share of the
streams for as long as its entry lived. Now such a refusal, once another endpoint has
answered the method (a stream's first response or ``OK`` end, an upload's response), is
that endpoint's failure (``UNAVAILABLE``): it is ejected and a warning names it; a method
no endpoint serves still ejects nobody."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Sequence
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import structlog

import meshkit
from meshkit.balancer import (
    Done,
    Endpoint,
    EndpointState,
    OutlierOptions,
    RoundRobin,
    noop_done,
)
from meshkit.discovery import Instance, LocalRegistry
from meshkit.resilience import RetryOptions, RetryPolicy
from tests.support.echo import method, method_handlers

pytestmark = pytest.mark.timeout(60)

_KINDS = ["server-stream", "upload", "bidi"]


def _server(service: str) -> grpc.aio.Server:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        service, method_handlers("good")),))
    return server


async def _two(registry: LocalRegistry, first: grpc.aio.Server,
               second: grpc.aio.Server) -> None:
    for name, server in (("good", first), ("wrong", second)):
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await registry.register(Instance(service="echo", instance_id=name,
                                         host="127.0.0.1", port=port))


def _dial(registry: LocalRegistry) -> meshkit.MeshChannel:
    # round robin: every other stream goes to each endpoint, deterministically
    return meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(
        insecure=True, balancer=RoundRobin, retry=None, telemetry=None,
        outlier=OutlierOptions(consecutive_failures=3, base_ejection_s=30)))


async def _request() -> AsyncIterator[bytes]:
    yield b"x"  # (one: see the bidi stream below)


async def _stream(ch: meshkit.MeshChannel, kind: str) -> grpc.StatusCode:
    """One call of ``kind``; its status."""
    try:
        if kind == "server-stream":
            got: Any = [m async for m in ch.unary_stream(method("ServerStream"))(
                b"2", timeout=10)]
            assert got == [b"good|0", b"good|1"]
        elif kind == "upload":
            got = await ch.stream_unary(method("ClientStream"))(_request(), timeout=10)
            assert got == b"good|x"
        else:
            # no request message: grpc.aio (1.85) may end a stream refused while its
            # request iterator still writes INTERNAL "Internal error from Core" in place
            # of the server's status (grpc/grpc#36066), even with one message
            call = ch.stream_stream(method("Bidi"))(timeout=10)
            await call.done_writing()
            assert [m async for m in call] == []
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("kind", _KINDS)
async def test_the_endpoint_refusing_a_stream_another_endpoint_serves_is_ejected(
        registry: LocalRegistry, kind: str) -> None:
    good, wrong = _server("meshkit.test.Echo"), _server("other.Service")
    try:
        await _two(registry, good, wrong)
        async with _dial(registry) as ch:
            await ch.wait_for_endpoints(2, timeout_s=10)
            seen: list[grpc.StatusCode] = []
            with structlog.testing.capture_logs() as logs:
                # its outcomes are reported a moment after each stream ends: up to 30
                for _ in range(30):
                    seen.append(await _stream(ch, kind))
                    stats = {ep.instance_id: ep for ep in ch.stats().endpoints}
                    if stats["wrong"].ejected:
                        break
            assert stats["wrong"].ejected, (seen, stats)
            assert set(seen) <= {grpc.StatusCode.OK, grpc.StatusCode.UNIMPLEMENTED}, seen
            # the first answer of the good endpoint, then three refusals in a row (at
            # most one refusal before it; the reports of one stream may come after the
            # next one's pick)
            assert seen.count(grpc.StatusCode.UNIMPLEMENTED) <= 6, seen
            assert not stats["good"].ejected and stats["good"].failures == 0
            said = [e for e in logs if e["log_level"] == "warning"
                    and e["event"].startswith("endpoint does not serve the method")
                    and e.get("instance_id") == "wrong"]
            assert said, logs
            # every stream now goes to the endpoint that serves the service
            for _ in range(4):
                assert await _stream(ch, kind) is grpc.StatusCode.OK
    finally:
        await good.stop(None)
        await wrong.stop(None)


@pytest.mark.parametrize("kind", _KINDS)
async def test_a_streaming_method_no_endpoint_serves_ejects_nobody(
        registry: LocalRegistry, kind: str) -> None:
    a, b = _server("other.Service"), _server("third.Service")
    try:
        await _two(registry, a, b)
        async with _dial(registry) as ch:
            await ch.wait_for_endpoints(2, timeout_s=10)
            for _ in range(10):
                assert await _stream(ch, kind) is grpc.StatusCode.UNIMPLEMENTED
            stats = ch.stats()
            assert stats.ejections == 0
            assert not any(ep.ejected for ep in stats.endpoints), stats.endpoints
    finally:
        await a.stop(None)
        await b.stop(None)


async def test_an_endpoint_that_no_longer_serves_a_method_is_no_evidence(
        registry: LocalRegistry) -> None:
    """The endpoint that answered a method last refusing it now (its server no longer
    serves it: a rollback) is no proof that the others are wrong: the record is
    forgotten, and the next refusal, by another endpoint, is its own ``UNIMPLEMENTED``."""
    good, wrong = _server("meshkit.test.Echo"), _server("other.Service")
    try:
        await _two(registry, good, wrong)
        async with _dial(registry) as ch:
            await ch.wait_for_endpoints(2, timeout_s=10)
            for _ in range(30):  # the good endpoint's answer recorded (a moment after)
                await _stream(ch, "server-stream")
                if ch._served_by:
                    break
            eps = {ep.key: ep for ep in ch.endpoints()}
            details = SimpleNamespace(method=method("ServerStream"))
            refused = "Method not found!"
            assert ch._served_by == {method("ServerStream"): "good"}
            assert ch._unserved_outcome(eps["wrong"], details, refused) \
                is grpc.StatusCode.UNAVAILABLE  # (as the stream test above)
            assert ch._unserved_outcome(eps["good"], details, refused) \
                is grpc.StatusCode.UNIMPLEMENTED
            assert ch._unserved_outcome(eps["wrong"], details, refused) \
                is grpc.StatusCode.UNIMPLEMENTED
    finally:
        await good.stop(None)
        await wrong.stop(None)


class _PreferWrong:
    """Picks endpoint ``wrong`` while it is READY and not tried by the call, else any READY
    one (so every stream tries the wrong server first)."""

    def __init__(self) -> None:
        self._eps: tuple[Endpoint, ...] = ()

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        self._eps = tuple(endpoints)

    def pick(self, key: str | None = None,
             exclude: Collection[Endpoint] = ()) -> tuple[Endpoint, Done] | None:
        ready = [ep for ep in self._eps
                 if ep.state is EndpointState.READY and ep not in exclude]
        ready.sort(key=lambda ep: ep.key != "wrong")
        return (ready[0], noop_done) if ready else None


async def test_a_retried_server_stream_a_wrong_server_refused_goes_to_one_that_serves_it(
        registry: LocalRegistry) -> None:
    """A server stream whose policy retries it (safe to repeat: gRFC A6's retry until the
    first message), refused by a wrong server as a method it does not serve (none of it
    ran), is opened once more on another endpoint, whatever its retryable codes, as a
    unary call so refused is sent on; a method no endpoint serves still ends
    ``UNIMPLEMENTED`` after two attempts."""
    good, wrong = _server("meshkit.test.Echo"), _server("other.Service")
    third = _server("third.Service")
    try:
        await _two(registry, good, wrong)
        retry = RetryOptions(default=RetryPolicy(idempotent=True, max_attempts=4))
        async with meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(
                insecure=True, balancer=_PreferWrong, retry=retry, telemetry=None,
                outlier=None)) as ch:
            await ch.wait_for_endpoints(2, timeout_s=10)
            for _ in range(3):
                assert await _stream(ch, "server-stream") is grpc.StatusCode.OK
            assert ch.retry is not None and ch.retry.stats.retries == 3
        # no endpoint serves it: two attempts, UNIMPLEMENTED
        await good.stop(None)
        port = third.add_insecure_port("127.0.0.1:0")
        await third.start()
        await registry.register(Instance(service="echo", instance_id="good",
                                         host="127.0.0.1", port=port))
        async with meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(
                insecure=True, balancer=_PreferWrong, retry=retry, telemetry=None,
                outlier=None)) as ch:
            await ch.wait_for_endpoints(2, timeout_s=10)
            for _ in range(30):  # (the good entry's new address, seen)
                if {ep.address for ep in ch.endpoints()} >= {f"127.0.0.1:{port}"}:
                    break
                await asyncio.sleep(0.1)
            call = ch.unary_stream(method("ServerStream"))(b"2", timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                [m async for m in call]
            assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
            assert ch.retry is not None and ch.retry.stats.retries == 1
    finally:
        await good.stop(None)
        await wrong.stop(None)
        await third.stop(None)
