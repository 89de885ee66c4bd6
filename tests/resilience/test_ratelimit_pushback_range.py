"""The rate limiter's ``grpc-retry-pushback-ms`` stays a signed 32-bit integer.

gRFC A6 ("Pushback"): the value "is to be an ASCII encoded signed 32-bit integer [...]
that represents how many milliseconds to wait before sending a retry". A refusal of a
rule whose window is longer than 2**31 - 1 ms (about 24.86 days: ``"1/month"``,
``"10 per 30 days"``) sent the wait as it was, 2,592,000,000 ms and more: grpc-java reads
it with ``Integer.valueOf`` (unparseable: do not retry) while grpc core reads an int64
and waits it out, so a C-core client retrying ``RESOURCE_EXHAUSTED`` without a deadline
held the call for 30 days. No retry can succeed sooner than that, so the refusal says
``-1`` (do not retry), as it does when the caller's deadline ends before the wait;
``retry-after`` still gives the whole seconds. A wait that fits is sent to the
millisecond, as before.
"""

from __future__ import annotations

import asyncio
import json
import math
import time

import grpc
import pytest

from meshkit.resilience import ratelimit
from meshkit.resilience._ratelimit_policy import parse_rule
from meshkit.resilience.ratelimit import RateLimitOptions, Strategy
from tests.resilience.limited_echo import limited_echo as _limited_echo
from tests.support.echo import SERVICE, method

pytestmark = pytest.mark.timeout(60)

INT32_MAX = 2**31 - 1
STRATEGIES: tuple[Strategy, ...] = ("fixed-window", "moving-window", "sliding-window-counter")


def _at_a_window_start(monkeypatch: pytest.MonkeyPatch, rule: str) -> None:
    """The memory storage's clock 1 s into a window of ``rule`` (running on from there):
    a sliding window counter's windows are named by now / window, so its wait is the rest
    of the current window, whatever it is on this host's monotonic clock."""
    (item,) = parse_rule(rule, where="test")
    window_s = item.get_expiry()
    base = math.ceil(ratelimit._MEMORY_CLOCK.time() / window_s) * window_s + 1.0
    t0 = time.monotonic()
    monkeypatch.setattr(ratelimit._MEMORY_CLOCK, "time", lambda: base + time.monotonic() - t0)


def _retrying_channel(port: int) -> grpc.aio.Channel:
    """A grpc.aio (C-core) channel retrying RESOURCE_EXHAUSTED, as the pushback says."""
    config = {"methodConfig": [{
        "name": [{"service": SERVICE}],
        "retryPolicy": {"maxAttempts": 2, "initialBackoff": "0.01s", "maxBackoff": "0.01s",
                        "backoffMultiplier": 1,
                        "retryableStatusCodes": ["RESOURCE_EXHAUSTED"]}}]}
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(config))])


def _trailer(err: grpc.aio.AioRpcError, key: str) -> list[str | bytes]:
    return [v for k, v in err.trailing_metadata() or () if k == key]


async def _refusal(rule: str, strategy: Strategy) -> grpc.aio.AioRpcError:
    options = RateLimitOptions(default_rule=rule, strategy=strategy)
    async with _limited_echo(options) as port, _retrying_channel(port) as channel:
        unary = channel.unary_unary(method("Unary"))
        await unary(b"1", timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            # no deadline: the call waits as long as the pushback says (bounded here)
            await asyncio.wait_for(unary(b"2"), 10.0)
    return info.value


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("rule", ["1/month", "1 per 25 days", "1/year"])
async def test_a_wait_past_a_32_bit_pushback_says_do_not_retry(
        rule: str, strategy: Strategy, monkeypatch: pytest.MonkeyPatch) -> None:
    _at_a_window_start(monkeypatch, rule)
    err = await _refusal(rule, strategy)
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err
    assert _trailer(err, "grpc-retry-pushback-ms") == ["-1"], err.trailing_metadata()
    (after,) = _trailer(err, "retry-after")
    assert int(after) * 1000 > INT32_MAX, after


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_wait_within_a_32_bit_pushback_is_sent_to_the_millisecond(
        strategy: Strategy, monkeypatch: pytest.MonkeyPatch) -> None:
    """24 days is 2,073,600,000 ms: a signed 32-bit integer; a refusal's wait within it
    is sent to the millisecond, within retry-after's last second (the caller has no
    deadline; a client without retries reads the refusal itself)."""
    _at_a_window_start(monkeypatch, "1 per 24 days")
    options = RateLimitOptions(default_rule="1 per 24 days", strategy=strategy)
    async with _limited_echo(options) as port, grpc.aio.insecure_channel(
            f"127.0.0.1:{port}") as channel:  # no retries: the refusal itself is read
        unary = channel.unary_unary(method("Unary"))
        await unary(b"1", timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await unary(b"2")
    err = info.value
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err
    (pushback,) = _trailer(err, "grpc-retry-pushback-ms")
    assert isinstance(pushback, str)
    (after,) = _trailer(err, "retry-after")
    assert 0 < int(pushback) <= INT32_MAX, pushback
    assert (int(after) - 1) * 1000 < int(pushback) <= int(after) * 1000, (after, pushback)
    assert int(pushback) > 24 * 86_400_000 - 60_000, pushback  # all but the second passed
