"""A request over a grpc-js server's receive limit is the caller's fault, not the endpoint's.

grpc-js refuses a request message over its ``grpc.max_receive_message_length`` (4 MiB by
default) ``RESOURCE_EXHAUSTED`` "Received message larger than max (N vs M)", and a
compressed one that inflates past it "Received message that decompresses to a size
larger than M", in a trailers-only answer carrying Node's ``date`` header. grpc core's
words for the same refusal ("SERVER: Received message larger than max", "Decompressed
message larger than max", no metadata) were already no endpoint's outcome and never
retried (tests/test_hunt39_balancer_size_refusal_outcome.py); grpc-js' were counted as
the endpoint's failure with P2C's overload penalty (measured: 4 failures of 7 calls, the
estimate 249 ms where the calls took 1 to 160 ms: one caller's oversized requests
pushed every caller off healthy grpc-js endpoints), and the compressed one was retried
where ``RESOURCE_EXHAUSTED`` is a retryable code (every attempt refused alike).
grpc-go's words for the compressed case ("grpc: received message after decompression
larger than max ...") were missed alike.
Node and @grpc/grpc-js as ``test_grpcjs.py`` needs them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from meshkit.resilience import RetryOptions, RetryPolicy
from meshkit.resilience._retry import size_refusal
from tests.interop.test_hunt37_b1_grpcjs_features import _js_servers

pytestmark = pytest.mark.timeout(60)

_EX = grpc.StatusCode.RESOURCE_EXHAUSTED
_BIG = 5 << 20  # over grpc-js' default 4 MiB receive limit


async def _dial_js(tmp_path: Path, port: int, **options: Any) -> tuple[Any, LocalRegistry]:
    registry = LocalRegistry(LocalOptions(path=tmp_path / "reg", poll_interval_s=0.05, ttl_s=15.0))
    await registry.register(Instance(service="js", instance_id="j1", host="127.0.0.1", port=port))
    opts = meshkit.DialOptions(insecure=True, telemetry=None, **options)
    return meshkit.dial("js", registry=registry, options=opts), registry


async def test_an_oversized_request_is_not_the_grpcjs_endpoints_failure(
    tmp_path: Path,
) -> None:
    """A request over the grpc-js server's limit, plain or gzip (5 MiB of zeros, a few
    KiB sent), unary or uploaded: the caller gets ``RESOURCE_EXHAUSTED``; the endpoint
    has no failure (nor P2C's overload penalty: the refusal is reported as no
    endpoint's outcome). The server's own failure still counts."""
    async with _js_servers(1) as [(port, _proc)]:
        channel, registry = await _dial_js(tmp_path, port, retry=None)
        try:
            async with channel as ch:
                unary: Any = ch.unary_unary("/interop.Js/Unary")
                upload: Any = ch.stream_unary("/interop.Js/ClientStream")
                for _ in range(3):
                    assert await unary(b"x", timeout=10) == b"js|x"
                zeros = b"\0" * _BIG
                for name, call in {
                    "unary": lambda: unary(zeros, timeout=10),
                    "upload": lambda: upload(iter([zeros]), timeout=10),
                    "gzip unary": lambda: unary(
                        zeros, timeout=10, compression=grpc.Compression.Gzip
                    ),
                    "gzip upload": lambda: upload(
                        iter([zeros]), timeout=10, compression=grpc.Compression.Gzip
                    ),
                }.items():
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await call()
                    assert err.value.code() is _EX, (name, err.value)
                await asyncio.sleep(0.05)  # an upload's outcome comes from a spawned task
                [ep] = ch.stats().endpoints
                assert ep.failures == 0, ep
                with pytest.raises(grpc.aio.AioRpcError):
                    await ch.unary_unary("/interop.Js/Fail")(b"14", timeout=10)
                assert [e.failures for e in ch.stats().endpoints] == [1]
        finally:
            await registry.close()


async def test_a_gzip_request_over_the_grpcjs_limit_is_not_retried(tmp_path: Path) -> None:
    """With ``RESOURCE_EXHAUSTED`` retryable (3 attempts), a gzip request grpc-js refuses
    for its inflated size is sent once: every attempt would be refused alike."""
    retry = RetryOptions(
        default=RetryPolicy(
            max_attempts=3, idempotent=True, retryable_codes={grpc.StatusCode.UNAVAILABLE, _EX}
        )
    )
    async with _js_servers(1) as [(port, _proc)]:
        channel, registry = await _dial_js(tmp_path, port, retry=retry)
        try:
            async with channel as ch:
                unary: Any = ch.unary_unary("/interop.Js/Unary")
                assert await unary(b"x", timeout=10) == b"js|x"
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await unary(b"\0" * _BIG, timeout=10, compression=grpc.Compression.Gzip)
                assert err.value.code() is _EX, err.value
                assert "decompresses to a size larger than" in (err.value.details() or "")
                assert [e.calls for e in ch.stats().endpoints] == [2]
        finally:
            await registry.close()


@pytest.mark.parametrize(
    "details",
    [
        "Received message larger than max (5242880 vs 4194304)",  # grpc-js
        "Received message that decompresses to a size larger than 4194304",  # grpc-js
        "grpc: received message larger than max (5242880 vs. 4194304)",  # grpc-go
        "grpc: received message after decompression larger than max (5242880 vs. 4194304)",
        "grpc: received message after decompression larger than max 4194304",  # grpc-go
        "grpc: message after decompression larger than max (5242880 vs. 4194304)",  # grpc-go
        "gRPC message exceeds maximum size 4194304: 5242880",  # grpc-java
        "Decompressed gRPC message exceeds maximum size 4194304",  # grpc-java
    ],
)
def test_other_grpc_libraries_size_refusals_are_known(details: str) -> None:
    """Each gRPC library's words for a message over its receive limit are a size
    refusal (never retried); another ``RESOURCE_EXHAUSTED`` is not."""
    assert size_refusal(_EX, details)
    assert not size_refusal(_EX, "quota exceeded")
    assert not size_refusal(grpc.StatusCode.INTERNAL, details)
