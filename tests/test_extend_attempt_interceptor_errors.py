"""An attempt interceptor (``DialOptions.attempt_interceptors``) that raises on the client
(per-attempt auth whose token file is missing: ``FileNotFoundError``) fails the call with
its exception; that is no endpoint's outcome. A unary-response attempt reported it so
(``CANCELLED`` to the balancer, no failure counted), but a streaming-response attempt
was reported ``UNKNOWN`` and counted as its endpoint's failure: with the default outlier
ejection (5 consecutive failures) a client's own broken interceptor ejected healthy
endpoints ("endpoint ejected", measured: 12 server-streaming calls over two endpoints, one
ejected, 12 failures counted). Real servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry

_SVC = "meshkit.test.AttemptBoom"


def _add() -> tuple[Any, None]:
    async def one(request: bytes, context: Any) -> bytes:
        return request

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield request

    async def bidi(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for r in requests:
            yield r

    handler = grpc.method_handlers_generic_handler(_SVC, {
        "One": grpc.unary_unary_rpc_method_handler(one),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    })
    return (lambda _servicer, server: server.add_generic_rpc_handlers((handler,))), None


class _TokenFileMissing(grpc.aio.UnaryUnaryClientInterceptor,
                        grpc.aio.UnaryStreamClientInterceptor,
                        grpc.aio.StreamStreamClientInterceptor):
    async def _fail(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        raise FileNotFoundError("/var/run/secrets/token")

    intercept_unary_unary = _fail
    intercept_unary_stream = _fail  # type: ignore[assignment]
    intercept_stream_stream = _fail  # type: ignore[assignment]


@pytest.fixture
async def servers(registry: LocalRegistry) -> AsyncIterator[list[meshkit.MeshServer]]:
    started = []
    try:
        for instance_id in ("b1", "b2"):
            srv = meshkit.MeshServer("boomd", [_add()], registry=registry,
                                     options=meshkit.ServeOptions(
                                         insecure=True, instance_id=instance_id,
                                         drain_delay_s=0.0, admin=None))
            await srv.start()
            started.append(srv)
        yield started
    finally:
        await asyncio.gather(*(srv.drain() for srv in started))


@pytest.mark.parametrize("kind", ["unary_unary", "unary_stream", "stream_stream"])
async def test_an_attempt_interceptors_own_exception_is_no_endpoints_failure(
        registry: LocalRegistry, servers: list[meshkit.MeshServer], kind: str) -> None:
    opts = meshkit.DialOptions(insecure=True, attempt_interceptors=(_TokenFileMissing(),))
    async with meshkit.dial("boomd", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(2)
        async with asyncio.timeout(10):
            for _ in range(12):
                with pytest.raises(FileNotFoundError):
                    if kind == "unary_unary":
                        await ch.unary_unary(f"/{_SVC}/One")(b"x", timeout=5)
                    elif kind == "unary_stream":
                        async for _m in ch.unary_stream(f"/{_SVC}/Stream")(b"x", timeout=5):
                            pass
                    else:
                        async for _m in ch.stream_stream(f"/{_SVC}/Bidi")(
                                iter([b"x"]), timeout=5):
                            pass
            # the outcomes are reported from tasks of the channel's: let them run
            for _ in range(50):
                if all(ep.in_flight == 0 for ep in ch.stats().endpoints):
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.05)
        stats = ch.stats()
    assert stats.ejections == 0
    assert [(ep.instance_id, ep.ejected, ep.failures) for ep in stats.endpoints] == [
        ("b1", False, 0), ("b2", False, 0)]


class _BadHeader(grpc.aio.UnaryStreamClientInterceptor, grpc.aio.StreamStreamClientInterceptor):
    """Adds a header value grpc core refuses to send (a newline in it)."""

    async def _add(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        metadata = [*(client_call_details.metadata or ()), ("x-note", "line1\nline2")]
        return await continuation(
            client_call_details._replace(metadata=grpc.aio.Metadata(*metadata)), request)

    intercept_unary_stream = _add
    intercept_stream_stream = _add  # type: ignore[assignment]


@pytest.mark.parametrize("kind", ["unary_stream", "stream_stream"])
async def test_metadata_an_attempt_interceptor_adds_that_grpc_refuses_is_no_endpoints_failure(
        registry: LocalRegistry, servers: list[meshkit.MeshServer], kind: str) -> None:
    """grpc core refuses to send the stream (``INTERNAL`` "Invalid metadata", raised
    on this side before anything left): no endpoint's failure either (it was counted one,
    each endpoint's, and ejected them)."""
    opts = meshkit.DialOptions(insecure=True, attempt_interceptors=(_BadHeader(),))
    async with meshkit.dial("boomd", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(2)
        async with asyncio.timeout(10):
            for _ in range(12):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    if kind == "unary_stream":
                        async for _m in ch.unary_stream(f"/{_SVC}/Stream")(b"x", timeout=5):
                            pass
                    else:
                        async for _m in ch.stream_stream(f"/{_SVC}/Bidi")(
                                iter([b"x"]), timeout=5):
                            pass
                assert caught.value.code() is grpc.StatusCode.INTERNAL
            for _ in range(50):
                if all(ep.in_flight == 0 for ep in ch.stats().endpoints):
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.05)
        stats = ch.stats()
    assert stats.ejections == 0
    assert [(ep.instance_id, ep.ejected, ep.failures) for ep in stats.endpoints] == [
        ("b1", False, 0), ("b2", False, 0)]
