"""RateLimitInterceptor(limiter=...) given something that is no Limiter (a storage URI,
the StorageLimiter class instead of an instance) fails where it is given, ConfigError
naming it: it was taken, and every call of the server it guarded then failed
``UNKNOWN`` "Unexpected <class 'AttributeError'>: 'str' object has no attribute
'applies_to'" (a TypeError for the class)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from meshkit.errors import ConfigError
from meshkit.resilience import RateLimitInterceptor, RateLimitOptions, StorageLimiter

pytestmark = pytest.mark.timeout(60)

_BAD = {"a-uri": "memory://", "the-class": StorageLimiter, "true": True}


@pytest.mark.parametrize("value", sorted(_BAD))
def test_a_limiter_that_is_no_limiter_fails_where_it_is_given(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RateLimitInterceptor(limiter=_BAD[value])  # type: ignore[arg-type]
    assert "limiter" in str(caught.value)


def test_a_limiter_instance_still_limits_calls() -> None:
    async def echo(request: bytes, context: object) -> bytes:
        return request

    async def main() -> list[grpc.StatusCode]:
        options = RateLimitOptions(default_rule="1/minute")
        interceptor = RateLimitInterceptor(options, limiter=StorageLimiter(options))
        server = grpc.aio.server(interceptors=[interceptor])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "t.T", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        codes = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                for _ in range(2):
                    try:
                        await channel.unary_unary("/t.T/Echo")(b"x", timeout=10)
                        codes.append(grpc.StatusCode.OK)
                    except grpc.aio.AioRpcError as exc:
                        codes.append(exc.code())
        finally:
            await server.stop(0)
            await interceptor.aclose()
        return codes

    assert asyncio.run(main()) == [grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED]
