"""A registry asked about the service ``""`` (or ``None``: a variable left unset) refuses
it, ConfigError, as the Consul and etcd registries' watch and snapshot did: the local
registry's instances, failing, snapshot and watch answered an empty set (a watch: that
set, then nothing ever again), and ConsulRegistry.failing("") sent the agent a request for
``/v1/health/service/`` (a RegistryError once it answered), where etcd's refuses it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from meshkit.discovery import ConsulOptions, ConsulRegistry, LocalOptions, LocalRegistry
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


async def _first(registry: Any, service: object) -> object:
    async for instances in registry.watch(service):
        return instances
    return None


_LOCAL: dict[str, Callable[[LocalRegistry, object], Coroutine[Any, Any, object]]] = {
    "instances": lambda r, s: r.instances(s),  # type: ignore[arg-type]
    "failing": lambda r, s: r.failing(s),  # type: ignore[arg-type]
    "snapshot": lambda r, s: r.snapshot(s),  # type: ignore[arg-type]
    "watch": _first,
}


@pytest.mark.parametrize("service", ["empty", "none"])
@pytest.mark.parametrize("method", sorted(_LOCAL))
def test_the_local_registry_refuses_no_service(method: str, service: str,
                                               tmp_path: Path) -> None:
    async def main() -> None:
        registry = LocalRegistry(LocalOptions(path=tmp_path))
        try:
            with pytest.raises(ConfigError) as caught:
                await asyncio.wait_for(
                    _LOCAL[method](registry, {"empty": "", "none": None}[service]), 10)
            assert "service" in str(caught.value)
        finally:
            await registry.close()

    asyncio.run(main())


def test_consul_failing_refuses_no_service_before_any_request() -> None:
    async def main() -> None:
        registry = ConsulRegistry(ConsulOptions(addr="127.0.0.1:1"))
        try:
            with pytest.raises(ConfigError) as caught:
                await registry.failing("")
            assert "service" in str(caught.value)
        finally:
            await registry.close()

    asyncio.run(main())


def test_the_local_registry_still_answers_a_service(tmp_path: Path) -> None:
    async def main() -> None:
        registry = LocalRegistry(LocalOptions(path=tmp_path))
        try:
            assert await registry.instances("orderd") == frozenset()
            assert await asyncio.wait_for(_first(registry, "orderd"), 10) == frozenset()
        finally:
            await registry.close()

    asyncio.run(main())
