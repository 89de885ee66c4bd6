"""An outbox row whose stored headers are JSON nested deeper than Python's decoder
recurses (written by another writer, or damaged: the store's own rows are a flat object
of strings) made ``pending_events`` raise ``RecursionError`` at every read, though a row
with undecodable headers is documented to come with none rather than fail the read: the
relay's every round failed, and no event after the row was ever published. The row now
comes with no headers (and the ``outbox headers undecodable`` warning), the others as
they are."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from examples.ecom.storage import Store

from .conftest import Raw
from .test_outbox_store_faults import TRACEPARENT, _order, _raw_event

pytestmark = pytest.mark.timeout(60)


async def test_a_row_whose_headers_nest_too_deep_does_not_block_the_outbox(
        store: Store, raw_sql: Raw) -> None:
    """The events around a row with headers nested 100,000 deep are read, the row with
    no headers and a warning naming it."""
    await store.place_order(_order("k1"))
    await raw_sql(_raw_event("too-deep", '{"a":' * 100_000))
    await store.place_order(_order("k2"))
    with capture_logs() as logs:
        pending = await store.pending_events(10)
    assert [e.event_id for e in pending][1] == "too-deep"
    assert len(pending) == 3
    assert pending[1].headers == {}
    assert pending[0].headers == pending[2].headers == {"traceparent": TRACEPARENT}
    assert [r["event_id"] for r in logs
            if r["event"] == "outbox headers undecodable"] == ["too-deep"]
