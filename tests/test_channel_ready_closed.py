"""``channel_ready()`` on a closed channel raises ``grpc.aio.UsageError`` ("Channel is
closed."), as grpc.aio's does, when called after ``close()`` and when the channel closes
while it waits (meshkit/channel.py).

meshkit's raised ``MeshRpcError`` ``CANCELLED`` (an ``AioRpcError``) instead: code written
for grpc.aio (``except grpc.aio.UsageError``: the channel is gone, stop) let it escape,
and ``wait_for_state_change``, the same API's other half, raises ``UsageError``
already."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry


async def test_channel_ready_on_a_closed_channel_raises_usage_error(
        registry: LocalRegistry) -> None:
    raw = grpc.aio.insecure_channel("127.0.0.1:9")
    mesh = meshkit.dial("nobody", registry=registry,
                        options=meshkit.DialOptions(insecure=True))
    for ch in (raw, mesh):
        waiting = asyncio.ensure_future(ch.channel_ready())
        await asyncio.sleep(0.1)
        await ch.close()
        with pytest.raises(grpc.aio.UsageError):
            await asyncio.wait_for(waiting, 3)
        with pytest.raises(grpc.aio.UsageError):
            await asyncio.wait_for(ch.channel_ready(), 3)
