"""``wait_for_endpoints`` on an mTLS channel whose endpoints fail the handshake says why.

A readiness gate at start-up (``await channel.wait_for_endpoints(timeout_s=...)``) over
mTLS, the only endpoint a plaintext server (or one with an expired certificate, another
CA's...): the ``TimeoutError`` read ``0 of 1 endpoints of 'whod' READY after 5.0 s (1
known)`` and nothing more, though the channel's TLS probe of the endpoint
(:mod:`meshkit.auth._probe`) had found why within milliseconds. Now the message ends
with the first endpoint's reason, as the status of a call no endpoint can take does.
"""

from __future__ import annotations

import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.auth.conftest import Pki, StartServer

pytestmark = pytest.mark.timeout(60)


async def test_the_readiness_gate_s_timeout_names_why_the_endpoint_fails(
        pki: Pki, registry: LocalRegistry, start_server: StartServer) -> None:
    port = await start_server(None)  # plaintext
    await registry.register(Instance(service="whod", instance_id="w1", host="127.0.0.1",
                                     port=port))
    opts = meshkit.DialOptions(tls=pki.issue("clientd"), retry=None, outlier=None)
    async with meshkit.dial("whod", registry=registry, options=opts) as ch:
        with pytest.raises(TimeoutError) as info:
            await ch.wait_for_endpoints(timeout_s=5.0)
    assert str(info.value) == (
        f"0 of 1 endpoints of 'whod' READY after 5.0 s (1 known; w1 at 127.0.0.1:{port}: "
        "the server answered without TLS (a plaintext server?))")
