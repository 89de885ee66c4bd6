"""Tests of the Consul agent test double itself (consul_double.py): where it must behave as
Consul's agent does for the registry's tests to mean anything."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.discovery.conformance import unique_service
from tests.discovery.consul_double import ConsulDouble

pytestmark = pytest.mark.timeout(15)


async def test_registering_again_keeps_a_held_checks_status() -> None:
    """Registering a service again with a check whose CheckID the agent holds took the new
    definition's ``Status``; Consul's agent keeps the check's current status and output
    (agent/agent.go, addServiceInternal: it snapshots every check, then "Restore the fields
    from the snapshot", ``check.Status = prev.Status``). Being kinder than Consul, the double
    hid that a registration reusing a critical check's CheckID leaves the instance out of
    every ``?passing`` watch. It now keeps the held status; a new CheckID takes its Status."""
    async with ConsulDouble() as d:
        service = unique_service()

        def body(check_id: str, status: str) -> dict[str, Any]:
            return {"ID": f"{service}-1", "Name": service, "Address": "127.0.0.1",
                    "Port": 41001, "Checks": [{"CheckID": check_id, "TTL": "60s",
                                               "Status": status}]}

        async with aiohttp.ClientSession() as session:
            for check_id, status in (("c1", "critical"), ("c1", "passing"),
                                     ("c2", "passing")):
                async with session.put(f"{d.url}/v1/agent/service/register",
                                       json=body(check_id, status)) as resp:
                    assert resp.status == 200
                if check_id == "c1":
                    check = d.check("c1")
                    assert check is not None
                    assert check.status == "critical", (
                        f"the double took the new Status {check.status!r}; Consul keeps "
                        "'critical'")
        check = d.check("c2")
        assert check is not None and check.status == "passing"  # a new CheckID
