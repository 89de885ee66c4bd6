"""``MeshChannel.stats()`` (what ``/debug/mesh`` and the registry-health metrics show per
channel) reports how the registry reads the channel's own service.

The registries' ``status()`` without a service is unreadable only while every watched
service fails; the pool asks ``status(service)`` since this round, but ``stats()`` kept
the registry-wide answer, so a channel whose own service's watch was refused (etcd
``permission denied`` on its prefix) showed the registry as readable on its debug page
while its calls failed "the service registry cannot be read". A registry double with a
per-service ``status``, and one whose ``status`` takes no argument (a custom registry
written before ``status(service)``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import meshkit
from meshkit.discovery import Instance, RegistryStatus

pytestmark = pytest.mark.timeout(60)


class _Registry:
    """A registry whose watch never answers and whose ``status`` is given."""

    def __init__(self) -> None:
        self.status: Any = None

    async def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        await asyncio.Event().wait()
        yield frozenset()

    async def close(self) -> None:
        pass


def _st(readable: bool | None) -> RegistryStatus:
    return RegistryStatus(kind="double", readable=readable, writable=None)


@pytest.mark.parametrize(("service", "readable"), [("refused", False), ("fine", True)],
                         ids=["refused", "fine"])
async def test_stats_report_the_channels_own_service(service: str, readable: bool) -> None:
    reg = _Registry()
    asked: list[str | None] = []

    def status(name: str | None = None) -> RegistryStatus:
        asked.append(name)
        return _st(True if name is None else name != "refused")

    reg.status = status
    opts = meshkit.DialOptions(insecure=True)
    async with meshkit.dial(service, registry=reg, options=opts) as ch:  # type: ignore[arg-type]
        stats = ch.stats()
        assert stats.registry is not None
        assert stats.registry["readable"] is readable, stats.registry
        assert stats.registry["ok"] is readable, stats.registry
    assert service in asked, asked


async def test_stats_of_a_registry_whose_status_takes_no_service() -> None:
    reg = _Registry()
    reg.status = lambda: _st(False)
    async with meshkit.dial("svc", registry=reg,  # type: ignore[arg-type]
                            options=meshkit.DialOptions(insecure=True)) as ch:
        stats = ch.stats()
        assert stats.registry is not None
        assert stats.registry["readable"] is False, stats.registry
