"""A Redis driver that swallows the storage timeout's cancel cannot hang the call.

coredis runs a Lua script (the sliding-window hit) as ``EVALSHA``; on ``NOSCRIPT`` it
sends ``SCRIPT LOAD`` from a retry hook wrapped in a bare ``except: pass``
(``coredis.retry.RetryPolicy.call_with_retries``), which swallows the
``CancelledError`` of meshkit's ``asyncio.timeout(storage_timeout_s)``; the hit then
retries and waits on. With a round trip that never answers (seen on uvloop: a second
loop's first hit on a fresh ``rediss://`` Redis, after the first loop's pool was
disconnected, waited forever), ``check()`` waited forever on the shielded hit: the
gRPC call hung (forever without a deadline), counted as no storage failure, and the
breaker never opened. ``check()`` now stops waiting once every round trip the hit may
make has had ``storage_timeout_s``: a storage failure (``UNAVAILABLE`` with
``on_storage_error="deny"``), the hit left to end on its own.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter

pytestmark = pytest.mark.timeout(60)


def _limiter(on_storage_error: str) -> StorageLimiter:
    # nothing connects: the hit is replaced below (a port no Redis listens on)
    return StorageLimiter(RateLimitOptions(
        default_rule="5/minute", storage_uri="async+redis://127.0.0.1:9/0",
        on_storage_error=on_storage_error,  # type: ignore[arg-type]
        storage_timeout_s=0.2))


def _swallowing_hit(limiter: StorageLimiter, release: asyncio.Event) -> list[str]:
    """Make ``limiter``'s hit behave as coredis' script call with a round trip that does
    not answer: the first cancel is swallowed, then it waits on (until ``release``)."""
    seen: list[str] = []

    async def acquire(*_args: Any) -> bool:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:  # coredis: `except: pass` around its retry hook
            seen.append("cancel swallowed")
        await release.wait()
        seen.append("released")
        return True

    object.__setattr__(limiter, "_acquire_window", acquire)
    return seen


@pytest.mark.parametrize("on_error", ["deny", "allow"])
async def test_a_swallowed_cancel_does_not_hang_the_call(on_error: str) -> None:
    limiter = _limiter(on_error)
    release = asyncio.Event()
    seen = _swallowing_hit(limiter, release)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        got = await asyncio.wait_for(limiter.check("/a.B/C", "caller"), 10)
    except TimeoutError:
        pytest.fail("check() still waiting 10 s on a hit whose storage_timeout_s (0.2 s) "
                    f"cancel was swallowed ({seen})")
    finally:
        took = loop.time() - started
    assert seen == ["cancel swallowed"], seen
    assert took < 5, took
    if on_error == "deny":
        assert got is not None and got.code == grpc.StatusCode.UNAVAILABLE, got
    else:
        assert got is None, got
    assert limiter.storage_errors == 1
    # the hit still out ends on its own, counted once (not a second failure, no success)
    release.set()
    for _ in range(100):
        if "released" in seen:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert seen == ["cancel swallowed", "released"], seen
    assert limiter.storage_errors == 1
    await limiter.aclose()


async def test_a_slow_hit_that_answers_within_its_timeout_is_not_cut() -> None:
    """The guard only stops waiting past the hit's own bound: a hit answering within
    storage_timeout_s is the call's answer, as before."""
    limiter = _limiter("deny")

    async def acquire(*_args: Any) -> bool:
        await asyncio.sleep(0.1)
        return True

    object.__setattr__(limiter, "_acquire_window", acquire)
    assert await asyncio.wait_for(limiter.check("/a.B/C", "caller"), 10) is None
    assert limiter.storage_errors == 0
    await limiter.aclose()
