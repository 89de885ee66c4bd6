"""EtcdRegistry: an instance whose deregistration failed (etcd unreachable while a server
drained) is withdrawn once etcd answers again, not kept alive by the registry for as long
as it stays open. A real etcd node behind a TCP proxy."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

import meshkit
from meshkit.discovery import EtcdOptions, EtcdRegistry, Instance
from meshkit.errors import RegistryError
from tests.discovery.conformance import make_instance, unique_service
from tests.support.etcd import EtcdCluster, require_etcd_binary, running_etcd
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

_FAST = {"ttl_s": 2, "request_timeout_s": 0.5, "operation_timeout_s": 1.0,
         "backoff_base_s": 0.05, "backoff_max_s": 0.2}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A single real etcd node for this module's tests."""
    require_etcd_binary()
    with running_etcd(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


async def _live(reader: EtcdRegistry, service: str) -> frozenset[Instance]:
    return (await reader.snapshot(service)).live


async def _live_once_back(reg: EtcdRegistry, reader: EtcdRegistry,
                          service: str) -> frozenset[Instance]:
    """``service``'s live instances once ``reg``'s keep-alive got through to etcd again,
    a few keep-alive rounds and one owned-key check (every ttl_s) later."""
    await until(lambda: reg.status().writable is True, timeout_s=10,
                what="the keep-alive through again")
    await asyncio.sleep(2 * _FAST["ttl_s"])
    return await _live(reader, service)


async def test_a_server_drained_while_etcd_was_unreachable_leaves_once_it_is_back(
        node: EtcdCluster) -> None:
    """A server given a registry of the application's (shared with its channels) drains
    while etcd cannot be reached: the drain's deregistration fails (logged) and the server
    stops. The registry kept the instance as its own (to let deregister be called again,
    which nothing does), so once etcd answered again the keep-alive renewed its lease (or
    put it back under a new one): the stopped server stayed listed as live for as long as
    the registry stayed open. Its key is now deleted by the keep-alive once etcd answers,
    and never put back, while another instance of the registry stays registered."""
    service = unique_service()
    other = make_instance(service, 9)
    async with TcpProxy("127.0.0.1", node.members[0].client_port) as proxy:
        reg = EtcdRegistry(EtcdOptions(endpoints=(f"http://{proxy.address}",), **_FAST))
        reader = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), **_FAST))
        srv = meshkit.MeshServer(service, registry=reg, options=meshkit.ServeOptions(
            insecure=True, admin=None, drain_delay_s=0, grace_s=1))
        try:
            await reg.register(other)  # the application's own, kept registered
            await srv.start()
            drained = srv.instance
            assert drained is not None
            assert await _live(reader, service) == {drained, other}
            await proxy.stop()  # etcd unreachable (connection refused)
            await asyncio.wait_for(srv.drain(), 20)
            await proxy.start()
            assert await _live_once_back(reg, reader, service) == {other}
        finally:
            await proxy.start()
            await reg.close()
            await reader.close()


async def test_a_failed_deregister_raises_and_the_key_goes_later(node: EtcdCluster) -> None:
    """``deregister`` still raises ``RegistryError`` when etcd cannot be reached; the
    instance is no longer kept alive (it was renewed for good): the keep-alive deletes its
    keys once etcd answers, ``status()`` saying not writable until then, and with no other
    instance the lease is not renewed either."""
    service = unique_service()
    instance = make_instance(service, 1)
    async with TcpProxy("127.0.0.1", node.members[0].client_port) as proxy:
        reg = EtcdRegistry(EtcdOptions(endpoints=(f"http://{proxy.address}",), **_FAST))
        reader = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), **_FAST))
        try:
            await reg.register(instance)
            await proxy.stop()
            with pytest.raises(RegistryError, match="cannot deregister"):
                await reg.deregister(instance)
            # keep-alive rounds meanwhile fail to delete its keys: the registry is still
            # reported not writable (a round with nothing else to write counted as a
            # success)
            await asyncio.sleep(3 * _FAST["ttl_s"] / 3 + 0.5)
            assert reg.status().writable is False
            await proxy.start()
            await until(lambda: reg.status().writable is True, timeout_s=10,
                        what="the keep-alive deleting the keys")
            assert not reg._stale
            await asyncio.sleep(_FAST["ttl_s"] + 1)
            assert await _live(reader, service) == frozenset()
            await reg.deregister(instance)  # again: nothing left to delete, no error
        finally:
            await proxy.start()
            await reg.close()
            await reader.close()


async def test_a_deregister_cancelled_while_etcd_hangs_withdraws_the_instance(
        node: EtcdCluster) -> None:
    """A deregistration cancelled while etcd does not answer (a drain bounds it to 10 s,
    less than a write's ``operation_timeout_s + request_timeout_s`` at the defaults):
    the instance is withdrawn as after a failure, and its key deleted by the keep-alive
    once etcd answers, while the registry's other instance stays (it was renewed for
    good)."""
    service = unique_service()
    instance, other = make_instance(service, 1), make_instance(service, 2)
    async with TcpProxy("127.0.0.1", node.members[0].client_port) as proxy:
        reg = EtcdRegistry(EtcdOptions(endpoints=(f"http://{proxy.address}",),
                                       **{**_FAST, "operation_timeout_s": 30.0}))
        reader = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), **_FAST))
        try:
            await reg.register(instance)
            await reg.register(other)
            proxy.blackhole()
            leaving = asyncio.create_task(reg.deregister(instance))
            await asyncio.sleep(0.5)
            leaving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leaving
            await proxy.start()
            assert await _live_once_back(reg, reader, service) == {other}
        finally:
            await proxy.start()
            await reg.close()
            await reader.close()
