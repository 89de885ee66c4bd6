"""Review of ae8bc7f5: a response's metadata over grpc core's *soft* limit is refused at
random, so a retry the policy allows may well get through.

grpc core refuses metadata over ``grpc.max_metadata_size``'s soft limit (8 KiB) with a
probability that grows to 1 at the hard limit (16 KiB): random early detection, a fresh
draw for each call ("received metadata size exceeds soft limit (N vs. 8192)"). ae8bc7f5
made every "received metadata size exceeds" refusal a size refusal, never retried
whatever the policy's codes, reasoning that the same request meets the same refusal:
true of the hard limit, not of the soft one. With ``RESOURCE_EXHAUSTED`` retryable, calls
whose trailers of 12 KiB (refused about half the time) were answered on a later attempt
before failed at their first refusal (about 15 of 30). The soft refusal is retried as
the policy says again; the hard one is still not, and neither is any endpoint's failure.
"""

from __future__ import annotations

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.resilience import BudgetOptions, RetryOptions, RetryPolicy
from meshkit.resilience._retry import size_refusal
from tests.support.echo import raw_server
from tests.test_hunt40_metadata_size_refusals import _SOFT, _BigMetadata

_EX = grpc.StatusCode.RESOURCE_EXHAUSTED
_CALLS = 30


@pytest.mark.timeout(90)
async def test_a_soft_limit_refusal_is_retried_as_the_policy_says(
    registry: LocalRegistry,
) -> None:
    server = _BigMetadata()
    codes = {_EX, grpc.StatusCode.UNAVAILABLE}
    retry = RetryOptions(
        default=RetryPolicy(idempotent=True, max_attempts=5, retryable_codes=codes),
        budget=BudgetOptions(min_retries_per_s=1000.0),
    )
    async with raw_server(server) as (_, port):
        await registry.register(
            Instance(service="echo", instance_id="e1", host="127.0.0.1", port=port)
        )
        opts = meshkit.DialOptions(insecure=True, retry=retry, outlier=None)
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            assert ch.retry is not None
            failed = 0
            for _ in range(_CALLS):
                try:
                    await ch.unary_unary("/t/Trailers")(str(_SOFT).encode(), timeout=10)
                except grpc.RpcError as exc:
                    assert exc.code() is _EX, exc
                    assert "soft limit" in (exc.details() or ""), exc
                    failed += 1
            # refused about half the time: 5 attempts leave about 1 call in 32 failing;
            # with no retry about 15 of 30 fail (6 or fewer: p < 0.001)
            assert failed <= 6, (failed, ch.retry.stats.retries)
            assert ch.retry.stats.retries > 0
            assert [e.failures for e in ch.stats().endpoints] == [0]  # never the endpoint's


@pytest.mark.parametrize(
    ("details", "refusal"),
    [
        (
            "Stream removed (received metadata size exceeds hard limit (value length 20000 vs."
            " 16384))",
            True,
        ),
        ("received metadata size exceeds hard limit (value length 20000 vs. 16384)", True),
        (
            "Stream removed (received metadata size exceeds soft limit (12034 vs. 8192); key"
            " x-big)",
            False,
        ),
        ("received metadata size exceeds soft limit (12034 vs. 8192)", False),
    ],
    ids=["client-hard", "server-hard", "client-soft", "server-soft"],
)
def test_only_the_hard_metadata_limit_is_a_size_refusal(details: str, refusal: bool) -> None:
    assert size_refusal(_EX, details) is refusal
