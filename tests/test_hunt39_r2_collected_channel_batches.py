"""A :class:`meshkit.MeshChannel` dropped without ``close()`` (collected: c963edc closes it
in its loop) while its pool still builds sub-channels a batch per loop turn (d73493c's
first discovery answer of a large service, 451b031's renewal of every sub-channel).

Before: each batch built after the collection asked the collected channel for a
sub-channel (through its weak reference: ``UsageError: the channel was garbage-collected``)
and logged ``sub-channel could not be built; endpoint kept out`` (or ``could not be
rebuilt``) at ERROR for every endpoint of it, counted in ``sub_channel_errors`` (128 ERROR
lines for a service of 400 instances dropped at its first answer), though nothing was
wrong with any endpoint. Now the pool knows its channel was dropped (``dropped``) and
builds nothing more, silently, until the channel's close (already on its way) ends it.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from pathlib import Path

import pytest
import structlog

import meshkit
from meshkit._pool import BUILD_BATCH, EndpointPool
from meshkit.discovery import Instance, LocalOptions, LocalRegistry

pytestmark = pytest.mark.timeout(60)

_INSTANCES = 4 * BUILD_BATCH + 10  # a first batch at once, four more loop turns


async def _registry(tmp_path: Path) -> LocalRegistry:
    reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=15.0))
    for i in range(_INSTANCES):  # nothing listens there: sub-channels are built lazily
        await reg.register(Instance(service="big", instance_id=f"b{i:03d}",
                                    host="127.0.0.1", port=1 + i))
    return reg


async def _dropped_until_closed(pool: EndpointPool) -> None:
    """Collect the dropped channel and wait (bounded) until its close has run."""
    gc.collect()
    loop = asyncio.get_running_loop()
    end = loop.time() + 20.0
    while not pool.closed and loop.time() < end:  # noqa: ASYNC110 - a task closes it
        await asyncio.sleep(0.01)
    for _ in range(5):  # whatever the pool's tasks had scheduled meanwhile runs out
        await asyncio.sleep(0.01)


def _build_errors(logs: list[dict[str, object]]) -> list[str]:
    return [str(e["event"]) for e in logs
            if e.get("log_level") == "error" and "sub-channel" in str(e["event"])]


async def test_a_channel_dropped_at_its_first_answer_logs_no_build_errors(
    tmp_path: Path,
) -> None:
    reg = await _registry(tmp_path)
    try:
        with warnings.catch_warnings(), structlog.testing.capture_logs() as logs:
            warnings.simplefilter("ignore", ResourceWarning)
            channel = meshkit.dial("big", registry=reg,
                                   options=meshkit.DialOptions(insecure=True))
            pool = channel._pool
            await pool.resolved.wait()
            # the first batch built, the rest to come a batch per turn (one more batch
            # already with asyncio.eager_task_factory, MESHKIT_TEST_LOOP=eager: the task
            # adding them ran its first step when made, not a turn later)
            assert BUILD_BATCH <= len(pool.endpoints) <= 2 * BUILD_BATCH < _INSTANCES
            del channel  # dropped, never closed
            await _dropped_until_closed(pool)
        assert pool.closed
        assert _build_errors(logs) == []
        assert pool.sub_channel_errors == 0
        assert [e["event"] for e in logs if e.get("log_level") == "warning"] == [
            "channel garbage-collected without close(); closing it now "
            "(close() it, or use 'async with')"]
    finally:
        await reg.close()


async def test_a_channel_dropped_during_a_rebuild_logs_no_rebuild_errors(
    tmp_path: Path,
) -> None:
    reg = await _registry(tmp_path)
    try:
        with warnings.catch_warnings(), structlog.testing.capture_logs() as logs:
            warnings.simplefilter("ignore", ResourceWarning)
            channel = meshkit.dial("big", registry=reg,
                                   options=meshkit.DialOptions(insecure=True))
            pool = channel._pool
            await pool.resolved.wait()
            loop = asyncio.get_running_loop()
            end = loop.time() + 20.0
            while len(pool.endpoints) < _INSTANCES and loop.time() < end:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            assert len(pool.endpoints) == _INSTANCES
            channel.rebuild_sub_channels()  # a renewal: the first batch now, then a turn each
            del channel  # dropped, never closed
            await _dropped_until_closed(pool)
        assert pool.closed
        assert _build_errors(logs) == []
        assert pool.sub_channel_errors == 0
    finally:
        await reg.close()
