"""Review of 8a3db8f4 (a rule's parts counted shortest window first): the order changes
no storage key, so replicas of both versions on one Redis (a rolling upgrade) share
their counters - nothing is reset, nothing counted twice.

A part's storage key is ``limits``' ``key_for`` (prefix, method, caller, amount,
multiples, granularity): no position in the rule. An "old replica" here is a limiter
whose rule parts are in the written order (``parse_rule`` as before the commit).

Real Redis on loopback (the shared one, a key prefix of the test's own).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import coredis
import pytest

import meshkit.resilience._ratelimit_policy as policy
from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter
from tests.resilience.test_ratelimit import SHARED_REDIS_PORT, redis_ping
from tests.support.skips import skip_or_fail

pytestmark = pytest.mark.timeout(60)

METHOD = "/p.S/M"
RULE = "4/minute;2/second"
STRATEGIES = ["fixed-window", "moving-window", "sliding-window-counter"]
_sorted_parse = policy.parse_rule


def _written_order(text: object, *, where: str) -> tuple[object, ...]:
    """``parse_rule`` before 8a3db8f4: the parts in the order written."""
    assert isinstance(text, str)
    return tuple(_sorted_parse(part, where=where)[0] for part in text.split(";"))


@pytest.fixture
def old_replica(monkeypatch: pytest.MonkeyPatch
                ) -> Iterator[Callable[[RateLimitOptions], StorageLimiter]]:
    """A factory of limiters whose rule parts are counted in the written order."""
    def make(opts: RateLimitOptions) -> StorageLimiter:
        with monkeypatch.context() as patch:
            patch.setattr(policy, "parse_rule", _written_order)
            return StorageLimiter(opts)
    yield make


def test_part_keys_do_not_depend_on_the_order() -> None:
    """The sorted parts' keys are those of the parts parsed one by one, in any order."""
    written = [_sorted_parse(part, where="t")[0] for part in RULE.split(";")]
    assert [i.get_expiry() for i in written] == [60, 1]  # the old order, as written
    for text in (RULE, "2/second;4/minute"):
        now = [i.key_for("pfx", METHOD, "caller") for i in _sorted_parse(text, where="t")]
        assert sorted(now) == sorted(i.key_for("pfx", METHOD, "caller") for i in written)


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_old_and_new_replicas_share_the_counters(
        old_replica: Callable[[RateLimitOptions], StorageLimiter], strategy: str) -> None:
    """An old replica admits a call, a new one admits one more and refuses the third
    (the second's two spent, counted by both); the Redis keys after the new replica's
    calls are the old replica's (none of its own)."""
    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")
    prefix = f"h43rv-{uuid.uuid4().hex}"
    opts = RateLimitOptions(default_rule=RULE, strategy=strategy,  # type: ignore[arg-type]
                            storage_uri=f"async+redis://127.0.0.1:{SHARED_REDIS_PORT}",
                            key_prefix=prefix, storage_timeout_s=5.0)
    old = old_replica(opts)
    new = StorageLimiter(opts)
    assert [i.get_expiry() for i in old._table.lookup(METHOD).items] == [60, 1]  # type: ignore[union-attr]
    assert [i.get_expiry() for i in new._table.lookup(METHOD).items] == [1, 60]  # type: ignore[union-attr]
    client = coredis.Redis(host="127.0.0.1", port=SHARED_REDIS_PORT)
    try:
        assert await old.check(METHOD, "caller") is None
        keys_old = set(await client.keys(f"*{prefix}*"))
        assert keys_old
        assert await new.check(METHOD, "caller") is None
        refused = await new.check(METHOD, "caller")
        assert refused is not None and "2 per 1 second" in refused.details, refused
        assert set(await client.keys(f"*{prefix}*")) == keys_old
        # the old replica sees the new one's hit as well
        assert await old.check(METHOD, "caller") is not None
    finally:
        await old.aclose()
        await new.aclose()
        keys = tuple(await client.keys(f"*{prefix}*"))
        if keys:
            await client.delete(keys)
