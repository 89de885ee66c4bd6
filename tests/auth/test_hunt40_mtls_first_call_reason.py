"""The first call that fails on an mTLS endpoint that cannot be connected says why.

The handshake probe (:mod:`meshkit.auth._probe`) runs when an endpoint goes
``TRANSIENT_FAILURE``, which is what fails the first call: that call's error was
"all 1 endpoints are failing or ejected" with no reason, the reason only in the next
call's error, ``stats()`` and the log (its probe answered a few milliseconds after).
Now a call no endpoint can take, while a probe of the channel is still under way, waits
for it (at most a second, and half the time left before its deadline), so that its
error carries the reason. Successful calls never wait: only that error path does.
Real grpc.aio servers on loopback, the cases of ``test_hunt39_h6_mtls_connect_error``.
"""

from __future__ import annotations

import time

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.auth.conftest import Pki, StartServer
from tests.auth.test_hunt39_h6_mtls_connect_error import CASES, _call, _server_credentials

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("case", sorted(CASES))
async def test_the_first_failing_call_carries_the_reason(
    case: str,
    pki: Pki,
    other_pki: Pki,
    registry: LocalRegistry,
    start_server: StartServer,
) -> None:
    make_credentials, expected = CASES[case]
    port = await start_server(make_credentials(pki, other_pki))
    await registry.register(Instance(service="whod", instance_id="w1", host="127.0.0.1", port=port))
    opts = meshkit.DialOptions(tls=pki.issue("clientd"), retry=None, outlier=None)
    async with meshkit.dial("whod", registry=registry, options=opts) as ch:
        first = await _call(ch)
        assert first.code() is grpc.StatusCode.UNAVAILABLE
        details = first.details() or ""
        assert f"(w1 at 127.0.0.1:{port}: " in details, details
        for part in expected:
            assert part in details, (part, details)


async def test_a_short_deadline_still_fails_unavailable_in_time(
    pki: Pki,
    registry: LocalRegistry,
    start_server: StartServer,
) -> None:
    # the wait for the reason takes at most half the time left: the call still ends
    # UNAVAILABLE, before its deadline
    port = await start_server(None)  # plaintext
    await registry.register(Instance(service="whod", instance_id="w1", host="127.0.0.1", port=port))
    opts = meshkit.DialOptions(tls=pki.issue("clientd"), retry=None, outlier=None)
    async with meshkit.dial("whod", registry=registry, options=opts) as ch:
        start = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ch.unary_unary("/test.Auth/Whoami")(b"", timeout=2.0)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE, info.value
        assert time.monotonic() - start < 2.0


async def test_a_working_endpoint_is_not_delayed(
    pki: Pki,
    registry: LocalRegistry,
    start_server: StartServer,
) -> None:
    port = await start_server(_server_credentials(pki, "whod"))
    await registry.register(Instance(service="whod", instance_id="w1", host="127.0.0.1", port=port))
    opts = meshkit.DialOptions(tls=pki.issue("clientd"), retry=None, outlier=None)
    async with meshkit.dial("whod", registry=registry, options=opts) as ch:
        assert await ch.unary_unary("/test.Auth/Whoami")(b"", timeout=5)
        assert ch._pool.diagnosis is not None
        assert ch._pool.diagnosis._queued() == 0  # no probe: nothing to wait for
