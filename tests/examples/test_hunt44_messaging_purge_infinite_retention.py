"""``purge_every`` (the outbox's and the projection's purges) refuses a ``retention_s``
or ``interval_s`` that is not > 0 with ``ValueError`` before it starts. An infinite
``retention_s`` passed that check and raised ``OverflowError`` from ``round(inf *
1000)`` at the purge's first step: the outbox purge task ended with it (re-raised by the
relay's stop), the projection's logged ``processed events purge failed`` every minute
for ever. A retention must now be a finite number, refused with ``ValueError`` quoting
it (``outbox_relay(retention_s=None)`` is how the outbox keeps events for ever)."""

from __future__ import annotations

import asyncio
import math

import pytest

from examples.ecom import events

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("retention_s", [math.inf, math.nan], ids=["inf", "nan"])
async def test_a_retention_that_is_not_finite_is_refused(retention_s: float) -> None:
    """An infinite (or NaN) retention raises ValueError naming retention_s, the store
    never called."""
    calls: list[tuple[int, int]] = []

    async def purge(cutoff_ms: int, batch: int) -> int:
        calls.append((cutoff_ms, batch))
        return 0

    with pytest.raises(ValueError, match="retention_s"):
        await asyncio.wait_for(events.purge_every(
            purge, retention_s=retention_s, interval_s=60.0, batch=10, warning="w",
            errors=(Exception,)), 5)
    assert calls == []
