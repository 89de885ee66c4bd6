"""EtcdRegistry: a write fails within ``operation_timeout_s`` plus one request's bound,
however many members there are (loopback members that accept and never answer)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry
from meshkit.errors import RegistryError
from tests.discovery.conformance import make_instance

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def silent_members() -> AsyncIterator[list[str]]:
    """Five loopback endpoints that accept connections and never answer (members gone
    silent: a partition, a frozen process)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    servers = [await asyncio.start_server(accept, "127.0.0.1", 0) for _ in range(5)]
    yield [f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers]
    for writer in held:
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_a_write_to_silent_members_fails_within_its_operation_timeout(
        silent_members: list[str]) -> None:
    """register() went on with a pass over every member once operation_timeout_s had
    passed, each member taking request_timeout_s: with five silent members and
    operation_timeout_s=0.55, request_timeout_s=0.5 it failed after 2.5 s (with the
    defaults and three members, 12 s for a 10 s operation timeout; the longer the list,
    the longer past it), past the bound the registry itself counts on for a write
    (operation_timeout_s + request_timeout_s: how long its session outlives a
    drain's deregister). No attempt starts once operation_timeout_s has passed."""
    reg = EtcdRegistry(EtcdOptions(endpoints=tuple(silent_members), ttl_s=3,
                                   request_timeout_s=0.5, operation_timeout_s=0.55,
                                   connect_timeout_s=0.5, backoff_base_s=0.01,
                                   backoff_max_s=0.02))
    try:
        t0 = time.monotonic()
        with pytest.raises(RegistryError, match="cannot register"):
            await reg.register(make_instance("svc", 1))
        elapsed = time.monotonic() - t0
        # the bound is 1.05 s (two members tried); the old way took 2.5 s
        assert elapsed < 1.8, elapsed
    finally:
        await reg.close()
