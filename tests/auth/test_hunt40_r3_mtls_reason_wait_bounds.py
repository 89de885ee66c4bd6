"""Review of d0b4c446: the wait of a failing mTLS call for the channel's handshake probe.

A call no endpoint can take waits for the probes under way (so that its error says why),
at most 1 s and half the time left before its deadline. Here the probe never answers (a
stalled peer's handshake: the probe's own bound is 5 s), on real grpc.aio servers over
loopback: the call still fails ``UNAVAILABLE`` within the 1 s bound (not the probe's 5 s),
a cancel during the wait ends the call at once, and a call another endpoint can take is
never held by the hung probe of a failing one.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.auth.conftest import Pki, StartServer
from tests.auth.test_hunt39_h6_mtls_connect_error import _server_credentials

pytestmark = pytest.mark.timeout(90)

METHOD = "/test.Auth/Whoami"


async def _hung_probe(host: str, port: int) -> str | None:
    await asyncio.sleep(60)  # cancelled by the channel's close()
    return None


def _dial(registry: LocalRegistry, pki: Pki) -> meshkit.MeshChannel:
    opts = meshkit.DialOptions(tls=pki.issue("clientd"), retry=None, outlier=None)
    ch = meshkit.dial("whod", registry=registry, options=opts)
    assert ch._pool.diagnosis is not None
    ch._pool.diagnosis._probe = _hung_probe  # type: ignore[method-assign]
    return ch


async def _wait_busy(ch: meshkit.MeshChannel) -> None:
    diagnosis = ch._pool.diagnosis
    assert diagnosis is not None
    async with asyncio.timeout(20):
        while True:
            if diagnosis.busy:
                return
            await asyncio.sleep(0.01)


async def test_a_hung_probe_holds_a_failing_call_one_second_at_most(
    pki: Pki, registry: LocalRegistry, start_server: StartServer
) -> None:
    port = await start_server(None)  # plaintext: the mTLS handshake fails
    await registry.register(Instance(service="whod", instance_id="w1", host="127.0.0.1", port=port))
    async with _dial(registry, pki) as ch:
        for _ in range(2):
            start = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ch.unary_unary(METHOD)(b"", timeout=20)
            took = time.monotonic() - start
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE, info.value
            assert took < 4.0, took  # 1 s bound (+ the connect), not the probe's 5 s+
        assert ch._pool.diagnosis is not None and ch._pool.diagnosis.busy


async def test_a_cancel_during_the_wait_ends_the_call_at_once(
    pki: Pki, registry: LocalRegistry, start_server: StartServer
) -> None:
    port = await start_server(None)
    await registry.register(Instance(service="whod", instance_id="w1", host="127.0.0.1", port=port))
    async with _dial(registry, pki) as ch:
        with pytest.raises(grpc.aio.AioRpcError):  # puts the endpoint in TRANSIENT_FAILURE
            await ch.unary_unary(METHOD)(b"", timeout=20)
        await _wait_busy(ch)
        task = asyncio.ensure_future(ch.unary_unary(METHOD)(b""))  # no deadline
        await asyncio.sleep(0.2)  # in the wait (1 s)
        assert not task.done()
        start = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        assert time.monotonic() - start < 0.5
        # the channel still answers the next call
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ch.unary_unary(METHOD)(b"", timeout=20)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_a_call_another_endpoint_can_take_is_not_held(
    pki: Pki, registry: LocalRegistry, start_server: StartServer
) -> None:
    bad = await start_server(None)
    good = await start_server(_server_credentials(pki, "whod"))
    await registry.register(Instance(service="whod", instance_id="bad", host="127.0.0.1", port=bad))
    await registry.register(
        Instance(service="whod", instance_id="good", host="127.0.0.1", port=good)
    )
    async with _dial(registry, pki) as ch:
        await ch.wait_for_endpoints(1, timeout_s=20)
        await _wait_busy(ch)  # the bad endpoint's probe hangs
        slowest = 0.0
        for _ in range(20):
            start = time.monotonic()
            assert await ch.unary_unary(METHOD)(b"", timeout=20)
            slowest = max(slowest, time.monotonic() - start)
        assert slowest < 0.9, slowest  # never the 1 s wait
