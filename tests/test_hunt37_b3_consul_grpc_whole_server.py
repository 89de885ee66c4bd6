"""With Consul's gRPC check (``check="grpc"`` or ``"both"``) a server whose application
marks the whole server (``""``) NOT_SERVING leaves the passing instances, as it leaves
the local and etcd registries (``ServeOptions.follow_health``): the agent checks ``""``
besides the service name."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

import meshkit
from meshkit.discovery import ConsulOptions, ConsulRegistry, Instance
from tests.support.echo import add_echo
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_BOUND_S = 10.0  # a few check intervals and a watch round, with a loaded box's margin


@pytest.fixture
async def consul() -> AsyncIterator[Any]:
    from tests.discovery.consul_double import ConsulDouble

    async with ConsulDouble(grpc_stagger_s=0.05) as double:
        yield double


def _registry(double: Any, check: str, **opts: Any) -> ConsulRegistry:
    return ConsulRegistry(ConsulOptions(**{
        "addr": double.addr, "check": check, "ttl_s": 3, "check_interval_s": 0.2,
        "wait_s": 1, "watch_query_interval_s": 0.05, "request_timeout_s": 2, **opts}))


async def _state(reg: ConsulRegistry) -> tuple[set[str], set[str]]:
    snap = await reg.snapshot("echo")
    return ({i.instance_id for i in snap.live}, {i.instance_id for i in snap.failing})


@pytest.mark.parametrize("check", ["grpc", "both"])
@pytest.mark.parametrize("name", ["", "echo"], ids=["whole-server", "service-name"])
async def test_not_serving_leaves_the_passing_instances(consul: Any, check: str,
                                                        name: str) -> None:
    """``""`` or the service name NOT_SERVING: the instance turns failing (out of every
    watch) within a few check intervals; SERVING again: passing again."""
    server_reg, client_reg = _registry(consul, check), _registry(consul, check)
    a = meshkit.MeshServer("echo", [add_echo("a")], registry=server_reg,
                           options=meshkit.ServeOptions(insecure=True, instance_id="a",
                                                        admin=None, drain_delay_s=0.0,
                                                        grace_s=1.0))
    await a.start()
    try:
        await until(lambda: _is(client_reg, ({"a"}, set())), timeout_s=_BOUND_S,
                    what="the instance passing")
        await a.health.set(name, NOT_SERVING)
        await until(lambda: _is(client_reg, (set(), {"a"})), timeout_s=_BOUND_S,
                    interval_s=0.1, what="the NOT_SERVING instance failing")
        await a.health.set(name, SERVING)
        await until(lambda: _is(client_reg, ({"a"}, set())), timeout_s=_BOUND_S,
                    interval_s=0.1, what="the instance passing again")
    finally:
        await a.drain()
        await server_reg.close()
        await client_reg.close()


async def _is(reg: ConsulRegistry, want: tuple[set[str], set[str]]) -> bool:
    return await _state(reg) == want


@pytest.mark.parametrize("health_service", [None, "orderd.v1.Orders", ""],
                         ids=["default", "named", "whole-server"])
async def test_grpc_checks_payload(consul: Any, health_service: str | None) -> None:
    """The agent gets one gRPC check for the name it asks about and one for ``""`` (none
    twice: ``grpc_health_service=""`` registers the whole server's alone)."""
    reg = _registry(consul, "grpc", grpc_health_service=health_service)
    try:
        await reg.register(Instance(service="orderd", instance_id="orderd-1",
                                    host="127.0.0.1", port=41001))
        checks = consul.registrations[-1]["Checks"]
        targets = [c["GRPC"] for c in checks]
        named = "orderd" if health_service is None else health_service
        want = ([f"127.0.0.1:41001/{named}"] if named else []) + ["127.0.0.1:41001"]
        assert targets == want
        ids = [c["CheckID"] for c in checks]
        assert len(set(ids)) == len(ids)
        assert all(re.fullmatch(r"service:orderd-1:grpc(-server)?:[0-9a-f]{8}", i)
                   for i in ids), ids
        assert all(c["Status"] == "passing" for c in checks)
    finally:
        await reg.close()


@pytest.mark.parametrize("check", ["grpc", "both"])
async def test_a_server_warming_up_is_not_registered_passing(consul: Any, check: str) -> None:
    """A server NOT_SERVING when start() registers (warming up) is not registered until
    SERVING with a gRPC check either (it was registered passing, the agent's first run of
    its check up to check_interval_s away, and got calls meanwhile); once SERVING it is
    registered, and the agent's checks follow its health from then on (a later
    NOT_SERVING lists it failing, not gone)."""
    from tests.discovery.consul_double import ConsulDouble

    # the agent's first run of a check a whole interval (20 s) after its registration
    async with ConsulDouble() as slow:
        server_reg = _registry(slow, check, check_interval_s=20.0)
        client_reg = _registry(slow, check)
        a = meshkit.MeshServer("echo", [add_echo("a")], registry=server_reg,
                               options=meshkit.ServeOptions(
                                   insecure=True, instance_id="a", admin=None,
                                   drain_delay_s=0.0, grace_s=1.0, readmit_after_s=0.0))
        await a.health.set("echo", NOT_SERVING)
        await a.start()
        try:
            for _ in range(5):
                assert await _state(client_reg) == (set(), set())
                await asyncio.sleep(0.1)
            assert not a.stats().registered
            await a.health.set("echo", SERVING)
            await until(lambda: _is(client_reg, ({"a"}, set())), timeout_s=_BOUND_S,
                        interval_s=0.1, what="registered once SERVING")
            assert a.stats().registered
            # the agent's (here: the registration's) checks from now on
            await a.health.set("echo", NOT_SERVING)
            await asyncio.sleep(0.5)
            assert await _state(client_reg) == ({"a"}, set())  # the agent's run not yet
            assert len(slow.registrations) == 1 and a.stats().registered
        finally:
            await a.drain()
            await server_reg.close()
            await client_reg.close()
