"""The Registry conformance suite: what the README promises of every registry, as checks.

Each ``check_*`` coroutine takes a :class:`Backend` (how to build registry clients on one
shared store, their TTL, and, where the backend can simulate one, an outage) and observes
the registry only through the :class:`~meshkit.discovery.Registry` protocol, so
``test_conformance.py`` runs the very same checks against the local registry, the Consul
agent test double and a real etcd.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from meshkit.discovery import Instance, Registry
from tests.support.wait import until

__all__ = ["CHECKS", "Backend", "Collector", "make_instance", "unique_service"]


def unique_service() -> str:
    """A service name no other test (or earlier run against a real backend) uses."""
    return f"meshkit-test-{uuid.uuid4().hex[:10]}"


def make_instance(service: str, n: int, **kw: Any) -> Instance:
    """Instance number ``n`` of ``service`` on 127.0.0.1 with a tag, meta and weight."""
    fields: dict[str, Any] = {
        "service": service, "instance_id": f"{service}-{n}", "host": "127.0.0.1",
        "port": 41000 + n, "tags": ("v2", f"n{n}"), "meta": {"zone": "a", "n": str(n)},
        "weight": n,
    }
    fields.update(kw)
    return Instance(**fields)


class Collector:
    """Runs ``registry.watch(service)`` in a task and queues every yielded set."""

    def __init__(self, registry: Registry, service: str) -> None:
        self.queue: asyncio.Queue[frozenset[Instance]] = asyncio.Queue()
        self.ended = asyncio.Event()
        self.latest: frozenset[Instance] | None = None
        self.task = asyncio.create_task(self._run(registry, service))

    async def _run(self, registry: Registry, service: str) -> None:
        try:
            async for instances in registry.watch(service):
                self.latest = instances
                self.queue.put_nowait(instances)
        finally:
            self.ended.set()

    async def next(self, timeout_s: float = 5.0) -> frozenset[Instance]:
        """The next yielded set (fails after ``timeout_s``)."""
        async with asyncio.timeout(timeout_s):
            return await self.queue.get()

    async def until_set(self, expected: set[Instance] | frozenset[Instance],
                        timeout_s: float = 5.0) -> float:
        """Consume yields until one equals ``expected``; the seconds it took."""
        t0 = time.monotonic()
        async with asyncio.timeout(timeout_s):
            while await self.queue.get() != expected:
                pass
        return time.monotonic() - t0

    async def stop(self) -> None:
        """Cancel the watch task."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@dataclass
class Backend:
    """One registry backend under test.

    Attributes:
        name: ``"local"``, ``"consul-double"``, ``"etcd"``.
        factory: builds a new registry client on the backend's shared store.
        ttl_s: how long a registration outlives its owner's last heartbeat, seconds.
        expiry_slack_s: extra time the backend may take past ``ttl_s`` to drop a dead
            instance (reaper/lessor period), seconds.
        outage: an async context manager during which the backend cannot be reached, or
            None if it cannot simulate one.
    """

    name: str
    factory: Callable[[], Registry]
    ttl_s: float
    expiry_slack_s: float = 1.0
    outage: Callable[[], AbstractAsyncContextManager[None]] | None = None
    made: list[Registry] = field(default_factory=list)
    collectors: list[Collector] = field(default_factory=list)

    def new(self) -> Registry:
        """A new registry client (closed by :meth:`aclose`)."""
        reg = self.factory()
        self.made.append(reg)
        return reg

    def watch(self, registry: Registry, service: str) -> Collector:
        """A collector of ``registry.watch(service)`` (stopped by :meth:`aclose`)."""
        c = Collector(registry, service)
        self.collectors.append(c)
        return c

    async def aclose(self) -> None:
        """Stop the collectors, close every registry made."""
        for c in self.collectors:
            await c.stop()
        for reg in self.made:
            await reg.close()


async def check_watch_yields_current_set_first(b: Backend) -> None:
    """A watch started after a registration yields the current set first."""
    service = unique_service()
    a = make_instance(service, 1)
    reg = b.new()
    await reg.register(a)
    assert await b.watch(b.new(), service).next() == {a}


async def check_register_and_deregister(b: Backend) -> None:
    """A watch yields [] first, then each registration, and each deregistration at once
    (well within the TTL); deregistering an unknown instance is ignored."""
    service = unique_service()
    a, c = make_instance(service, 1), make_instance(service, 2)
    reg = b.new()
    watcher = b.watch(b.new(), service)
    assert await watcher.next() == frozenset()
    await reg.register(a)
    await watcher.until_set({a})
    await reg.register(c)
    await watcher.until_set({a, c})
    await reg.deregister(a)
    took = await watcher.until_set({c})
    assert took < max(1.0, b.ttl_s / 2), f"deregistration took {took:.2f}s"
    await reg.deregister(c)
    await watcher.until_set(set())
    await reg.deregister(c)  # unknown now: ignored


