"""ConsulRegistry: an IPv6 host given bracketed (``Instance(host="[2001:db8::5]")``, which
``Instance`` takes) is registered as the bare address in the service's ``Address``.

Consul's ``Address`` is an address ("Specifies the address of the service",
``api-docs/agent/service#register-service``), not ``host:port`` text: Consul's DNS
interface answers an ``Address`` that is no IP address with a CNAME to it, and Consul's
Go api users, Envoy and consul-template join it with the port themselves
(``net.JoinHostPort``), so ``"[::1]"`` reached every consumer but meshkit as a name no
resolver knows or as ``[[::1]]:port``. ``serve()`` already drops the brackets (its
``advertise_host``: "brackets dropped"); a direct ``register()`` did not.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import aiohttp
import pytest

from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.discovery.consul_double import ConsulDouble

pytestmark = pytest.mark.timeout(30)

CASES = [
    ("[::1]", "::1", "[::1]"),
    ("[2001:db8::5]", "2001:db8::5", "[2001:db8::5]"),
    # a zone written as in a URI (RFC 6874 "%25"): the address names zone eth0
    ("[fe80::1%25eth0]", "fe80::1%eth0", "[fe80::1%25eth0]"),
    # unbracketed and other hosts are sent as they are (control)
    ("::1", "::1", "[::1]"),
    ("127.0.0.1", "127.0.0.1", "127.0.0.1"),
]


async def _raw_entries(double: ConsulDouble, service: str) -> list[dict[str, Any]]:
    """The agent's health answer for ``service`` as any other Consul client reads it."""
    async with aiohttp.ClientSession() as session, session.get(
            f"{double.url}/v1/health/service/{service}?passing=1") as resp:
        assert resp.status == 200
        return list(await resp.json())


@pytest.mark.parametrize(("given", "address", "uri_host"), CASES,
                         ids=["loopback", "global", "zone", "bare-control", "ipv4-control"])
async def test_a_bracketed_ipv6_host_is_registered_as_the_address(
        given: str, address: str, uri_host: str) -> None:
    service = unique_service()
    async with ConsulDouble() as double:
        registry = ConsulRegistry(ConsulOptions(addr=double.addr, ttl_s=30))
        try:
            await registry.register(make_instance(service, 1, host=given))
            entries = await _raw_entries(double, service)
            assert len(entries) == 1
            sent = entries[0]["Service"]["Address"]
            # what Consul's DNS, Go api users and Envoy need: an IP address, no brackets
            assert sent == address
            assert str(ipaddress.ip_address(sent)) == address
            # meshkit's own watch reads it back as a dialable target
            collector = Collector(registry, service)
            try:
                seen = await collector.next(10.0)
            finally:
                await collector.stop()
            (found,) = seen
            assert found.address == f"{uri_host}:41001"
        finally:
            await registry.close()
