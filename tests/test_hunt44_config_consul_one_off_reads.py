"""A one-off read of one service (``snapshot``, ``failing``) that fails while other
services' watches read leaves the registry readable (counted in ``read_errors``, named in
``last_error``), as a failing watch of one service does: it used to set ``status()``'s
``readable`` to False until another watch's next answer (a blocking query: up to
``wait_s``), though the agent answered every watch. With no watch running it still marks
the registry unreadable (nothing else says the agent reads). Each watched service's own
``status(service)`` was never affected."""

from __future__ import annotations

import pytest
from aiohttp import web

from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from meshkit.errors import RegistryError
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.discovery.consul_double import ConsulDouble

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def bad_service(monkeypatch: pytest.MonkeyPatch) -> str:
    """A service whose health path the agent answers with 500."""
    bad = unique_service()
    original = ConsulDouble._health_service

    async def health_service(self: ConsulDouble, request: web.Request) -> web.Response:
        if request.match_info["name"] == bad:
            return web.Response(status=500, text="rpc error: too large")
        return await original(self, request)

    monkeypatch.setattr(ConsulDouble, "_health_service", health_service)
    return bad


async def test_a_one_off_read_of_one_service_leaves_the_watches_readable(
        bad_service: str) -> None:
    """snapshot() of a failing service: RegistryError; the registry stays readable."""
    good = unique_service()
    async with ConsulDouble() as double:
        opts = ConsulOptions(addr=double.addr, wait_s=2.0, request_timeout_s=1.0)
        owner, reader = ConsulRegistry(opts), ConsulRegistry(opts)
        a = make_instance(good, 1)
        watcher = Collector(reader, good)
        try:
            await owner.register(a)
            await watcher.until_set({a})
            for call in (reader.snapshot, reader.failing):
                with pytest.raises(RegistryError):
                    await call(bad_service)
            status = reader.status()
            assert status.readable is True, status
            assert status.read_errors == 2 and bad_service in (status.last_error or "")
            assert reader.status(good).readable is True
        finally:
            await watcher.stop()
            await owner.close()
            await reader.close()


async def test_without_watches_a_failed_one_off_read_marks_the_registry(
        bad_service: str) -> None:
    """No watch runs: the failed read is the registry's (readable False)."""
    async with ConsulDouble() as double:
        reader = ConsulRegistry(ConsulOptions(addr=double.addr, request_timeout_s=1.0))
        try:
            with pytest.raises(RegistryError):
                await reader.snapshot(bad_service)
            assert reader.status().readable is False
        finally:
            await reader.close()
