"""The shared ``registry`` fixture's rows outlive a starved event loop: with 8 test runs
on 2 cores (load ~24) a worker's loop was starved between heartbeats for longer than the
fixture's 3 s TTL less its 1 s heartbeat interval, its servers' rows lapsed, and calls
failed "no endpoint is registered" in tests that judge nothing about expiry."""

from __future__ import annotations

import time

import pytest

from meshkit.discovery import LocalRegistry
from tests.conftest import EchoFactory


@pytest.mark.timeout(60)
async def test_a_servers_row_outlives_a_loop_starved_for_four_seconds(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A server registered on the fixture, then its event loop blocked for 4 s (a busy
    neighbour, a long collection): the row is still live when the loop runs again, before
    any heartbeat could renew it (the read is queued first). With the 3 s TTL it was not
    (the row expired 2-3 s into the stall); the fixture's TTL is 15 s."""
    await echo_servers("e1")
    assert [i.instance_id for i in (await registry.snapshot("echo")).live] == ["e1"]
    time.sleep(4.0)  # noqa: ASYNC251 (the point: the loop starved, no heartbeat, no poll)
    live = [i.instance_id for i in (await registry.snapshot("echo")).live]
    assert live == ["e1"], f"the row lapsed during a 4 s stall (TTL {registry.options.ttl_s} s)"
