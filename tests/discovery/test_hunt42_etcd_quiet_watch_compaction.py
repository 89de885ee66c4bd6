"""EtcdRegistry: a watch of a quiet service (no change under its prefix while others'
writes move the store on) is not read again in full after each compaction of a
revision it has already seen past. Its stream, left every ``ttl_s`` of quiet, was
resumed from the revision of its last change under the prefix, however old: after any
compaction past it (etcd's --auto-compaction keeps a window of revisions or hours;
Kubernetes' API server compacts every 5 minutes) the resume was refused
("required revision has been compacted") and the whole service read again, by every
quiet watch of every process; and after three such reads without a change between them
the watch backed off (up to ``backoff_max_s``) before it watched again, a change made
meanwhile reaching it that much later. A real etcd node."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from meshkit.discovery import EtcdOptions, EtcdRegistry
from meshkit.discovery._etcd import _encode
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.discovery.test_etcd import _FreezingProxy
from tests.support.etcd import EtcdCluster, running_etcd
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)

# ttl_s 1: a quiet stream is left and resumed every second
OPTS: dict[str, Any] = {"ttl_s": 1, "request_timeout_s": 1.0, "operation_timeout_s": 1.0,
                        "backoff_base_s": 0.05, "backoff_max_s": 0.3}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A single real etcd node of this module's own (its tests compact it)."""
    with running_etcd(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.fixture
async def registry(node: EtcdCluster) -> AsyncIterator[EtcdRegistry]:
    reg = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), **OPTS))
    yield reg
    await reg.close()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _post(node: EtcdCluster, path: str, body: dict[str, Any]) -> Any:
    return asyncio.to_thread(node.post, 0, path, body)


async def test_a_quiet_watch_is_not_read_again_after_a_compaction_it_has_seen_past(
        node: EtcdCluster, registry: EtcdRegistry) -> None:
    """Others' writes, then (after the watch's quiet stream was resumed a few times)
    a compaction at the revision of those writes: the watch is not refused for a
    compacted revision (no full read), and a change under its prefix after that is
    still seen, none lost or doubled."""
    service = unique_service()
    a, b = make_instance(service, 1), make_instance(service, 2)
    key_a = f"/meshkit/services/{service}/{a.instance_id}"
    # static entries (no lease): nothing under the prefix changes while the watch is quiet
    await _post(node, "/kv/put", {"key": _b64(key_a.encode()),
                                  "value": _b64(_encode(a).encode())})
    watcher = Collector(registry, service)
    assert await watcher.next() == {a}
    with capture_logs() as logs:
        rev = 0
        for i in range(20):  # others' writes, outside the prefix
            answer = await _post(node, "/kv/put", {"key": _b64(f"/other/{service}/{i}".encode()),
                                                   "value": _b64(b"x")})
            rev = int(answer["header"]["revision"])
        # the quiet stream is left and resumed every ttl_s (1 s): a few times
        # meanwhile (ample margin on a loaded machine)
        await asyncio.sleep(3.5)
        await _post(node, "/kv/compaction", {"revision": str(rev)})
        await asyncio.sleep(2.5)  # resumed again, from past the compaction
        await _post(node, "/kv/put", {"key": _b64(
            f"/meshkit/services/{service}/{b.instance_id}".encode()),
            "value": _b64(_encode(b).encode())})
        await watcher.until_set({a, b})
        await _post(node, "/kv/deleterange", {"key": _b64(key_a.encode())})
        await watcher.until_set({b})
    await watcher.stop()
    assert not [e for e in logs if e["event"].startswith("etcd compacted past")], logs


async def test_a_resume_that_missed_changes_past_a_compaction_reads_again(
        node: EtcdCluster) -> None:
    """The compacted resume is still told (its path now met only by a watch that has
    missed changes): the watch stream's connection dropped silently (frozen), a new
    instance registered, then etcd compacted past the watch's revision. The quiet
    stream is left; the keys-only read finds a key changed after the watch's revision,
    so the watch resumes from its own revision, is refused as compacted, reads the
    prefix in full and lists the new instance."""
    service = unique_service()
    a, b = make_instance(service, 1), make_instance(service, 2)
    owner = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), **{**OPTS, "ttl_s": 3}))
    async with _FreezingProxy(node.members[0].client_port) as proxy:
        # ttl_s 2: the frozen stream is left 2 s after its last message
        reader = EtcdRegistry(EtcdOptions(endpoints=(f"http://127.0.0.1:{proxy.port}",),
                                          **{**OPTS, "ttl_s": 2}))
        try:
            await owner.register(a)
            watcher = Collector(reader, service)
            assert await watcher.next() == {a}
            await until(lambda: any(b"/watch" in link.first for link in proxy.links),
                        what="the watch stream through the proxy")
            await asyncio.sleep(0.3)  # its answer's headers through (a stream, not a request)
            with capture_logs() as logs:
                assert proxy.freeze(b"/watch") == 1
                await owner.register(b)
                answer = await _post(node, "/kv/put", {"key": _b64(
                    f"/other/{service}".encode()), "value": _b64(b"x")})
                await _post(node, "/kv/compaction",
                            {"revision": str(answer["header"]["revision"])})
                await watcher.until_set({a, b}, timeout_s=8.0)
            await watcher.stop()
            assert [e for e in logs if e["event"].startswith("etcd compacted past")], logs
        finally:
            await owner.close()
            await reader.close()
