"""A live server whose ``stats()`` raises (a custom registry whose ``status()`` throws)
is not ready for ``/readyz`` (503), but ``meshkit_server_ready`` for its service just
disappeared from ``/metrics`` (the collector kept only its counters), so an alert on
``meshkit_server_ready == 0`` never fired for it. It now reads 0, as ``/readyz`` says;
another server of the process keeps its own 1."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.discovery._types import RegistryStatus
from meshkit.observability import rpc_metrics
from tests.support.echo import add_echo
from tests.support.wait import until


class _StatusThrows(LocalRegistry):
    failing = False

    def status(self) -> RegistryStatus:
        if self.failing:
            raise RuntimeError("status backend refused")
        return super().status()


def _ready(prom: CollectorRegistry) -> dict[str, float]:
    return {s.labels["service"]: s.value
            for f in text_string_to_metric_families(generate_latest(prom).decode())
            for s in f.samples if s.name == "meshkit_server_ready"
            and s.labels["service"].startswith("hunt36-")}


def _server(name: str, registry: LocalRegistry) -> meshkit.MeshServer:
    return meshkit.MeshServer(name, [add_echo(name)], registry=registry,
                              options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                           grace_s=0.5))


async def test_a_server_whose_stats_raise_reads_not_ready(registry: LocalRegistry) -> None:
    prom = CollectorRegistry()
    rpc_metrics(prom)
    bad_reg = _StatusThrows(registry.options)
    good, bad = _server("hunt36-good", registry), _server("hunt36-bad", bad_reg)
    try:
        await good.start()
        await bad.start()
        await until(lambda: good.ready and bad.ready, what="both registered")
        assert _ready(prom) == {"hunt36-good": 1.0, "hunt36-bad": 1.0}
        bad_reg.failing = True
        assert _ready(prom) == {"hunt36-good": 1.0, "hunt36-bad": 0.0}
        bad_reg.failing = False
        assert _ready(prom) == {"hunt36-good": 1.0, "hunt36-bad": 1.0}
    finally:
        bad_reg.failing = False
        await bad.drain()
        await good.drain()
        await bad_reg.close()
