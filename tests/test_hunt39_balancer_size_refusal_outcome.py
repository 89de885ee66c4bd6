"""A message refused for its size is the caller's, not the endpoint's, compressed or not.

A request message over the server's ``max_receive_message_bytes`` (``RESOURCE_EXHAUSTED``
"SERVER: Received message larger than max (N vs. M)") was already no endpoint's outcome
(tests/test_balancer_request_metadata_too_large.py). The same request sent with
``compression=grpc.Compression.Gzip`` is refused by its decompressed size, with other
words ("Decompressed message larger than max"), and was counted as the endpoint's
failure and as overload (P2C's ``overload_penalty_s``): a caller compressing its
oversized request had every healthy endpoint read as failing and overloaded for all
callers. So was a response over the client's own ``grpc.max_receive_message_length``
("CLIENT: Received message larger than max (N vs. M)", grpc core's refusal on this
side): the same answer comes from every endpoint. Both are now no endpoint's outcome;
the caller still gets the status."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from tests.conftest import EchoFactory
from tests.support.echo import method

_GZ = grpc.Compression.Gzip
_EX = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.timeout(60)
async def test_size_refusals_are_not_counted_against_the_endpoint(
    registry: LocalRegistry, echo_servers: EchoFactory,
) -> None:
    await echo_servers("e1", limits=meshkit.ServerLimits(max_receive_message_bytes=1000))
    opts = meshkit.DialOptions(insecure=True, retry=None, channel_options=(
        ("grpc.max_receive_message_length", 1000),))
    zeros = b"\0" * 5000  # 5000 bytes inflated, a few dozen sent
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        assert await ch.unary_unary(method("Unary"))(b"x", timeout=10) == b"e1|x"
        for name, call in {
            "gzip request over the server's limit":
                lambda: ch.unary_unary(method("Unary"))(zeros, timeout=10, compression=_GZ),
            "gzip upload over the server's limit":
                lambda: ch.stream_unary(method("ClientStream"))(iter([zeros]), timeout=10,
                                                                compression=_GZ),
            "response over the client's limit":
                lambda: ch.unary_unary(method("Unary"))(b"x" * 999, timeout=10),
        }.items():
            with pytest.raises(grpc.RpcError) as err:
                await call()
            assert err.value.code() is _EX, (name, err.value)
            assert "message larger than max" in (err.value.details() or ""), (name, err.value)
        gz_stream = ch.unary_stream(method("ServerStream"))(zeros, timeout=10, compression=_GZ)
        with pytest.raises(grpc.RpcError) as err:
            async for _ in gz_stream:
                pass
        assert err.value.code() is _EX, err.value
        await asyncio.sleep(0.05)  # a stream's outcome is reported from a spawned task
        assert [e.failures for e in ch.stats().endpoints] == [0]
        # the endpoint's own failure still counts
        with pytest.raises(grpc.RpcError):
            await ch.unary_unary(method("Fail"))(b"UNAVAILABLE", timeout=10)
        assert [e.failures for e in ch.stats().endpoints] == [1]
