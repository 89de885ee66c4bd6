"""Review of fd888b92 / 48dcb98f / ae8bc7f5: a grpc-js *handler's* own refusal, whose
trailers-only answer carries nothing but Node's ``date`` header, is still the endpoint's
outcome and retried as the policy says.

Those commits take trailing metadata holding only ``date`` (``transport_only``) as none
when the details carry a gRPC library's words for a size refusal or a method not served.
A handler's quota refusal (``RESOURCE_EXHAUSTED`` with words of its own) looks the same
on the wire but for its details: it must not be taken for a transport refusal (no
endpoint's outcome, never retried). Node and @grpc/grpc-js as ``test_grpcjs.py`` needs
them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from meshkit.resilience import RetryOptions, RetryPolicy
from tests.interop.test_hunt37_b1_grpcjs_features import _js_servers

pytestmark = pytest.mark.timeout(60)

_EX = grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_grpcjs_handlers_quota_refusal_is_retried_and_counted(tmp_path: Path) -> None:
    """``Flaky`` "<key>:<n>:8": the handler refuses the first n calls of a key
    ``RESOURCE_EXHAUSTED`` "flaky" (trailers-only, ``date`` alone), then answers. With
    ``RESOURCE_EXHAUSTED`` retryable (3 attempts): refused 3 times, the call fails after 3
    attempts; refused twice, it succeeds on its third; each refusal is the endpoint's
    failure."""
    retry = RetryOptions(
        default=RetryPolicy(
            max_attempts=3, idempotent=True, retryable_codes={grpc.StatusCode.UNAVAILABLE, _EX}
        )
    )
    registry = LocalRegistry(LocalOptions(path=tmp_path / "reg", poll_interval_s=0.05, ttl_s=15.0))
    try:
        async with _js_servers(1) as [(port, _proc)]:
            await registry.register(
                Instance(service="js", instance_id="j1", host="127.0.0.1", port=port)
            )
            opts = meshkit.DialOptions(insecure=True, telemetry=None, retry=retry, outlier=None)
            async with meshkit.dial("js", registry=registry, options=opts) as ch:
                await ch.wait_for_endpoints(1, timeout_s=10)
                flaky: Any = ch.unary_unary("/interop.Js/Flaky")
                # refused by every attempt: the handler's answer, each attempt a failure
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await flaky(b"all:3:8", timeout=10)
                trailers = [k for k, _ in err.value.trailing_metadata() or ()]
                assert err.value.code() is _EX and trailers == ["date"], err.value
                [ep] = ch.stats().endpoints
                assert (ep.calls, ep.failures) == (3, 3), ep
                # refused twice, then answered on the third attempt
                assert await flaky(b"q:2:8", timeout=10) == b"js|3"
                [ep] = ch.stats().endpoints
                assert (ep.calls, ep.failures) == (6, 5), ep
    finally:
        await registry.close()
