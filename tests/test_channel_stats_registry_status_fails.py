"""A registry whose ``status()`` fails does not hide its channel from ``/metrics`` and
``/debug/mesh`` (meshkit/channel.py, ``MeshChannel.stats``).

``stats()`` let an exception of ``registry.status()`` (a third-party registry's bug, a
``status`` that returns something else than a ``RegistryStatus``) out, and every reader
of it (``live_channel_stats``, the metrics collector, the final counters at close) skips
a channel whose ``stats()`` raises: the channel's endpoints, retries and ejections
vanished from ``/metrics`` and ``/debug/mesh`` for its whole life, and its final counters
were never recorded. The pool's own use of ``status()`` (a call's status message) already
says nothing more in that case; ``stats()`` now reports ``registry=None`` as for a registry
that reports no health."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

import meshkit
from meshkit.discovery import Instance
from meshkit.observability._live import live_channel_stats


class _Registry:
    """Answers one instance (nothing listens there: no connection is needed), and its
    ``status`` is broken as given."""

    def __init__(self, status: Any) -> None:
        self.status = status

    async def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        yield frozenset({Instance(service=service, instance_id="a", host="127.0.0.1",
                                  port=9)})
        while True:
            await __import__("asyncio").Event().wait()

    async def close(self) -> None:
        pass


def _raises() -> Any:
    raise RuntimeError("status is broken")


@pytest.mark.parametrize("status", [_raises, lambda: {"readable": True}],
                         ids=["raises", "not-a-RegistryStatus"])
async def test_stats_survive_a_registry_status_that_fails(status: Any) -> None:
    ch = meshkit.dial("svcstats", registry=_Registry(status),  # type: ignore[arg-type]
                      options=meshkit.DialOptions(insecure=True))
    try:
        await ch.wait_for_endpoints(0, timeout_s=5)
        stats = ch.stats()
        assert stats.registry is None
        assert stats.service == "svcstats"
        assert "svcstats" in [s.service for s in live_channel_stats()]
    finally:
        await ch.close()


@pytest.mark.parametrize("status", [_raises, lambda: {"readable": False}],
                         ids=["raises", "not-a-RegistryStatus"])
async def test_a_call_waiting_for_discovery_survives_a_registry_status_that_fails(
        status: Any) -> None:
    """A call that waits for the first discovery answer looks at the registry's status
    (meshkit/_pool.py, ``_resolved_or_unreadable``): one that fails is taken as no
    status, the call waits for the answer."""
    reg = _Registry(status)
    ch = meshkit.dial("svcstats", registry=reg,  # type: ignore[arg-type]
                      options=meshkit.DialOptions(insecure=True, resolve_timeout_s=0.3))
    try:
        assert await ch._pool._resolved_or_unreadable() is None
    finally:
        await ch.close()


class _BadRepr:
    """A filter that keeps everything, whose ``__repr__`` raises (a bug of its own), or
    is huge."""

    def __init__(self, huge: bool = False) -> None:
        self.huge = huge

    def __call__(self, instances: Any) -> Any:
        return instances

    def __repr__(self) -> str:
        if self.huge:
            return "x" * 100_000
        raise RuntimeError("no repr")


async def test_stats_survive_a_filter_whose_repr_fails() -> None:
    """stats() named the filters with repr(): one whose __repr__ raised hid the channel
    from /metrics and /debug/mesh (as above); one with a huge repr put all of it in every
    /debug/mesh answer. Named as in a call's status now: cut to 200 characters, by type
    when repr raises."""
    reg = _Registry(lambda: meshkit.discovery.RegistryStatus(kind="local"))
    opts = meshkit.DialOptions(insecure=True, filters=(_BadRepr(), _BadRepr(huge=True)))
    ch = meshkit.dial("svcstats", registry=reg,  # type: ignore[arg-type]
                      options=opts)
    try:
        stats = ch.stats()
        names = stats.policies["filters"]
        assert names[0] == "<_BadRepr>" and len(names[1]) <= 200, names
        assert "svcstats" in [s.service for s in live_channel_stats()]
    finally:
        await ch.close()
