"""A request a server refuses for its size is the caller's fault, not the endpoint's.

grpc core refuses a call whose request headers pass the server's metadata limit
(``grpc.max_metadata_size``: over 16 KiB always, over 8 KiB at random) before any of the
call runs: ``RESOURCE_EXHAUSTED`` "received metadata size exceeds hard limit (value
length ... vs. 16384)" (or "... soft limit ..."), with no metadata. The channel counted
that as the endpoint's failure, and ``RESOURCE_EXHAUSTED`` as overload (P2C's
``overload_penalty_s``): one caller sending an oversized token or cookie header had every
healthy endpoint counted failing and read as overloaded, for all callers of the channel.
The same for a request message over the server's ``max_receive_message_bytes``
(``RESOURCE_EXHAUSTED`` "SERVER: Received message larger than max (N vs. M)"). Both are
now no endpoint's outcome, as a request over ``grpc.max_send_message_length`` refused on
this side is; the caller still gets the status."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from tests.conftest import EchoFactory
from tests.support.echo import method

_BIG = (("x-big", "a" * 20_000),)


@pytest.mark.timeout(60)
async def test_oversized_request_metadata_is_not_counted_against_the_endpoint(
    registry: LocalRegistry, echo_servers: EchoFactory,
) -> None:
    await echo_servers("e1")
    opts = meshkit.DialOptions(insecure=True, retry=None)
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        assert await ch.unary_unary(method("Unary"))(b"x", timeout=10) == b"e1|x"
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as err:
                await ch.unary_unary(method("Unary"))(b"x", timeout=10, metadata=_BIG)
            assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
            assert "metadata size" in (err.value.details() or ""), err.value
        call = ch.unary_stream(method("ServerStream"))(b"2", timeout=10, metadata=_BIG)
        with pytest.raises(grpc.RpcError) as err:
            async for _ in call:
                pass
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
        await asyncio.sleep(0.05)  # a stream's outcome is reported from a spawned task
        assert [e.failures for e in ch.stats().endpoints] == [0]
        # the endpoint's own failure still counts
        with pytest.raises(grpc.RpcError):
            await ch.unary_unary(method("Fail"))(b"UNAVAILABLE", timeout=10)
        assert [e.failures for e in ch.stats().endpoints] == [1]


@pytest.mark.timeout(60)
async def test_an_oversized_request_message_is_not_counted_against_the_endpoint(
    registry: LocalRegistry, echo_servers: EchoFactory,
) -> None:
    await echo_servers("e1", limits=meshkit.ServerLimits(max_receive_message_bytes=1000))
    opts = meshkit.DialOptions(insecure=True, retry=None)
    big = b"x" * 5000
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        assert await ch.unary_unary(method("Unary"))(b"x", timeout=10) == b"e1|x"
        with pytest.raises(grpc.RpcError) as err:
            await ch.unary_unary(method("Unary"))(big, timeout=10)
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
        assert "Received message larger than max" in (err.value.details() or ""), err.value
        with pytest.raises(grpc.RpcError) as err:
            await ch.stream_unary(method("ClientStream"))(iter([big]), timeout=10)
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
        call = ch.unary_stream(method("ServerStream"))(big, timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            async for _ in call:
                pass
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
        await asyncio.sleep(0.05)  # a stream's outcome is reported from a spawned task
        assert [e.failures for e in ch.stats().endpoints] == [0]
