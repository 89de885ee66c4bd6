"""Review of 8f374ed1 (per-instance fault grace of a Consul watch).

1. A watch of a service with no instances (yielded ``[]``) whose agent restarts without
   its state (``X-Consul-Index`` backwards) kept nothing, and the log line's
   ``max(...)`` over the kept graces raised ``ValueError: max() arg is an empty
   sequence``: the watch iterator died, so a channel of a not-yet-deployed service never
   saw it appear.
2. A check's ``Definition.TTL`` is a JSON number of nanoseconds; an integer beyond a
   float's range (a proxy's or a broken agent's answer) raised ``OverflowError`` out of
   the watch when divided. It is now taken as the longest grace (the cap).
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from meshkit.discovery._consul import ConsulOptions, ConsulRegistry, _checks_grace_s
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.discovery.consul_double import ConsulDouble

pytestmark = pytest.mark.timeout(20)


async def test_an_empty_service_survives_an_agent_restart_without_state() -> None:
    service = unique_service()
    async with ConsulDouble() as double:
        options = ConsulOptions(addr=double.addr, ttl_s=3.0, wait_s=5.0,
                                backoff_base_s=0.05, backoff_max_s=0.2,
                                request_timeout_s=1.0)
        reader = ConsulRegistry(options)
        owner = ConsulRegistry(options)
        watcher = Collector(reader, service)
        try:
            assert await watcher.next() == frozenset()
            for _ in range(5):
                double.touch(service)  # an index above a fresh agent's
            await asyncio.sleep(0.3)  # the watch blocks on it
            await double.stop()  # the agent restarts without its state
            double.forget_all()
            double.reset_index(1)
            await asyncio.sleep(0.1)
            await double.start()
            a = make_instance(service, 1)
            await owner.register(a)
            seen = asyncio.ensure_future(watcher.until_set({a}, timeout_s=8.0))
            await asyncio.wait([seen, watcher.task], return_when=asyncio.FIRST_COMPLETED)
            assert not watcher.task.done(), (
                f"the watch of an empty service ended after the index went backwards: "
                f"{watcher.task.exception()!r}")
            await seen
        finally:
            await watcher.stop()
            await owner.close()
            await reader.close()


@pytest.mark.parametrize("ttl", [10**400, json.loads("1" + "0" * 500)],
                         ids=["int-1e400", "json-int-1e500"])
def test_a_ttl_beyond_a_float_is_capped_not_raised(ttl: int) -> None:
    checks = [{"ServiceID": "a", "Definition": {"TTL": ttl}}]
    assert _checks_grace_s(checks, "a", 15.0) == 600.0


async def test_an_agents_answer_tells_a_meshkit_ttl_owners_ttl() -> None:
    """3. A Consul agent answers a check registered through it with ``Definition`` ``{}``
    and no TTL anywhere (``agent/agent.go``: only an interval check's ``Interval`` and
    ``Timeout``), as the double now does: a kept TTL-checked instance then took the
    WATCHER's grace, not its owner's TTL (an owner with ``ttl_s`` 9 heartbeating every
    3 s, dropped by a watcher whose grace was 3 s). The owner's TTL check now says its TTL
    in its ``Notes``, which the watch reads."""
    service = unique_service()
    async with ConsulDouble() as double:
        owner = ConsulRegistry(ConsulOptions(addr=double.addr, ttl_s=9.0,
                                             request_timeout_s=1.0))
        try:
            a = make_instance(service, 1)
            await owner.register(a)
            async with (aiohttp.ClientSession() as http,
                        http.get(f"{double.url}/v1/health/service/{service}") as resp):
                entries = await resp.json()
            (entry,) = entries
            (check,) = [c for c in entry["Checks"] if c["ServiceID"] == a.instance_id]
            assert check["Definition"] == {}  # as an agent answers
            assert _checks_grace_s(entry["Checks"], a.instance_id, 3.0) == 9.0
        finally:
            await owner.close()


def test_a_ttl_in_notes_of_another_kind_is_not_read() -> None:
    checks = [{"ServiceID": "a", "Type": "ttl", "Notes": "TTL 1h", "Definition": {}},
              {"ServiceID": "a", "Type": "ttl", "Definition": {},
               "Notes": "meshkit heartbeat, TTL " + "9" * 100 + "h"}]
    assert _checks_grace_s(checks, "a", 7.0) == 7.0
