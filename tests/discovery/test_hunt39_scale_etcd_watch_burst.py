"""An etcd watch under a burst of writes (a rolling deploy: hundreds of instances
re-registered within seconds) hands its reader the latest set, not every set in between.

Each etcd watch message became one update of the whole set, queued for the watch's reader;
a reader busy for a while (the balanced channel applies each set to its pool: about 4 ms
over 2,000 endpoints) then got every stale set in turn, each applied in full. Measured
with 2,000 instances all re-registered at new ports (32 writes at a time): the channel's
pool reached the final set 8.6 s after the last write (2,000 applies of the whole set).
Now a reader gets what is queued at once, folded into one set: the same deploy reached
the pool within 10 ms of the last write, in 83 applies."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry, Instance
from meshkit.discovery._etcd import _encode
from tests.discovery.conformance import unique_service
from tests.support.etcd import EtcdCluster, running_etcd

pytestmark = pytest.mark.timeout(60)

BASE = 100  # instances registered before the watch starts
BURST = 200  # writes while the watch's reader is busy


@pytest.fixture
def node(tmp_path: Path) -> Iterator[EtcdCluster]:
    with running_etcd(tmp_path) as cluster:
        yield cluster


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _put(session: aiohttp.ClientSession, endpoint: str, inst: Instance) -> None:
    """Write ``inst`` as the registry would (no lease: the test's keys live on)."""
    key = f"/meshkit/services/{inst.service}/{inst.instance_id}".encode()
    async with session.post(f"{endpoint}/v3/kv/put",
                            json={"key": _b64(key), "value": _b64(_encode(inst).encode())}
                            ) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()


def _inst(service: str, i: int, port: int) -> Instance:
    return Instance(service=service, instance_id=f"i{i:04d}", host="127.0.0.1", port=port)


async def test_a_busy_reader_gets_the_latest_set_not_every_set_between(
        node: EtcdCluster) -> None:
    """BURST separate writes (each its own watch message) land while the reader does not
    read; its next read is the final set, after a few sets at most (not BURST sets, each
    one write newer than the last), and nothing is lost: every instance at its last port,
    a deletion in the burst gone."""
    endpoint = node.endpoints[0]
    service = unique_service()
    reg = EtcdRegistry(EtcdOptions(endpoints=(endpoint,), ttl_s=5, request_timeout_s=2.0,
                                   operation_timeout_s=2.0))
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(BASE):
                await _put(session, endpoint, _inst(service, i, 20000 + i))
            watch = reg.watch(service)
            first = await asyncio.wait_for(anext(watch), 10)
            assert len(first) == BASE
            # the burst: every instance moves (BURST writes, one at a time), and one leaves
            final = {i: 30000 + i for i in range(BASE)}
            for n in range(BURST):
                i = n % BASE
                port = 30000 + n
                final[i] = port
                await _put(session, endpoint, _inst(service, i, port))
            async with session.post(f"{endpoint}/v3/kv/deleterange", json={
                    "key": _b64(f"/meshkit/services/{service}/i0007".encode())}) as resp:
                assert resp.status == 200
            del final[7]
            want = frozenset(_inst(service, i, port) for i, port in final.items())
            # the watch's follower reads the burst from its stream meanwhile (the reader
            # is busy elsewhere: it does not ask for the next set)
            await asyncio.sleep(1.5)
            sets = 0
            while True:
                got = await asyncio.wait_for(anext(watch), 10)
                sets += 1
                if got == want:
                    break
                assert sets < BURST + 2, "the final set never came"
            # before: BURST + 1 sets, each one write newer than the one before
            assert sets <= 10, f"{sets} sets read to reach the latest one"
            await watch.aclose()
    finally:
        await reg.close()


async def test_the_follower_makes_no_set_of_every_instance_per_write(
        node: EtcdCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the reader does not read, BURST writes cost the watch's follower the changed
    instances only: it made a set of every instance at each watch message (n messages
    of n instances during a rolling deploy: O(n**2), about 1.1 s of the loop over a
    2,000-instance deploy, 0.57 ms a message), where the reader takes one set per read.
    Counted: the hashes of instances made meanwhile."""
    endpoint = node.endpoints[0]
    service = unique_service()
    reg = EtcdRegistry(EtcdOptions(endpoints=(endpoint,), ttl_s=5, request_timeout_s=2.0,
                                   operation_timeout_s=2.0))
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(BASE):
                await _put(session, endpoint, _inst(service, i, 20000 + i))
            watch = reg.watch(service)
            assert len(await asyncio.wait_for(anext(watch), 10)) == BASE
            hashes = [0]
            real_hash = Instance.__hash__

            def counted(self: Instance) -> int:
                hashes[0] += 1
                return real_hash(self)

            monkeypatch.setattr(Instance, "__hash__", counted)
            final = {i: 20000 + i for i in range(BASE)}
            for n in range(BURST):
                final[n % BASE] = 30000 + n
                await _put(session, endpoint, _inst(service, n % BASE, 30000 + n))
            await asyncio.sleep(1.5)  # the follower reads the burst meanwhile
            during = hashes[0]
            monkeypatch.setattr(Instance, "__hash__", real_hash)
            want = frozenset(_inst(service, i, port) for i, port in final.items())
            for _ in range(BURST + 2):
                if await asyncio.wait_for(anext(watch), 10) == want:
                    break
            else:
                raise AssertionError("the final set never came")
            # before: BURST sets of BASE instances (20,000 hashes)
            assert during < BURST * BASE // 10, f"{during} instance hashes during the burst"
            await watch.aclose()
    finally:
        await reg.close()