async def check_ttl_expiry_removes_dead_instance(b: Backend) -> None:
    """An instance whose owner stops heartbeating (closed without deregistering) leaves
    every watch within its TTL plus the backend's slack, and not before a heartbeat
    lapses: it stays while its owner lives."""
    service = unique_service()
    a, c = make_instance(service, 1), make_instance(service, 2)
    owner, survivor = b.new(), b.new()
    await owner.register(a)
    await survivor.register(c)
    watcher = b.watch(b.new(), service)
    await watcher.until_set({a, c})
    await asyncio.sleep(1.5 * b.ttl_s)  # heartbeats keep both across more than one TTL
    assert watcher.latest == {a, c}
    await owner.close()  # stops the heartbeat, does not deregister
    took = await watcher.until_set({c}, timeout_s=b.ttl_s + b.expiry_slack_s + 3)
    assert took <= b.ttl_s + b.expiry_slack_s + 2.5


async def check_fields_round_trip(b: Backend) -> None:
    """Host, port, tags, meta and weight come back as registered."""
    service = unique_service()
    a = make_instance(service, 3, tags=("blue", "v9"), meta={"zone": "b", "k": "v=1;x"},
                      weight=7, port=50123)
    await b.new().register(a)
    (got,) = await b.watch(b.new(), service).next()
    assert (got.instance_id, got.host, got.port, set(got.tags), dict(got.meta), got.weight) == (
        a.instance_id, "127.0.0.1", 50123, {"blue", "v9"}, {"zone": "b", "k": "v=1;x"}, 7)


async def check_services_isolated(b: Backend) -> None:
    """Instances of one service never show in another's watch, even when one name is a
    prefix of the other."""
    service = unique_service()
    other = f"{service}-2"
    reg = b.new()
    a, o = make_instance(service, 1), make_instance(other, 1)
    w_service, w_other = b.watch(reg, service), b.watch(reg, other)
    assert await w_service.next() == frozenset()
    assert await w_other.next() == frozenset()
    await reg.register(a)
    await reg.register(o)
    await w_service.until_set({a})
    await w_other.until_set({o})
    await reg.deregister(o)
    await w_other.until_set(set())
    await asyncio.sleep(0.3)
    assert w_service.latest == {a}


async def check_status_ok(b: Backend) -> None:
    """After a register and a read, status() is ok with no errors, kind named."""
    service = unique_service()
    reg = b.new()
    await reg.register(make_instance(service, 1))
    await b.watch(reg, service).next()
    st = reg.status()
    assert st.ok and st.readable is True and st.writable is True
    assert st.read_errors == 0 and st.write_errors == 0 and st.failing_since_s is None
    assert st.kind == b.name.split("-")[0]


async def check_close_is_clean(b: Backend) -> None:
    """close() ends every watch iterator, leaves no task behind, and is idempotent."""
    service = unique_service()
    reg = b.factory()
    await reg.register(make_instance(service, 1))
    watchers = [Collector(reg, service), Collector(reg, f"{service}-x")]
    for w in watchers:
        await w.next()
    before = {t for t in asyncio.all_tasks() if not t.done()}
    await reg.close()
    async with asyncio.timeout(5):
        for w in watchers:
            await w.ended.wait()
    await reg.close()  # idempotent
    await until(lambda: not any(
        not t.done() and t not in before and t is not asyncio.current_task()
        for t in asyncio.all_tasks()), timeout_s=3, what="no task left by the registry")
    leftover = [t.get_name() for t in asyncio.all_tasks() - before
                if not t.done() and t is not asyncio.current_task()]
    assert not leftover, leftover


async def check_last_known_good_during_outage(b: Backend) -> None:
    """While the backend cannot be reached a watch keeps its last set (yields nothing, never
    an empty set) and status() says so; afterwards it is ok again and follows changes."""
    assert b.outage is not None
    service = unique_service()
    a = make_instance(service, 1)
    owner = b.new()
    await owner.register(a)
    reader = b.new()
    watcher = b.watch(reader, service)
    assert await watcher.next() == {a}
    async with b.outage():
        await until(lambda: reader.status().readable is False, timeout_s=10,
                    what="the watch to notice the outage")
        assert not reader.status().ok
        await asyncio.sleep(0.5)
        assert watcher.queue.empty(), "a watch yielded during the outage"
        assert watcher.latest == {a}
    await until(lambda: reader.status().readable is True, timeout_s=10,
                what="the watch to read again")
    c = make_instance(service, 2)
    await owner.register(c)
    await watcher.until_set({a, c}, timeout_s=10)


CHECKS: dict[str, Callable[[Backend], Awaitable[None]]] = {
    "watch_yields_current_set_first": check_watch_yields_current_set_first,
    "register_and_deregister": check_register_and_deregister,
    "ttl_expiry_removes_dead_instance": check_ttl_expiry_removes_dead_instance,
    "fields_round_trip": check_fields_round_trip,
    "services_isolated": check_services_isolated,
    "status_ok": check_status_ok,
    "close_is_clean": check_close_is_clean,
    "last_known_good_during_outage": check_last_known_good_during_outage,
}


async def aclosing_backend(b: Backend) -> AsyncIterator[Backend]:
    """Yield ``b`` and close what it made (for fixtures)."""
    try:
        yield b
    finally:
        await b.aclose()
