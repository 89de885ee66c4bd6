"""The probe of an endpoint at a zoned IPv6 address connects in that zone.

What a user saw: an instance registered at a link-local address, ``host="fe80::1%eth0"``:
its ``Instance.address`` is gRPC target text, the zone's ``%`` written ``%25``
(``"[fe80::1%25eth0]:50051"``, RFC 6874; grpc percent-decodes it). The TLS probe took the
host from that text by stripping the brackets, so it connected to ``fe80::1%25eth0``:
zone ``25eth0``, an interface that does not exist (``getaddrinfo`` fails: the reason
read "connect failed: ..." whatever the server's fault), and a numeric zone ``%251`` named
interface 251, not 1. Now the host is decoded as grpc decodes it (``bare_host``).
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from meshkit.auth._probe import HandshakeDiagnosis
from meshkit.discovery import Instance

pytestmark = pytest.mark.timeout(30)

CASES = {
    "named_zone": ("fe80::1%eth0", "fe80::1%eth0"),
    "numeric_zone": ("fe80::1%1", "fe80::1%1"),
    "no_zone": ("::1", "::1"),
    "ipv4": ("127.0.0.1", "127.0.0.1"),
}


@pytest.mark.parametrize("host,expected", CASES.values(), ids=list(CASES))
async def test_the_probe_gets_the_host_grpc_connects_to(host: str, expected: str) -> None:
    probed: list[tuple[str, int]] = []

    async def probe(h: str, port: int) -> str | None:
        probed.append((h, port))
        return None

    address = Instance(service="whod", instance_id="w1", host=host, port=50051).address
    diagnosis = HandshakeDiagnosis("whod", probe)
    run: Any = diagnosis.observe("w1", address, grpc.ChannelConnectivity.TRANSIENT_FAILURE)
    assert run is not None
    await run
    await diagnosis.explain(address)
    assert probed == [(expected, 50051)] * 2

