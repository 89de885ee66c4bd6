"""EtcdRegistry: a register() cancelled while its put is in flight leaves no key behind
under the lease the keep-alive renews. A real etcd node."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry
from meshkit.errors import RegistryError
from tests.discovery.conformance import make_instance, unique_service
from tests.support.etcd import EtcdCluster, running_etcd
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A single real etcd node for this module's tests (each uses services of its own)."""
    with running_etcd(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.fixture
async def registry(node: EtcdCluster) -> AsyncIterator[EtcdRegistry]:
    reg = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), ttl_s=2,
                                   keepalive_interval_s=0.2, request_timeout_s=1.0,
                                   operation_timeout_s=1.0, backoff_base_s=0.05,
                                   backoff_max_s=0.3))
    yield reg
    await reg.close()


@pytest.mark.parametrize("lost", ["cancelled", "timed-out"])
async def test_a_register_whose_applied_put_went_unanswered_leaves_no_key(
        registry: EtcdRegistry, monkeypatch: pytest.MonkeyPatch, lost: str) -> None:
    """A register() cancelled, or failed for a timeout, after etcd applied its put but
    before the answer came back (a server's start cancelled: a TaskGroup sibling failed,
    a start timeout; an answer slower than request_timeout_s during an election) left
    the key under the registry's lease, which the keep-alive renews for the instances it
    does own: the instance, never started (or told it was not registered), stayed listed
    to every watch for as long as the process lived (nothing owned it, so no deregister,
    lease loss or key check touched it). The keep-alive now deletes it; the instances it
    owns stay."""
    service = unique_service()
    kept, cancelled = make_instance(service, 1), make_instance(service, 2)
    await registry.register(kept)
    real_post = registry._post
    applied = asyncio.Event()

    async def put_then_hang(path: str, body: Mapping[str, Any], **kw: Any) -> Any:
        answer = await real_post(path, body, **kw)
        if path == "/kv/put" and base64.b64decode(str(body["key"])) == registry._key(
                cancelled):
            applied.set()
            if lost == "timed-out":
                raise TimeoutError  # as _post_one's bound on the request raises it
            await asyncio.Event().wait()  # the answer never comes back in time
        return answer

    monkeypatch.setattr(registry, "_post", put_then_hang)
    task = asyncio.create_task(registry.register(cancelled))
    await asyncio.wait_for(applied.wait(), 5)
    if lost == "cancelled":
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, RegistryError):
        await task
    monkeypatch.setattr(registry, "_post", real_post)

    async def listed() -> frozenset[Any]:
        return (await registry.snapshot(service)).live

    async def gone() -> bool:
        return cancelled not in await listed()

    assert await listed() == {kept, cancelled}  # etcd took the put
    # gone within a few keep-alive rounds (0.2 s each), long before the lease's end
    await until(gone, timeout_s=3, what="the cancelled registration's key deleted")
    assert await listed() == {kept}
