"""The endpoint pool (meshkit/_pool.py) when two of its changes land in the same
event-loop turn: a certificate rebuild and a discovery answer. Real grpc.aio servers on
loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.errors import MeshRpcError
from tests.support.echo import handler, method, raw_server
from tests.support.wait import until


@pytest.mark.timeout(90)
@pytest.mark.parametrize("rebuilds", [1, 2], ids=["one-rebuild", "two-rebuilds"])
async def test_an_endpoint_leaving_in_the_turn_of_a_rebuild_still_cuts_its_old_sub_channel(
    registry: LocalRegistry, rebuilds: int,
) -> None:
    """A client holds a bidi stream on endpoint e1; its certificate is renewed
    (``rebuild_sub_channels()``, what the channel's certificate watcher calls, once or
    twice) and, in the same event-loop turn, a discovery answer without e1 arrives (the
    pool's watch task applies it: both are tasks woken in the same iteration, e.g. during
    a rolling deploy that also rotates certificates). The stream on the replaced
    sub-channel gets e1's ``drain_timeout_s`` and is then cut (its reader gets
    ``MeshRpcError`` ``UNAVAILABLE``, test_hunt37_a1_stream_drain_cut), as the pool's
    and ``rebuild``'s docstrings say: a
    sub-channel kept after a rebuild, "if its endpoint leaves meanwhile, it gets that
    endpoint's ``drain_timeout_s``".

    The fault: ``EndpointPool._retire`` lowered the replaced sub-channel's
    ``drain_until`` to now + ``drain_timeout_s`` before its drain task (created by
    ``rebuild`` with unlimited grace) had started; when it started, ``_Conn.close`` set
    ``drain_until = start + inf``, undoing the cut: the old sub-channel and its stream to
    the endpoint that left were kept for ever."""
    async with raw_server(handler("e1")) as (_, port):
        i1 = Instance(service="echo", instance_id="e1", host="127.0.0.1", port=port)
        await registry.register(i1)
        opts = meshkit.DialOptions(insecure=True, retry=None, drain_timeout_s=0.3)
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1)
            call = ch.stream_stream(method("Bidi"))(timeout=60)
            await call.write(b"a")
            assert await call.read() == b"e1|a"
            reader: asyncio.Future[Any] = asyncio.ensure_future(call.read())
            await asyncio.sleep(0.1)  # the reader blocked in read()
            assert not reader.done()
            for _ in range(rebuilds):
                ch.rebuild_sub_channels()
            ch._pool.apply(frozenset())  # the discovery answer without e1, same turn
            await registry.deregister(i1)  # and the registry agrees
            try:
                # 0.3 s of grace; 15 s (50 times it) leaves room on a loaded box
                done, _ = await asyncio.wait({reader}, timeout=15.0)
                assert done, (
                    "the stream on e1's replaced sub-channel still ran 15 s after e1 left "
                    "(drain_timeout_s=0.3): its drain was not cut")
                assert not reader.cancelled(), "the reader ended in CancelledError"
                err = reader.exception()
                assert isinstance(err, MeshRpcError), repr(err)
                assert err.code() is grpc.StatusCode.UNAVAILABLE
                await until(lambda: not ch._pool._draining, timeout_s=15,
                            what="every sub-channel of the endpoint that left closed")
                assert not ch._pool._replaced
            finally:
                call.cancel()
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
