"""A server the application marks NOT_SERVING on its health servicer leaves the mesh
clients' endpoint lists (the registry) within a bound, and comes back when SERVING again,
as a Kubernetes readiness probe takes a pod out of its Service's endpoints."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import meshkit
from meshkit.balancer import RoundRobin
from meshkit.discovery import EtcdOptions, EtcdRegistry, LocalOptions, LocalRegistry
from tests.support.echo import add_echo, method
from tests.support.etcd import EtcdCluster, running_etcd
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_BOUND_S = 10.0  # a watch round and a registry write, with a loaded box's margin


def _server(instance_id: str, registry: Any, **opts: Any) -> meshkit.MeshServer:
    options: dict[str, Any] = {"insecure": True, "instance_id": instance_id, "admin": None,
                               "drain_delay_s": 0.0, "grace_s": 1.0, **opts}
    return meshkit.MeshServer("echo", [add_echo(instance_id)], registry=registry,
                              options=meshkit.ServeOptions(**options))


async def _landing(ch: meshkit.MeshChannel, n: int = 20) -> collections.Counter[str]:
    """Which instances answered ``n`` calls."""
    call = ch.unary_unary(method("Unary"))
    got: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        reply = await call(b"x", timeout=5)
        got[reply.split(b"|")[0].decode()] += 1
    return got


async def _only(ch: meshkit.MeshChannel, ids: set[str]) -> bool:
    """Whether 20 calls in a row (round robin) landed on ``ids`` alone, every one of them
    answering."""
    return set(await _landing(ch)) == ids


async def _follows_health(reg_server: Any, reg_client: Any, name: str) -> None:
    """Two servers a, b; a's ``name`` status set NOT_SERVING: calls land on b alone
    within the bound; SERVING again: a answers again within the bound."""
    a, b = _server("a", reg_server), _server("b", reg_server)
    await a.start()
    await b.start()
    try:
        opts = meshkit.DialOptions(insecure=True, balancer=RoundRobin)
        async with meshkit.dial("echo", registry=reg_client, options=opts) as ch:
            await until(lambda: _only(ch, {"a", "b"}), timeout_s=_BOUND_S,
                        what="both instances answering")
            await a.health.set(name, NOT_SERVING)
            await until(lambda: _only(ch, {"b"}), timeout_s=_BOUND_S, interval_s=0.1,
                        what="calls leaving the NOT_SERVING instance")
            assert set(await _landing(ch, 40)) == {"b"}  # and staying off it
            assert a.live and not a.ready  # still up, just out of the mesh
            await a.health.set(name, SERVING)
            await until(lambda: _only(ch, {"a", "b"}), timeout_s=_BOUND_S, interval_s=0.1,
                        what="the instance back once SERVING")
            assert a.ready
    finally:
        await a.drain()
        await b.drain()


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[LocalRegistry]:
    reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=3.0, poll_interval_s=0.05))
    yield reg
    await reg.close()


@pytest.mark.parametrize("name", ["echo", ""], ids=["service-name", "whole-server"])
async def test_local_not_serving_instance_leaves_and_returns(
        local: LocalRegistry, name: str) -> None:
    """Local registry: the mesh service name's status, or the whole server's (``""``),
    NOT_SERVING takes the instance out of the clients' lists; SERVING brings it back."""
    await _follows_health(local, local, name)


