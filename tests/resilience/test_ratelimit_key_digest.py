"""A long caller key's digest form is no key another caller can send, and the networked
(async) path keeps long keys short as the memory:// one does.

46db392 keeps a caller key longer than 64 characters as its first 31, ``#`` and a
128-bit BLAKE2b digest of the whole: 64 characters, the very length of a key kept as it
is. A caller whose key *is* that 64-character string (a header value any client may send)
then shared a budget with the long key's caller, though the two keys differ: not
"distinct keys stay distinct budgets" as promised. Only a digest collision may make two
keys one budget: a digest form must be of a length no key kept as it is has.

The async path (``StorageLimiter.check``, taken with ``async+redis://``) shortens long
keys too: the keys Redis holds stay short (checked on the shared test Redis).
"""

from __future__ import annotations

import hashlib
import uuid

import grpc
import pytest

from meshkit.resilience.ratelimit import (
    _MAX_KEY_CHARS,
    RateLimitOptions,
    StorageLimiter,
    Strategy,
    _kept_key,
)
from tests.resilience.test_ratelimit import SHARED_REDIS_PORT, redis_keys, redis_ping
from tests.support.skips import skip_or_fail

pytestmark = pytest.mark.timeout(60)

STRATEGIES: tuple[Strategy, ...] = ("fixed-window", "moving-window", "sliding-window-counter")
METHOD = "/p.S/M"
LONG = "x-user=" + "v" * 200


def _old_form(key: str) -> str:
    """The 64-character string 46db392 kept ``key`` as: what a caller would send."""
    return f"{key[:31]}#{hashlib.blake2b(key.encode(), digest_size=16).hexdigest()}"


def test_a_digest_form_is_no_key_kept_as_it_is() -> None:
    kept = _kept_key(LONG)
    assert len(_old_form(LONG)) == _MAX_KEY_CHARS
    assert len(kept) > _MAX_KEY_CHARS, kept  # so no caller's own key is ever equal to it
    assert _kept_key(LONG + "1") != _kept_key(LONG + "2")
    assert kept.startswith(LONG[:31])  # still tells an operator whose it is


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_key_equal_to_a_digest_form_is_another_caller(strategy: Strategy) -> None:
    limiter = StorageLimiter(RateLimitOptions(default_rule="1/hour", strategy=strategy))
    check = limiter.checker(METHOD)
    assert check is not None
    forged = _old_form(LONG)  # a key of 64 characters, kept as it is
    try:
        assert check(LONG) is None
        assert check(forged) is None  # its own budget, not the long key's
        refused = check(LONG)
        assert refused is not None and refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await limiter.aclose()


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_redis_holds_long_keys_short_and_apart(strategy: Strategy) -> None:
    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")
    prefix = f"kd-{uuid.uuid4().hex}"
    limiter = StorageLimiter(RateLimitOptions(
        default_rule="1/minute", strategy=strategy, key_prefix=prefix,
        storage_uri=f"async+redis://127.0.0.1:{SHARED_REDIS_PORT}", on_storage_error="deny"))
    long = "x-user=" + "a" * 8_000
    forged = _old_form(long + "1")
    try:
        assert await limiter.check(METHOD, long + "1") is None
        assert await limiter.check(METHOD, long + "2") is None  # another caller
        assert await limiter.check(METHOD, forged) is None  # and another
        refused = await limiter.check(METHOD, long + "1")
        assert refused is not None and refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        held = redis_keys(f"*{prefix}*")
        assert held, "no keys found on Redis"
        assert max(len(k) for k in held) < 300, sorted(held, key=len)[-1][:200]
    finally:
        await limiter.aclose()
