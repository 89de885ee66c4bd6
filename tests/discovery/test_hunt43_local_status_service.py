"""Every built-in registry takes ``status(service)`` (the Consul and etcd ones answer for
that service's watches), so a caller asks any of them the same way; the local registry,
one file for every service, answers with its own status."""

from __future__ import annotations

import asyncio
from pathlib import Path

from meshkit.discovery import LocalOptions, LocalRegistry
from tests.discovery.conformance import make_instance, unique_service


def test_the_local_registry_takes_a_service(tmp_path: Path) -> None:
    async def main() -> None:
        registry = LocalRegistry(LocalOptions(path=tmp_path))
        try:
            service = unique_service()
            await registry.register(make_instance(service, 1))
            assert registry.status(service) == registry.status()
            assert registry.status(unique_service()) == registry.status()
        finally:
            await registry.close()

    asyncio.run(main())
