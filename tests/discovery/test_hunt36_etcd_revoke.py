"""EtcdRegistry: a deregister whose keys are deleted succeeds even when the lease's
revoke after it fails. A real etcd node."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry
from tests.discovery.conformance import make_instance, unique_service
from tests.support.etcd import EtcdCluster, running_etcd

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A single real etcd node for this module's tests (each uses services of its own)."""
    with running_etcd(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.fixture
async def registry(node: EtcdCluster) -> AsyncIterator[EtcdRegistry]:
    reg = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), ttl_s=2,
                                   request_timeout_s=1.0, operation_timeout_s=1.0,
                                   backoff_base_s=0.05, backoff_max_s=0.3))
    yield reg
    await reg.close()


@pytest.mark.parametrize("error", [TimeoutError, ConnectionResetError])
async def test_a_deregister_whose_revoke_fails_after_the_delete_succeeds(
        registry: EtcdRegistry, monkeypatch: pytest.MonkeyPatch,
        error: type[Exception]) -> None:
    """The last instance's deregister deletes its key, then revokes the lease (tidiness:
    it would expire). A revoke that timed out or lost its connection made deregister
    raise RegistryError 'cannot deregister ...' and record a write failure in status(),
    though the instance was gone (its docstring: 'the instance is still registered'); a
    drain then reported a failed deregistration of an instance no watch listed. It now
    returns, as it does when etcd answers the revoke with an error; the lease expires."""
    service = unique_service()
    instance = make_instance(service, 1)
    await registry.register(instance)
    real_post = registry._post

    async def revoke_fails(path: str, body: Mapping[str, Any], **kw: Any) -> Any:
        if path == "/lease/revoke":
            raise error("the member went away")
        return await real_post(path, body, **kw)

    monkeypatch.setattr(registry, "_post", revoke_fails)
    await registry.deregister(instance)
    monkeypatch.setattr(registry, "_post", real_post)
    assert (await registry.snapshot(service)).live == frozenset()
    assert registry.status().writable is True
    await registry.register(instance)  # under a new lease
    assert (await registry.snapshot(service)).live == {instance}
