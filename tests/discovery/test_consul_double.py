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


async def _get(url: str, token: str | None) -> tuple[int, Any, dict[str, str]]:
    headers = {"X-Consul-Token": token} if token else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        body = await resp.json() if resp.status == 200 else await resp.text()
        return resp.status, body, dict(resp.headers)


async def test_acl_listings_are_filtered_not_refused() -> None:
    """In ACL mode the double answered 403 to every request without the token. Consul's
    agent refuses writes that way, but answers a listing read (``GET
    /v1/health/service/<name>``, ``/v1/catalog/services``) 200 with what the token may not
    read filtered out: an empty list under default deny, so a registry without a usable
    token saw errors against the double where against Consul it quietly sees nothing. The
    ``X-Consul-Results-Filtered-By-ACLs: true`` header says so for a token that may not read
    everything, never for the anonymous token (Consul masks it: agent/consul/rpc.go,
    maskResultsFilteredByACLs)."""
    good, limited = "s3cret-good-token", "limited-token-1"
    async with ConsulDouble(required_token=good, limited_tokens=[limited]) as d:
        service = unique_service()
        health = f"{d.url}/v1/health/service/{service}?passing=1"
        status, body, headers = await _get(health, limited)
        assert (status, body) == (200, [])  # nothing to filter: no header
        assert "X-Consul-Results-Filtered-By-ACLs" not in headers
        async with aiohttp.ClientSession() as session:
            for token in (None, limited):
                async with session.put(
                    f"{d.url}/v1/agent/service/register",
                    headers={"X-Consul-Token": token} if token else {},
                    json={"ID": f"{service}-1", "Name": service, "Port": 41001},
                ) as resp:
                    assert resp.status == 403
                    assert "Permission denied" in await resp.text()
            async with session.put(
                f"{d.url}/v1/agent/service/register", headers={"X-Consul-Token": good},
                json={"ID": f"{service}-1", "Name": service, "Address": "127.0.0.1",
                      "Port": 41001},
            ) as resp:
                assert resp.status == 200
        status, body, headers = await _get(health, good)
        assert status == 200 and [e["Service"]["ID"] for e in body] == [f"{service}-1"]
        assert headers["X-Consul-Default-ACL-Policy"] == "deny"
        assert "X-Consul-Results-Filtered-By-ACLs" not in headers

        status, body, headers = await _get(health, None)  # the anonymous token
        assert (status, body) == (200, []), body
        assert "X-Consul-Results-Filtered-By-ACLs" not in headers  # masked
        status, body, headers = await _get(health, limited)
        assert (status, body) == (200, [])
        assert headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
        status, body, headers = await _get(f"{d.url}/v1/catalog/services", limited)
        assert (status, body) == (200, {})
        assert headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"

        for token in (None, limited):  # one object, not a listing: refused
            status, body, _ = await _get(f"{d.url}/v1/agent/service/{service}-1", token)
            assert status == 403 and "Permission denied" in body
        status, body, _ = await _get(health, "no-such-token")
        assert (status, body) == (403, "ACL not found")


async def test_default_acl_policy_header_without_acls() -> None:
    """Without ACLs the agent's default policy is allow, and its answers say so."""
    async with ConsulDouble() as d:
        _, _, headers = await _get(f"{d.url}/v1/catalog/services", None)
        assert headers["X-Consul-Default-ACL-Policy"] == "allow"
