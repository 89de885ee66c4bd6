"""A real 3-member etcd cluster on loopback under a routing mesh: meshkit's own serve() and
dial() with EtcdRegistry, calls flowing all along, while the cluster's leader is killed and
while the member the client talks to is killed. The mesh keeps routing with 0 failed calls
and converges on each change made meanwhile (a new instance joins, one drains).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import EtcdOptions, EtcdRegistry
from tests.support.echo import add_echo, method
from tests.support.etcd import EtcdCluster, running_etcd
from tests.support.wait import until

pytestmark = pytest.mark.timeout(40)

SERVICE = "echo"
FAST: dict[str, Any] = {"ttl_s": 3, "request_timeout_s": 0.5, "backoff_base_s": 0.05,
                        "backoff_max_s": 0.3}


@pytest.fixture(scope="module")
def _members(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """Three etcd members on loopback (heartbeat 50 ms, election timeout 500 ms), started
    once for the module (a 3-member start costs seconds)."""
    with running_etcd(tmp_path_factory.mktemp("etcd-cluster"), size=3) as c:
        yield c


@pytest.fixture
def cluster(_members: EtcdCluster) -> EtcdCluster:
    """The module's three members, every one running and healthy again (a test before
    may have left one killed); each test writes under a key prefix of its own
    (:func:`mesh`), so nothing an earlier test registered is seen."""
    for i in range(len(_members.members)):
        _members.start_member(i)  # a no-op for a running member
    _members.wait_healthy_blocking(list(range(len(_members.members))))
    return _members


class Load:
    """Unary calls in a loop (concurrency 4) through a mesh channel; counts who served."""

    def __init__(self, channel: meshkit.MeshChannel) -> None:
        self.call = channel.unary_unary(method("Unary"), _registered_method=True)
        self.served: Counter[str] = Counter()
        self.failed: list[str] = []
        self.recent: list[str] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run()) for _ in range(4)]

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reply: bytes = await self.call(b"x", timeout=5)
            except grpc.aio.AioRpcError as exc:
                self.failed.append(f"{exc.code().name}: {exc.details()}")
                continue
            who = reply.split(b"|")[0].decode()
            self.served[who] += 1
            self.recent = [*self.recent[-49:], who]
            await asyncio.sleep(0.005)

    def serves(self, ids: set[str]) -> bool:
        """True once the last 50 calls went exactly to ``ids``."""
        return len(self.recent) == 50 and set(self.recent) == ids

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


@asynccontextmanager
async def mesh(cluster: EtcdCluster, client_first: int) -> AsyncIterator[
        tuple[EtcdRegistry, EtcdRegistry, Any, Load]]:
    """Servers e1, e2 registered through one EtcdRegistry; a client on another whose
    member list starts at ``client_first``; load running."""
    prefix = f"/meshkit/test-{uuid.uuid4().hex[:10]}/"  # this test's own keys
    servers_reg = EtcdRegistry(EtcdOptions(endpoints=tuple(cluster.endpoints), prefix=prefix,
                                           **FAST))
    order = cluster.endpoints[client_first:] + cluster.endpoints[:client_first]
    client_reg = EtcdRegistry(EtcdOptions(endpoints=tuple(order), prefix=prefix, **FAST))
    started: list[meshkit.MeshServer] = []

    async def serve(instance_id: str) -> meshkit.MeshServer:
        srv = meshkit.MeshServer(SERVICE, [add_echo(instance_id)], registry=servers_reg,
                                 options=meshkit.ServeOptions(
                                     insecure=True, instance_id=instance_id,
                                     drain_delay_s=1.0, grace_s=1.0))
        await srv.start()
        started.append(srv)
        return srv

    await serve("e1")
    await serve("e2")
    channel = meshkit.dial(SERVICE, registry=client_reg,
                           options=meshkit.DialOptions(insecure=True))
    try:
        await channel.wait_for_endpoints(2)
        load = Load(channel)
        try:
            await until(lambda: load.serves({"e1", "e2"}), timeout_s=10, what="both serving")
            yield servers_reg, client_reg, serve, load
        finally:
            await load.stop()
    finally:
        await channel.close()
        # the calls have stopped: the servers leave together (each drain waits its
        # drain_delay_s), not one after another
        await asyncio.gather(*(srv.drain() for srv in started))
        await servers_reg.close()
        await client_reg.close()


async def test_leader_killed_mid_watch(cluster: EtcdCluster) -> None:
    """Killing the Raft leader while the client watches through a follower: calls keep
    succeeding, an instance that joins right after (registered during the election) is
    found, and the watch goes on after the member returns."""
    leader = cluster.leader()
    follower = (leader + 1) % 3
    async with mesh(cluster, client_first=follower) as (_sreg, client_reg, serve, load):
        assert client_reg.options.endpoints[client_reg._current] == cluster.endpoints[follower]
        cluster.kill(leader)
        await serve("e3")  # registers through whichever member answers
        await until(lambda: load.serves({"e1", "e2", "e3"}), timeout_s=10,
                    what="the client routing to e3")
        cluster.start_member(leader)
        await cluster.wait_healthy()
        new = await serve("e4")
        await until(lambda: load.served["e4"] > 0, timeout_s=10, what="e4 served")
        await new.drain()
        assert not load.failed, load.failed[:5]
        assert client_reg.status().ok


async def test_member_the_client_talks_to_killed(cluster: EtcdCluster) -> None:
    """Killing the member the client's watch is connected to: the watch fails over to
    another member and resumes, calls keep succeeding, and a drained instance leaves."""
    async with mesh(cluster, client_first=0) as (_sreg, client_reg, serve, load):
        target = cluster.endpoints.index(client_reg.options.endpoints[client_reg._current])
        e3 = await serve("e3")
        await until(lambda: load.serves({"e1", "e2", "e3"}), timeout_s=10, what="e3 served")
        cluster.kill(target)
        await e3.drain()  # deregisters through another member, keeps serving 1 s, stops
        await until(lambda: load.serves({"e1", "e2"}), timeout_s=10,
                    what="the client to stop calling e3")
        assert client_reg.options.endpoints[client_reg._current] != cluster.endpoints[target]
        assert not load.failed, load.failed[:5]
        await until(lambda: client_reg.status().readable is True, what="watch reading")


async def test_quorum_lost_keeps_last_endpoints(cluster: EtcdCluster) -> None:
    """Two of three members killed: the survivor has no leader, so it ends the client's
    watch stream (the watch asks for ``hasleader``) instead of leaving it silent; the watch
    keeps its last set, status() says etcd cannot be read, calls keep succeeding; once the
    quorum is back the leases are still there and a new instance is found."""
    async with mesh(cluster, client_first=0) as (_sreg, client_reg, serve, load):
        cluster.kill(1)
        cluster.kill(2)
        await until(lambda: client_reg.status().readable is False, timeout_s=10,
                    what="the watch to notice the lost quorum")
        served = sum(load.served.values())
        await until(lambda: sum(load.served.values()) > served + 50, what="calls going on")
        assert load.serves({"e1", "e2"})
        cluster.start_member(1)
        cluster.start_member(2)
        await cluster.wait_healthy()
        await serve("e3")
        await until(lambda: load.serves({"e1", "e2", "e3"}), timeout_s=10, what="e3 served")
        assert not load.failed, load.failed[:5]
        await until(lambda: client_reg.status().ok, what="registry ok again")
