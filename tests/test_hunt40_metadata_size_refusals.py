"""Metadata over grpc's size limit (``grpc.max_metadata_size``: refused at random over
8 KiB, always over 16 KiB) is the request's or the application's, never the endpoint's
overload. grpc core answers ``RESOURCE_EXHAUSTED`` "received metadata size exceeds soft
limit (N vs. 8192)" / "... hard limit (value length N vs. 16384)" (the server's core, for
request headers), or "Stream removed (received metadata size exceeds ...)" (this side's,
for a response's headers or trailers).

Two faults, measured against a plain grpc.aio server on loopback (grpc 1.85):

* a response whose trailers or headers pass the client's limit was counted as the
  endpoint's failure (outlier ejection's ``failures``; ``RESOURCE_EXHAUSTED``, P2C's
  overload penalty): 10 calls, 10 failures, though every endpoint running the handler
  would answer the same (as a response message over the receive limit, not counted);
* with ``RESOURCE_EXHAUSTED`` in a policy's ``retryable_codes`` (to retry a quota's
  refusal), each such call was sent ``max_attempts`` times (3: two retries from the
  budget per call, the handler run 3 times for the trailers), though the same request
  meets the same limit again; a message over a size limit was already not retried.
"""

from __future__ import annotations

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.resilience import RetryOptions, RetryPolicy
from tests.support.echo import raw_server

_HARD = 20_000  # past the 16 KiB hard limit: refused every time
_SOFT = 12_000  # between 8 and 16 KiB: refused at random


class _BigMetadata(grpc.GenericRpcHandler):
    """``/t/Trailers`` and ``/t/Headers`` answer with an ``x-big`` trailer or header of
    the request's number of bytes; ``/t/Echo`` echoes; ``/t/Quota`` refuses
    ``RESOURCE_EXHAUSTED`` "quota exceeded" on the server's first run, then echoes.
    ``runs`` counts handler runs."""

    def __init__(self) -> None:
        self.runs = 0

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        async def trailers(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.runs += 1
            context.set_trailing_metadata((("x-big", "b" * int(request)),))
            return b"ok"

        async def headers(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.runs += 1
            await context.send_initial_metadata((("x-big", "b" * int(request)),))
            return b"ok"

        async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.runs += 1
            return request

        async def quota(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.runs += 1
            if self.runs == 1:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota exceeded")
            return request

        handlers = {"/t/Trailers": trailers, "/t/Headers": headers, "/t/Quota": quota}
        return grpc.unary_unary_rpc_method_handler(handlers.get(details.method, echo))


def _policy() -> RetryOptions:
    """Retries of RESOURCE_EXHAUSTED (a quota's refusal) and UNAVAILABLE, 3 attempts."""
    codes = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}
    return RetryOptions(default=RetryPolicy(idempotent=True, max_attempts=3, retryable_codes=codes))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["/t/Trailers", "/t/Headers"], ids=["trailers", "headers"])
async def test_a_response_over_the_metadata_limit_is_not_the_endpoints_failure(
    registry: LocalRegistry, method: str
) -> None:
    server = _BigMetadata()
    async with raw_server(server) as (_, port):
        await registry.register(
            Instance(service="echo", instance_id="e1", host="127.0.0.1", port=port)
        )
        opts = meshkit.DialOptions(insecure=True, retry=None)
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            for _ in range(5):
                with pytest.raises(grpc.RpcError) as err:
                    await ch.unary_unary(method)(str(_HARD).encode(), timeout=10)
                assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
                assert "metadata size exceeds" in (err.value.details() or ""), err.value
            # soft: some of them refused, with the same words
            for _ in range(10):
                try:
                    await ch.unary_unary(method)(str(_SOFT).encode(), timeout=10)
                except grpc.RpcError as exc:
                    assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                    assert "metadata size exceeds soft limit" in (exc.details() or ""), exc
            assert [e.failures for e in ch.stats().endpoints] == [0]
            # and it still serves
            assert await ch.unary_unary("/t/Echo")(b"x", timeout=10) == b"x"


@pytest.mark.timeout(60)
async def test_a_metadata_size_refusal_is_not_retried(registry: LocalRegistry) -> None:
    server = _BigMetadata()
    async with raw_server(server) as (_, port):
        await registry.register(
            Instance(service="echo", instance_id="e1", host="127.0.0.1", port=port)
        )
        opts = meshkit.DialOptions(insecure=True, retry=_policy())
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            assert ch.retry is not None
            # the client's headers over the server's limit: its core refuses them
            with pytest.raises(grpc.RpcError) as err:
                await ch.unary_unary("/t/Echo")(
                    b"x", timeout=10, metadata=(("x-big", "a" * _HARD),)
                )
            assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
            assert "metadata size exceeds hard limit" in (err.value.details() or "")
            assert server.runs == 0
            assert ch.retry.stats.retries == 0
            # the server's trailers over the client's limit: its handler ran once
            with pytest.raises(grpc.RpcError) as err:
                await ch.unary_unary("/t/Trailers")(str(_HARD).encode(), timeout=10)
            assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
            assert server.runs == 1
            assert ch.retry.stats.retries == 0
            # and hedged calls end on it too
            hedged = meshkit.DialOptions(
                insecure=True,
                retry=RetryOptions(
                    default=RetryPolicy(
                        idempotent=True,
                        max_attempts=3,
                        hedge_delay_s=0.5,
                        retryable_codes={grpc.StatusCode.RESOURCE_EXHAUSTED},
                    )
                ),
            )
        async with meshkit.dial("echo", registry=registry, options=hedged) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            assert ch.retry is not None
            server.runs = 0
            with pytest.raises(grpc.RpcError) as err:
                await ch.unary_unary("/t/Trailers")(str(_HARD).encode(), timeout=10)
            assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
            assert server.runs == 1
            # a quota's RESOURCE_EXHAUSTED is still retried (the policy's codes)
            server.runs = 0
            assert await ch.unary_unary("/t/Quota")(b"q", timeout=10) == b"q"
            assert server.runs == 2
