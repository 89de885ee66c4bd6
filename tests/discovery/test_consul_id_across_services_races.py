"""ConsulRegistry: one instance id claimed by two services, the cases 49d10f4 left open
(Consul test double — not Consul).

An agent keys services by ``ID``, unique per agent (api-docs/agent/service, register:
"ID ... must be unique per agent"): a ``PUT /v1/agent/service/register`` of an ID another
service holds replaces that service. 49d10f4 refuses a register of such an id after one
``GET /v1/agent/service/<id>``; these tests pin what that lookup alone did not cover:

* two ``register()`` calls of one registry for two services with one id at the same time
  (``asyncio.gather`` of two servers' starts): both looked the id up before either PUT,
  both succeeded, and the keeper kept the second one's payload, so the first service was
  gone while its ``register()`` had returned;
* a keeper whose instance the agent forgot (an agent restarted without persisted state)
  re-registered it with no lookup, replacing another service that had taken the free id
  meanwhile; that one's keeper, its checks replaced, registered it back, and the two
  flipped the entry at every heartbeat (what c0cf776's local registry stops: "a heartbeat
  leaves such an entry to its holder").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from meshkit.discovery import Instance
from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from meshkit.errors import RegistryError
from tests.discovery.consul_double import ConsulDouble
from tests.discovery.test_consul import FAST
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    """A running Consul agent double."""
    async with ConsulDouble() as d:
        yield d


def _inst(service: str, port: int) -> Instance:
    return Instance(service=service, instance_id="pod-1", host="127.0.0.1", port=port)


def _held_by(double: ConsulDouble) -> str | None:
    svc = double.services.get("pod-1")
    return None if svc is None else svc.name


async def test_two_concurrent_registers_of_one_id_for_two_services(
        double: ConsulDouble) -> None:
    """Exactly one of two concurrent register() calls wins; the agent holds the id for
    the winner, and keeps holding it (its keeper keeps the winner's payload)."""
    reg = ConsulRegistry(ConsulOptions(addr=double.addr, **FAST))
    ledger, billing = _inst("ledger", 9101), _inst("billing", 9102)
    try:
        results = await asyncio.wait_for(asyncio.gather(
            reg.register(ledger), reg.register(billing), return_exceptions=True), 10)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1 and isinstance(errors[0], RegistryError), results
        winner = "ledger" if results[0] is None else "billing"
        assert f"registered by service {winner!r}" in str(errors[0]), errors[0]
        assert _held_by(double) == winner
        await asyncio.sleep(3 * FAST["ttl_s"])  # the keeper's rounds
        assert _held_by(double) == winner
    finally:
        for inst in (ledger, billing):
            with contextlib.suppress(RegistryError):
                await reg.deregister(inst)
        await reg.close()


class _Interleaved(ConsulDouble):
    """A double that, once ``armed``, holds a service registration until a deregister
    arrives (at most 0.5 s), and that deregister until the registration is applied: the
    order in which a deregister's lookup misses the id, and its PUT removes it."""

    armed = False

    def __init__(self) -> None:
        super().__init__()
        self.deregister_arrived = asyncio.Event()
        self.registered = asyncio.Event()

    async def _register(self, request: web.Request) -> web.Response:
        if self.armed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.deregister_arrived.wait(), 0.5)
        try:
            return await super()._register(request)
        finally:
            self.registered.set()

    async def _deregister(self, request: web.Request) -> web.Response:
        if self.armed:
            self.deregister_arrived.set()
            await asyncio.wait_for(self.registered.wait(), 5)
        return await super()._deregister(request)


async def test_a_concurrent_deregister_of_another_service_leaves_a_pending_register(
) -> None:
    """A deregister of billing's pod-1 (a refused start's undo) while ledger's register
    of pod-1 is under way in the same registry leaves ledger registered: its lookup
    could miss the id ledger's PUT was about to register, and its PUT remove it."""
    async with _Interleaved() as double:
        double.armed = True
        reg = ConsulRegistry(ConsulOptions(addr=double.addr, **FAST))
        ledger, billing = _inst("ledger", 9101), _inst("billing", 9102)
        try:
            pending = asyncio.ensure_future(reg.register(ledger))
            await until(lambda: any(r.path == "/v1/agent/service/register"
                                    for r in double.requests), timeout_s=5,
                        what="ledger's PUT sent")
            await asyncio.wait_for(reg.deregister(billing), 10)
            await asyncio.wait_for(pending, 10)
            assert _held_by(double) == "ledger"
        finally:
            double.armed = False
            with contextlib.suppress(RegistryError):
                await reg.deregister(ledger)
            await reg.close()


async def test_a_keeper_leaves_a_forgotten_id_another_service_took(
        double: ConsulDouble) -> None:
    """The agent forgets ledger's pod-1 (restarted without state); billing, in another
    process, registers the free id. Ledger's keeper must not take it back: billing
    keeps it over several heartbeats (no flip), with a warning naming billing; once
    billing deregisters, ledger's keeper registers ledger again."""
    # ledger's keeper runs slower than billing's, so billing's register surely lands
    # before ledger's keeper finds its instance forgotten
    one = ConsulRegistry(ConsulOptions(addr=double.addr, **{**FAST, "ttl_s": 1.5}))
    two = ConsulRegistry(ConsulOptions(addr=double.addr, **FAST))
    ledger, billing = _inst("ledger", 9101), _inst("billing", 9102)
    try:
        await one.register(ledger)
        double.forget_all()
        await two.register(billing)
        with capture_logs() as logs:
            seen: set[str | None] = set()
            deadline = asyncio.get_running_loop().time() + 4 * 1.5
            while asyncio.get_running_loop().time() < deadline:
                seen.add(_held_by(double))
                await asyncio.sleep(0.02)
        assert seen == {"billing"}, seen
        warned = [e for e in logs if e.get("holder") == "billing"
                  and e.get("instance_id") == "pod-1"]
        assert warned, logs
        await two.deregister(billing)
        await until(lambda: _held_by(double) == "ledger", timeout_s=10,
                    what="ledger registered again once billing left")
    finally:
        for r, inst in ((one, ledger), (two, billing)):
            with contextlib.suppress(RegistryError):
                await r.deregister(inst)
            await r.close()
