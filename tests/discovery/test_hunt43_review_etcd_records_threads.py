"""Review of 733448e5/547fd508 (etcd: a read record per watched service, counted per
watch): watches of one registry from several threads' event loops at once, the same
service and each thread's own, opened and ended again and again, leave no count and no
record behind (no memory kept for services no longer watched), and while they ran each
service's record said it read. A real etcd. (A guard: the lost update 547fd508's lock
prevents needs a thread switch at one bytecode, not reproduced here.)"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import cast

import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry, Instance
from tests.discovery.conformance import make_instance, unique_service
from tests.support.etcd import EtcdCluster, require_etcd_binary

pytestmark = pytest.mark.timeout(120)

_THREADS = 3
_ROUNDS = 8


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(require_etcd_binary(), Path(tmp_path_factory.mktemp("etcd")))
    try:
        cluster.start_blocking()
        yield cluster
    finally:
        cluster.close()


async def _first_set_then_end(reg: EtcdRegistry, service: str) -> bool:
    watch = cast(AsyncGenerator[frozenset[Instance], None], reg.watch(service))
    try:
        async with asyncio.timeout(20):
            await watch.__anext__()
        return reg.status(service).readable is True
    finally:
        await watch.aclose()


def test_watches_of_several_loops_leave_no_record(node: EtcdCluster) -> None:
    shared = unique_service()
    owns = [unique_service() for _ in range(_THREADS)]
    reg = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), ttl_s=3,
                                   request_timeout_s=2.0, operation_timeout_s=4.0))

    async def setup() -> None:
        for service in (shared, *owns):
            await reg.register(make_instance(service, 1))

    asyncio.run(setup())
    results: list[bool] = []
    errors: list[BaseException] = []

    def worker(own: str) -> None:
        async def rounds() -> None:
            for _ in range(_ROUNDS):
                results.extend(await asyncio.gather(_first_set_then_end(reg, shared),
                                                    _first_set_then_end(reg, own)))
        try:
            asyncio.run(rounds())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(own,)) for own in owns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert len(results) == 2 * _THREADS * _ROUNDS and all(results), results
    assert len(reg._reads) == 0, len(reg._reads)  # no record, no running watch left
    for service in (shared, *owns):
        assert reg.status(service).readable is None
    assert reg.status().readable is True

    async def close() -> None:
        async with asyncio.timeout(8):
            await reg.close()

    asyncio.run(close())
