"""``meshkit_registry_errors_total`` counts a registry's failed reads and writes
(``RegistryStatus.read_errors``/``write_errors``: counted once per registry object, for
all its users). Two channels dialing one target through one registry object each
reported that registry's count, and the collector summed them (3 errors shown as 6);
a channel closed and dialed again through the same registry added its retired count
to the live channel's (3 shown as 6, a jump that ``increase()`` reads as 3 new errors,
``MeshkitRegistryErrors``-style alerts firing with no new error). Now each registry
object counts once per series; one that was freed keeps what it counted (a counter
never goes backwards)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import meshkit
from meshkit.discovery import Instance, RegistryStatus
from meshkit.observability import rpc_metrics

_TARGET = "hunt36-regerrors"


class _FailingReads:
    """A registry whose watch lists nothing and whose status reports ``read_errors``."""

    def __init__(self, read_errors: int) -> None:
        self.read_errors = read_errors

    async def register(self, instance: Instance) -> None:
        pass

    async def deregister(self, instance: Instance) -> None:
        pass

    async def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        yield frozenset()
        await asyncio.Event().wait()

    def status(self) -> RegistryStatus:
        return RegistryStatus(kind="fixed", readable=False, read_errors=self.read_errors)

    async def close(self) -> None:
        pass


def _read_errors(prom: CollectorRegistry) -> float | None:
    for family in text_string_to_metric_families(generate_latest(prom).decode()):
        for s in family.samples:
            if (s.name == "meshkit_registry_errors_total" and s.labels.get("target") == _TARGET
                    and s.labels.get("op") == "read"):
                return s.value
    return None


def _dial(registry: _FailingReads) -> meshkit.MeshChannel:
    return meshkit.dial(_TARGET, registry=registry,
                        options=meshkit.DialOptions(insecure=True))


async def test_one_registry_counts_once_however_many_channels_use_it() -> None:
    prom = CollectorRegistry()
    rpc_metrics(prom)
    shared = _FailingReads(3)
    first, second = _dial(shared), _dial(shared)
    try:
        assert _read_errors(prom) == 3  # not 6: one registry's 3 errors
        await first.close()
        assert _read_errors(prom) == 3
        third = _dial(shared)  # dialed again through it
        assert _read_errors(prom) == 3
        shared.read_errors = 5
        assert _read_errors(prom) == 5
        await second.close()
        await third.close()
        assert _read_errors(prom) == 5  # ended: kept, not dropped
        own = _FailingReads(2)  # another registry object: its own errors add up
        fourth = _dial(own)
        assert _read_errors(prom) == 7
        await fourth.close()
        del own, fourth
        gc.collect()
        assert _read_errors(prom) == 7  # freed: what it counted stays
        again = _dial(shared)
        assert _read_errors(prom) == 7
        await again.close()
    finally:
        for ch in (first, second):
            await ch.close()