@pytest.fixture(scope="module")
def etcd_node(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_etcd(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


async def test_etcd_not_serving_instance_leaves_and_returns(etcd_node: EtcdCluster) -> None:
    """etcd (a real node; the client reads through a registry of its own): NOT_SERVING
    takes the instance out of the clients' lists; SERVING brings it back."""
    opts = EtcdOptions(endpoints=tuple(etcd_node.endpoints), ttl_s=5)
    server_reg, client_reg = EtcdRegistry(opts), EtcdRegistry(opts)
    try:
        await _follows_health(server_reg, client_reg, "echo")
    finally:
        await server_reg.close()
        await client_reg.close()


async def test_not_serving_at_start_is_not_registered_until_serving(
        local: LocalRegistry) -> None:
    """An application warming up (NOT_SERVING set before start()) is not listed until
    it says SERVING (not even for a moment: start() does not register it)."""
    reg = _Counting(local)
    a = _server("a", reg)
    await a.health.set("echo", NOT_SERVING)
    await a.start()
    try:
        assert reg.registers == 0 and not a.ready
        await asyncio.sleep(0.3)
        assert await local.instances("echo") == frozenset()
        await a.health.set("echo", SERVING)
        await until(lambda: _listed(local, {"a"}), timeout_s=_BOUND_S, what="registered")
        assert reg.registers == 1 and a.ready
    finally:
        await a.drain()
    assert await local.instances("echo") == frozenset()


async def _listed(reg: LocalRegistry, ids: set[str]) -> bool:
    return {i.instance_id for i in await reg.instances("echo")} == ids


@pytest.fixture
async def consul() -> AsyncIterator[Any]:
    from tests.discovery.consul_double import ConsulDouble

    async with ConsulDouble(grpc_stagger_s=0.05) as double:
        yield double


def _consul_registry(double: Any, check: str) -> Any:
    from meshkit.discovery import ConsulOptions, ConsulRegistry

    return ConsulRegistry(ConsulOptions(
        addr=double.addr, check=check, ttl_s=3, check_interval_s=0.2, wait_s=1,
        watch_query_interval_s=0.05, request_timeout_s=2))


async def test_consul_ttl_not_serving_instance_leaves_and_returns(consul: Any) -> None:
    """Consul with a TTL check (which only says the process runs): the server withdraws
    itself while NOT_SERVING and registers again once SERVING."""
    server_reg, client_reg = (_consul_registry(consul, "ttl"), _consul_registry(consul, "ttl"))
    try:
        await _follows_health(server_reg, client_reg, "echo")
    finally:
        await server_reg.close()
        await client_reg.close()


@pytest.mark.parametrize("check", ["grpc", "both"])
async def test_consul_grpc_check_takes_the_instance_out_itself(consul: Any, check: str) -> None:
    """Consul with a gRPC check: the agent's own check takes the NOT_SERVING instance out
    (as before); the server leaves it registered, so it is listed as failing, not gone."""
    server_reg, client_reg = (_consul_registry(consul, check), _consul_registry(consul, check))
    a = _server("a", server_reg)
    await a.start()
    try:
        await a.health.set("echo", NOT_SERVING)
        await until(lambda: _failing(client_reg, {"a"}), timeout_s=_BOUND_S,
                    what="the agent's check failing the instance")
        assert a.live and not a.ready
        await a.health.set("echo", SERVING)
        await until(lambda: _passing(client_reg, {"a"}), timeout_s=_BOUND_S,
                    what="the agent's check passing the instance again")
    finally:
        await a.drain()
        await server_reg.close()
        await client_reg.close()


async def _failing(reg: Any, ids: set[str]) -> bool:
    snap = await reg.snapshot("echo")
    return {i.instance_id for i in snap.failing} == ids and not snap.live


async def _passing(reg: Any, ids: set[str]) -> bool:
    snap = await reg.snapshot("echo")
    return {i.instance_id for i in snap.live} == ids and not snap.failing


class _Counting:
    """A registry passing every call on to ``inner``, counting the writes; the first
    ``fail_deregisters`` deregistrations fail (a registry briefly unreachable)."""

    def __init__(self, inner: LocalRegistry, fail_deregisters: int = 0) -> None:
        self.inner = inner
        self.registers = 0
        self.deregisters = 0
        self.fail_deregisters = fail_deregisters

    async def register(self, instance: Any) -> None:
        self.registers += 1
        await self.inner.register(instance)

    async def deregister(self, instance: Any) -> None:
        self.deregisters += 1
        if self.fail_deregisters:
            self.fail_deregisters -= 1
            from meshkit.errors import RegistryError

            raise RegistryError("registry unreachable (test)")
        await self.inner.deregister(instance)

    def watch(self, service: str) -> Any:
        return self.inner.watch(service)

    def status(self) -> Any:
        return self.inner.status()

    async def close(self) -> None:
        pass


async def test_follow_health_off_keeps_the_old_behaviour(local: LocalRegistry) -> None:
    """ServeOptions(follow_health=False): a NOT_SERVING server stays registered (only its
    /readyz says so), as before."""
    a = _server("a", local, follow_health=False)
    await a.start()
    try:
        await a.health.set("echo", NOT_SERVING)
        await asyncio.sleep(1.0)
        assert await _listed(local, {"a"}) and not a.ready
    finally:
        await a.drain()


async def test_flapping_status_stays_out_until_it_settles(local: LocalRegistry) -> None:
    """A status flapping faster than readmit_after_s withdraws the instance once and
    registers it again once, after it settled SERVING (no write per flap)."""
    reg = _Counting(local)
    a = _server("a", reg, readmit_after_s=0.6)
    await a.start()
    assert reg.registers == 1
    try:
        for _ in range(10):
            await a.health.set("echo", NOT_SERVING)
            await asyncio.sleep(0.05)
            await a.health.set("echo", SERVING)
            await asyncio.sleep(0.1)
        assert reg.deregisters == 1 and reg.registers == 1
        assert await _listed(local, set())
        await until(lambda: _listed(local, {"a"}), timeout_s=_BOUND_S, what="registered")
        assert reg.registers == 2 and reg.deregisters == 1 and a.ready
    finally:
        await a.drain()


async def test_failed_withdrawal_is_tried_again(local: LocalRegistry) -> None:
    """A deregistration the registry fails is tried again (the instance leaves)."""
    reg = _Counting(local, fail_deregisters=1)
    a = _server("a", reg)
    await a.start()
    try:
        await a.health.set("", NOT_SERVING)
        await until(lambda: _listed(local, set()), timeout_s=_BOUND_S, what="withdrawn")
        assert reg.deregisters == 2
    finally:
        await a.drain()


@pytest.mark.parametrize("status", ["serving", "withdrawn", "readmitting"])
async def test_a_drain_keeps_the_instance_out(local: LocalRegistry, status: str) -> None:
    """A drain takes the instance out for good whatever the follower was doing: the
    drain's own NOT_SERVING is not followed, nor is a withdrawn instance registered again
    (its SERVING pending readmit_after_s when the drain began)."""
    reg = _Counting(local)
    a = _server("a", reg, readmit_after_s=0.3, drain_delay_s=0.5)
    await a.start()
    if status != "serving":
        await a.health.set("echo", NOT_SERVING)
        await until(lambda: _listed(local, set()), timeout_s=_BOUND_S, what="withdrawn")
    if status == "readmitting":
        await a.health.set("echo", SERVING)
    before = reg.registers
    await a.drain()
    await asyncio.sleep(0.5)
    assert await _listed(local, set()) and reg.registers == before


class _NoShutdownHealth(health.aio.HealthServicer):
    """A user's health servicer whose enter_graceful_shutdown() fails (the drain logs it
    and goes on): the statuses stay as they were through the drain."""

    async def enter_graceful_shutdown(self) -> None:
        raise RuntimeError("broken override (test)")


async def test_a_drain_keeps_the_instance_out_without_its_not_serving(
        local: LocalRegistry) -> None:
    """A drain whose health servicer does not go NOT_SERVING (its
    enter_graceful_shutdown() failed) still keeps a withdrawn instance out, its SERVING
    pending readmit_after_s when the drain began, through drain_delay_s."""
    reg = _Counting(local)
    servicer = _NoShutdownHealth()
    a = meshkit.MeshServer(
        "echo", [add_echo("a"), (health_pb2_grpc.add_HealthServicer_to_server, servicer)],
        registry=reg, options=meshkit.ServeOptions(
            insecure=True, instance_id="a", admin=None, grace_s=1.0, readmit_after_s=0.2,
            drain_delay_s=1.0))
    await a.start()
    await a.health.set("echo", NOT_SERVING)
    await until(lambda: _listed(local, set()), timeout_s=_BOUND_S, what="withdrawn")
    await a.health.set("echo", SERVING)
    before = reg.registers
    await a.drain()
    assert await _listed(local, set()) and reg.registers == before


def test_options_checked() -> None:
    """follow_health must be a bool and readmit_after_s a number of seconds >= 0."""
    from meshkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"follow_health.*'yes'"):
        meshkit.ServeOptions(insecure=True, follow_health="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"readmit_after_s.*-1"):
        meshkit.ServeOptions(insecure=True, readmit_after_s=-1)


class _PeerReadingHealth(health.aio.HealthServicer):
    """A user's health servicer whose Watch reads the caller's peer first (the server's
    own watch has no caller: it fails), so the server falls back to checking."""

    async def Watch(self, request: Any, context: Any) -> None:
        context.peer()
        await super().Watch(request, context)


async def test_a_watch_that_cannot_be_followed_is_checked(local: LocalRegistry) -> None:
    """A health servicer whose Watch the server cannot follow: the status is checked
    every second instead, and the instance still leaves."""
    a = meshkit.MeshServer(
        "echo", [add_echo("a"), (health_pb2_grpc.add_HealthServicer_to_server,
                                 _PeerReadingHealth())],
        registry=local, options=meshkit.ServeOptions(
            insecure=True, instance_id="a", admin=None, grace_s=1.0, drain_delay_s=0))
    await a.start()
    try:
        assert await _listed(local, {"a"})
        await a.health.set("", NOT_SERVING)
        await until(lambda: _listed(local, set()), timeout_s=_BOUND_S, what="withdrawn")
    finally:
        await a.drain()
