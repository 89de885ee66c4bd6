"""EtcdRegistry with ``user``/``password`` (review of 45459c44): the authenticate shared by
the requests that find no token was one per event loop, whatever member it went to.

A member that takes a connection but does not answer (partitioned from the others: etcd's
authenticate waits for a leader and a Raft proposal; a member restarted and catching up)
held it: the request that started it timed out on its own bound a moment before the
shared task did, failed over to the next member, found the task still in flight there
and waited for it, so it failed at the healthy member with the hung member's timeout
(and failed that healthy member over). With two endpoints (two of a cluster's members,
two load-balancer names: a usual ``ETCDCTL_ENDPOINTS``) every attempt went so: each
register, read and keep-alive failed while one member hung, where each request had
authenticated at its own member before. Now the requests share the authenticate of the
member they go to. A real etcd node with authentication on, and a server on 127.0.0.1
that takes connections and never answers, listed first."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry
from tests.discovery.conformance import make_instance, unique_service
from tests.support.etcd import EtcdCluster, require_etcd_binary

pytestmark = pytest.mark.timeout(60)

_PASSWORD = "sh4red-Pa55word"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(require_etcd_binary(), Path(tmp_path_factory.mktemp("etcd")))
    try:
        cluster.start_blocking()
        cluster.add_root(_PASSWORD)
        cluster.enable_auth()
        yield cluster
    finally:
        cluster.close()


async def _silent_member() -> tuple[asyncio.Server, str, list[bytes]]:
    """A server that reads what it is sent and never answers."""
    seen: list[bytes] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                seen.append(data)
        finally:
            writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", seen


def _registry(node: EtcdCluster, silent: str) -> EtcdRegistry:
    return EtcdRegistry(EtcdOptions(
        endpoints=(silent, *node.endpoints), user="root", password=_PASSWORD,
        ttl_s=5, request_timeout_s=1.0, operation_timeout_s=3.0,
        backoff_base_s=0.05, backoff_max_s=0.2))


async def test_a_read_authenticates_at_the_next_member(node: EtcdCluster) -> None:
    """snapshot() (one pass over the members): the silent member's authenticate times
    out, the next member's is its own (before: it waited for the silent one's and failed
    with its timeout: RegistryError)."""
    server, silent, seen = await _silent_member()
    try:
        async with _registry(node, silent) as registry:
            start = time.monotonic()
            snapshot = await registry.snapshot(unique_service())
            assert not snapshot.live
            assert time.monotonic() - start < 2.5
            assert any(b"/auth/authenticate" in data for data in seen), seen
    finally:
        server.close()


async def test_a_register_goes_on_at_the_next_member(node: EtcdCluster) -> None:
    """register() (writes persist for operation_timeout_s): before, every attempt went
    silent member -> next member waiting for the silent one's authenticate, and it failed
    after 3 s though the next member was fine."""
    server, silent, _ = await _silent_member()
    service = unique_service()
    try:
        async with _registry(node, silent) as registry:
            await registry.register(make_instance(service, 1))
            assert (await registry.snapshot(service)).live == {make_instance(service, 1)}
            await registry.deregister(make_instance(service, 1))
    finally:
        server.close()
