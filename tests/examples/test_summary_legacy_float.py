"""A summary row an SQLite store wrote before totals saturated (a sum past int64 turned
into a REAL, e.g. 1e19) is read as int64's maximum, the total GetOrderSummary can carry."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest

from examples.ecom.storage import OrderSummary, open_store

pytestmark = pytest.mark.timeout(30)

INT64_MAX = 2**63 - 1


async def test_a_float_total_of_an_older_row_reads_as_int64_max(tmp_path: Path) -> None:
    """order_summary answers an int (2^63-1) for a row whose total SQLite holds as the
    float 1e19; the next event leaves it there and counts the order."""
    path = tmp_path / "ecom.db"
    store = await open_store(f"sqlite:///{path}")
    try:
        conn = sqlite3.connect(path)
        try:
            conn.execute("INSERT INTO order_summaries (user_id, order_count, total_minor)"
                         " VALUES ('u-1', 10, 1e19)")
            conn.commit()
        finally:
            conn.close()
        summary = await store.order_summary("u-1")
        assert summary == OrderSummary("u-1", 10, INT64_MAX)
        assert type(summary.total_minor) is int
        assert await store.apply_order_placed(str(uuid.uuid4()), "u-1", 5)
        summary = await store.order_summary("u-1")
        assert summary == OrderSummary("u-1", 11, INT64_MAX)
        assert type(summary.total_minor) is int
    finally:
        await store.close()
