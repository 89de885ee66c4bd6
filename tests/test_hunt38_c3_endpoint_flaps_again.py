"""An endpoint that flaps (leaves the registry and comes back at the same address: a
lease or TTL that lapsed under load) more than once while a stream runs on it. After
the first flap the stream's sub-channel is kept until its calls end; at the second, the
sub-channel made at the first return (which carried no call) finished draining before
the instance was back, and with it went the record of the departure, so the return
no longer kept the stream's sub-channel: the stream was cut ``UNAVAILABLE`` "its
endpoint left and drain_timeout_s ran out" although its server never went away."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.support.echo import method
from tests.support.wait import until
from tests.test_hunt37_a9_endpoint_flap_keeps_streams import _DRAIN_S, _setup

pytestmark = pytest.mark.timeout(40)


async def _flap(ch: meshkit.MeshChannel, registry: LocalRegistry, inst: Instance) -> None:
    """Away long enough for the idle sub-channel of the last return to finish its drain
    (it has no call), well within the grace of the stream's own."""
    await registry.deregister(inst)
    await until(lambda: not ch.endpoints(), what="the endpoint gone")
    await asyncio.sleep(_DRAIN_S / 3)
    await registry.register(inst)
    await ch.wait_for_endpoints(1)


async def test_a_stream_survives_its_endpoint_flapping_again(registry: LocalRegistry) -> None:
    """Three flaps: the stream runs on past the grace of each departure and ends OK."""
    async with _setup(registry) as (ch, release, inst, _port):
        call = ch.unary_stream(method("ServerStream"))(b"x", timeout=30)
        assert await call.read() == b"0"
        for _ in range(3):
            await _flap(ch, registry, inst)
            await asyncio.sleep(_DRAIN_S * 3)  # well past the grace of the departure
            assert not call.done(), (await call.code(), await call.details())
        release.set()
        assert await asyncio.wait_for(call.read(), 10) == b"end"
        assert await asyncio.wait_for(call.read(), 10) is grpc.aio.EOF
        assert await call.code() is grpc.StatusCode.OK


async def test_a_stream_of_an_endpoint_flapped_twice_that_leaves_for_good_is_cut(
        registry: LocalRegistry) -> None:
    """Kept after two flaps, the stream is still cut once its endpoint leaves for good,
    and the channel keeps nothing of the endpoint then."""
    async with _setup(registry) as (ch, _release, inst, _port):
        call = ch.unary_stream(method("ServerStream"))(b"x", timeout=30)
        assert await call.read() == b"0"
        for _ in range(2):
            await _flap(ch, registry, inst)
        await registry.deregister(inst)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call.read(), 10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "drain_timeout_s" in (info.value.details() or "")
        # and nothing of it is held on to: every sub-channel it had is closed, and the
        # record of its departure (a closed sub-channel) forgotten, as after one flap
        pool = ch._pool
        await until(lambda: not pool._left and not pool._replaced,
                    what="the departed endpoint's sub-channels forgotten")
