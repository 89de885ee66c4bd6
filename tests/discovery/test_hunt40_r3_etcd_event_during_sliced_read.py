"""Review of 8e34c6a8: changes made while an etcd watch decodes its full read in slices
are not lost, and no half-read set is given.

The watch's read of its prefix (at its start, after a compaction or a broken stream) is
now decoded in slices with the event loop let run between (here every value a slice:
``SLICE_S`` 0), so a registration and a deregistration can land in etcd while the watch
is still decoding the read (at revision R) and before its event stream starts (from R+1).
Real etcd (tests/support/etcd): the watch's first set is the whole prefix as read, and
its later sets come to hold the new instance and lose the removed one, from the event
stream (one full read only).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry, Instance, _etcd, _shared
from tests.discovery.conformance import unique_service
from tests.support.etcd import EtcdCluster, running_etcd

pytestmark = pytest.mark.timeout(120)

N = 300


@pytest.fixture
def node(tmp_path: Path) -> Iterator[EtcdCluster]:
    with running_etcd(tmp_path) as cluster:
        yield cluster


def _inst(service: str, i: int) -> Instance:
    return Instance(
        service=service, instance_id=f"{service}-{i:04d}", host="127.0.0.1", port=20000 + i
    )


async def test_changes_during_the_sliced_read_reach_the_watch(
    node: EtcdCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_shared, "SLICE_S", 0.0)
    monkeypatch.setattr(_etcd, "SLICE_S", 0.0)
    service = unique_service()
    writer = EtcdRegistry(EtcdOptions(endpoints=node.endpoints, ttl_s=60.0))
    reader = EtcdRegistry(EtcdOptions(endpoints=node.endpoints, request_timeout_s=10.0))
    try:
        for i in range(N):
            await writer.register(_inst(service, i))
        # the first change is made when the watch has decoded a tenth of the read's values
        decode = _etcd._decode
        seen = 0
        tasks: list[asyncio.Future[None]] = []
        changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def change() -> None:
            try:
                await writer.register(_inst(service, N))
                await writer.deregister(_inst(service, 0))
            except BaseException as exc:
                changed.set_exception(exc)
                raise
            changed.set_result(None)

        def counting(raw: bytes) -> Instance:
            nonlocal seen
            seen += 1
            if seen == N // 10:
                tasks.append(asyncio.ensure_future(change()))
            return decode(raw)

        monkeypatch.setattr(_etcd, "_decode", counting)
        reads = 0
        full_read = reader._range

        async def counted_read(prefix: bytes) -> Any:
            nonlocal reads
            reads += 1
            return await full_read(prefix)

        monkeypatch.setattr(reader, "_range", counted_read)
        watch = reader.watch(service)
        async with asyncio.timeout(60):
            first = await anext(watch)
            ids = {i.instance_id for i in first}
            # the read as etcd answered it: the whole prefix at its revision, never a part
            assert len(first) in (N, N + 1), len(first)
            assert {f"{service}-{i:04d}" for i in range(1, N)} <= ids
            await changed
            want = {f"{service}-{i:04d}" for i in range(1, N + 1)}
            while ids != want:
                ids = {i.instance_id for i in await anext(watch)}
        assert seen >= N  # the read was decoded by the patched (sliced) path
        # the changes came as the stream's events (from the read's revision + 1), not by
        # a second full read (a watch that lost them finds out, later, and reads again)
        assert reads == 1, reads
        await watch.aclose()
    finally:
        await reader.close()
        await writer.close()
