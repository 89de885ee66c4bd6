"""A :class:`meshkit.MeshChannel` dropped without ``close()`` while its event loop goes on
(``meshkit.dial()`` per request, the channel never closed: a grpc.aio channel is closed
when it is collected).

Before: the channel was never collected (its pool's discovery watch task held it
through the pool's sub-channel factory and the balancer's callbacks), so each one dropped
kept its watch task, its sub-channels' connections and, dialed with a registry URI or
none (``MESHKIT_REGISTRY``), a registry of its own with its poll loop and worker thread,
for the rest of the loop's life: a thread and tasks more per channel dropped. Now it is
collected, closed in its loop as ``close()`` closes it (its own registry too), with a
warning and a ``ResourceWarning``; the stub-held channel (a multicallable alive) is not.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import warnings
import weakref
from pathlib import Path

import pytest
import structlog

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from tests.support.echo import add_echo, method

pytestmark = pytest.mark.timeout(60)

_ROUNDS = 5


def _channel_tasks() -> list[str]:
    """The tasks of channels' pools (discovery watch, connectivity trackers) running."""
    return sorted(n for t in asyncio.all_tasks()
                  if (n := getattr(t.get_coro(), "__qualname__", "")).startswith(
                      "EndpointPool."))


def _local_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("meshkit-local"))


async def _settled(check: object, within_s: float = 10.0) -> None:
    """Wait (bounded) until ``check()`` is true."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not check() and loop.time() < end:  # type: ignore[operator]
        gc.collect()
        await asyncio.sleep(0.05)


async def test_a_dropped_channel_is_collected_and_closed_with_its_registry(
    tmp_path: Path,
) -> None:
    where = tmp_path / "reg"
    server_reg = LocalRegistry(LocalOptions(path=where, ttl_s=15.0))
    server = meshkit.MeshServer("dropped", [add_echo("d1")], registry=server_reg,
                                options=meshkit.ServeOptions(insecure=True, admin=None,
                                                             drain_delay_s=0))
    await server.start()
    try:
        threads_before = _local_threads()
        refs: list[weakref.ref[meshkit.MeshChannel]] = []
        with warnings.catch_warnings(record=True) as seen, \
                structlog.testing.capture_logs() as logs:
            warnings.simplefilter("always")
            for _ in range(_ROUNDS):
                channel = meshkit.dial("dropped", registry=f"local://{where}",
                                       options=meshkit.DialOptions(insecure=True))
                assert await channel.unary_unary(method("Unary"))(b"x", timeout=10) \
                    == b"d1|x"
                refs.append(weakref.ref(channel))
                del channel  # dropped, never closed
            await _settled(lambda: all(r() is None for r in refs))
            assert [r() is None for r in refs] == [True] * _ROUNDS  # collected
            # and closed: their watch tasks and their registries' worker threads gone
            await _settled(lambda: _local_threads() <= threads_before
                           and not _channel_tasks())
        assert _local_threads() <= threads_before
        assert _channel_tasks() == []
        events = [e for e in logs if "garbage-collected without close" in e["event"]]
        assert len(events) == _ROUNDS and events[0]["service"] == "dropped"
        assert sum(issubclass(w.category, ResourceWarning)
                   and "MeshChannel" in str(w.message) for w in seen) == _ROUNDS
    finally:
        await server.drain()
        await server_reg.close()


async def test_a_channel_a_stub_holds_is_not_collected(tmp_path: Path) -> None:
    """Only the channel object dropped: a multicallable (what a generated stub keeps)
    keeps it alive and working."""
    where = tmp_path / "reg"
    reg = LocalRegistry(LocalOptions(path=where, ttl_s=15.0))
    server = meshkit.MeshServer("held", [add_echo("h1")], registry=reg,
                                options=meshkit.ServeOptions(insecure=True, admin=None,
                                                             drain_delay_s=0))
    await server.start()
    try:
        channel = meshkit.dial("held", registry=reg,
                               options=meshkit.DialOptions(insecure=True))
        unary = channel.unary_unary(method("Unary"))
        ref = weakref.ref(channel)
        del channel
        for _ in range(3):
            gc.collect()
            assert await unary(b"y", timeout=10) == b"h1|y"
        kept = ref()
        assert kept is not None
        await kept.close()
    finally:
        await server.drain()
        await reg.close()


async def test_a_balancer_notice_after_the_channel_was_collected_is_dropped(
    tmp_path: Path,
) -> None:
    """The pool's tasks run on for a loop turn after the channel is collected (its close
    is scheduled): an outlier ejection's notice then reaching the collected channel's
    callbacks is dropped, not raised into the balancer (a ``UsageError`` before)."""
    reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=15.0))
    try:
        channel = meshkit.dial("gone", registry=reg,
                               options=meshkit.DialOptions(insecure=True))
        balancer = channel._balancer
        on_change, on_probe_free = balancer._on_change, balancer._on_probe_free  # type: ignore[attr-defined]
        ref = weakref.ref(channel)
        del channel
        gc.collect()
        assert ref() is None
        assert on_change("e1", True) is None
        assert on_probe_free("e1") is None
        await asyncio.sleep(0.05)  # (its close runs)
    finally:
        await reg.close()
