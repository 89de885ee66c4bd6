"""EtcdRegistry: a keep-alive sent to a member that hangs fails over to the next member
before the lease runs out, whatever ``request_timeout_s``. A real etcd node behind a TCP
proxy that turns into a black hole."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry
from tests.discovery.conformance import make_instance, unique_service
from tests.support.etcd import EtcdCluster, require_etcd_binary, running_etcd
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A single real etcd node for this module's tests."""
    require_etcd_binary()
    with running_etcd(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.mark.parametrize("request_timeout_s", [3.0, 6.0], ids=["equal-ttl", "over-ttl"])
async def test_a_hung_member_does_not_let_the_lease_expire(
        node: EtcdCluster, request_timeout_s: float) -> None:
    """Two members listed, the first one turning silent (accepts, never answers: a
    black-holed network path, a member stuck on a dead leader) after the registration:
    the keep-alive waited ``request_timeout_s`` on it before trying the second, so with
    ``request_timeout_s >= ttl_s`` (accepted at construction) the lease expired while it
    waited, the instance dropped out of every watch and was registered again under a new
    lease (``status().reopened``). Each keep-alive request is now bounded by
    ``min(request_timeout_s, ttl_s / 3)``: it fails over in time and the instance never
    leaves."""
    service = unique_service()
    instance = make_instance(service, 1)
    direct = node.endpoints[0]
    async with TcpProxy("127.0.0.1", node.members[0].client_port) as proxy:
        opts = EtcdOptions(endpoints=(f"http://{proxy.address}", direct), ttl_s=3,
                           request_timeout_s=request_timeout_s, operation_timeout_s=10.0,
                           backoff_base_s=0.05, backoff_max_s=0.3, last_seen_ttl_s=0)
        owner = EtcdRegistry(opts)
        reader = EtcdRegistry(EtcdOptions(endpoints=(direct,), ttl_s=3,
                                          request_timeout_s=2.0, last_seen_ttl_s=0))
        try:
            await owner.register(instance)
            assert (await reader.snapshot(service)).live == {instance}
            proxy.blackhole()
            missing_at: list[float] = []
            end = time.monotonic() + 3 * opts.ttl_s
            while time.monotonic() < end:
                if instance not in (await reader.snapshot(service)).live:
                    missing_at.append(time.monotonic())
                await asyncio.sleep(0.1)
            assert missing_at == [] and owner.status().reopened == 0
        finally:
            await proxy.start()  # heal: close() must not wait on the black hole
            await owner.close()
            await reader.close()
