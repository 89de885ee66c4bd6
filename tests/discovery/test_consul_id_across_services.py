"""ConsulRegistry: one instance id registered by two services (Consul test double —
not Consul; ``tests/discovery/test_consul_real.py`` runs the same check against a real
agent when ``CONSUL_HTTP_ADDR`` names one).

A Consul agent keys its services by ``ID``, unique per agent (api-docs/agent/service,
"ID ... must be unique per agent"): registering an ID another service holds replaces that
service, and the deregistration of an ID removes whichever service holds it. So one pod
serving two services under ``instance_id=$POD_NAME`` (which etcd keeps apart) made the
first service vanish from discovery without an error, and a second server's failed start,
withdrawing the registration it attempted, took the first one's away too. A register of an
id another service holds at the agent (or in this registry) is now refused
(``RegistryError`` naming the id and that service); a deregister leaves an id another
service holds alone; the same service still takes its id over (a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from meshkit.discovery import Instance
from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from meshkit.errors import RegistryError
from tests.discovery.consul_double import ConsulDouble
from tests.discovery.test_consul import FAST


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    """A running Consul agent double."""
    async with ConsulDouble() as d:
        yield d


def _inst(service: str, port: int) -> Instance:
    return Instance(service=service, instance_id="pod-1", host="127.0.0.1", port=port)


async def check_an_id_held_by_another_service_is_refused(options: ConsulOptions,
                                                         held_by: Any) -> None:
    """The check, on the agent ``options`` names; ``held_by()`` returns the service name
    the agent holds ``pod-1`` for, or ``None``."""
    one, two = ConsulRegistry(options), ConsulRegistry(options)
    ledger = _inst("ledger", 9101)
    try:
        await one.register(ledger)
        # another process (registry), then this registry itself
        for reg in (two, one):
            with pytest.raises(RegistryError) as err:
                await reg.register(_inst("billing", 9102))
            assert "'pod-1'" in str(err.value) and "'ledger'" in str(err.value), err.value
            assert await held_by() == "ledger"
            # withdrawing what the refused start attempted (MeshServer's undo) takes
            # nothing away from ledger
            await reg.deregister(_inst("billing", 9102))
            assert await held_by() == "ledger"
        await asyncio.sleep(3 * options.ttl_s)  # ledger still kept alive
        assert await held_by() == "ledger"
        # the same service takes its id over (a restarted process)
        moved = dataclasses.replace(ledger, port=9201)
        await two.register(moved)
        assert await held_by() == "ledger"
    finally:
        for reg in (one, two):
            for inst in (ledger, _inst("billing", 9102)):
                with contextlib.suppress(RegistryError):
                    await reg.deregister(inst)
            await reg.close()


async def test_an_id_held_by_another_service_is_refused(double: ConsulDouble) -> None:
    async def held_by() -> str | None:
        svc = double.services.get("pod-1")
        return None if svc is None else svc.name

    await check_an_id_held_by_another_service_is_refused(
        ConsulOptions(addr=double.addr, **FAST), held_by)


async def test_a_register_with_an_agent_that_never_answers_fails_in_one_timeout() -> None:
    """The id lookup before a first register is bounded like the write: an agent that
    accepts connections and never answers fails register() in about one
    ``request_timeout_s`` (the lookup's), not one for the lookup and another for the PUT.
    A real listening socket that reads nothing (its writers kept: from Python 3.13 a
    StreamWriter collected closes its connection, and register() failed at once)."""
    held: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda r, w: held.append(w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reg = ConsulRegistry(ConsulOptions(addr=f"127.0.0.1:{port}",
                                       **{**FAST, "request_timeout_s": 1.0}))
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(RegistryError, match="cannot register 'pod-1' with"):
            await reg.register(_inst("ledger", 9101))
        took = loop.time() - start
        # one timeout is 1 s; two (the old lookup + PUT) are 2 s or more
        assert 0.9 <= took < 1.95, took
    finally:
        await reg.close()
        server.close()
