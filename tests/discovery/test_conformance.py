"""The Registry conformance suite (conformance.py) against every backend: the local SQLite
registry, the Consul agent test double, and a real etcd started here (Debian's etcd-server,
installed by ``scripts/install-etcd.sh``; a missing binary skips, and fails under CI=true).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from meshkit.discovery._etcd import EtcdOptions, EtcdRegistry
from tests.discovery.conformance import CHECKS, Backend
from tests.discovery.consul_double import ConsulDouble
from tests.support.etcd import EtcdCluster, require_etcd_binary

pytestmark = pytest.mark.timeout(30)

BACKENDS = ("local", "consul-double", "etcd")


@pytest.fixture(scope="module")
def etcd_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One real etcd node for the module (services are unique per check)."""
    node = EtcdCluster(require_etcd_binary(), tmp_path_factory.mktemp("etcd"), size=1)
    try:
        node.start_blocking()
        yield node
    finally:
        node.close()


# Every check against every backend, except an outage where the backend has none to
# simulate here: the local registry's faults need a process without CAP_DAC_OVERRIDE, which
# tests/discovery/test_local_faults.py sets up.
_NO_OUTAGE = {"local"}
CASES = [(b, c) for b in BACKENDS for c in sorted(CHECKS)
         if not (b in _NO_OUTAGE and c == "last_known_good_during_outage")]


@pytest.fixture
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """A :class:`Backend` for each registry, with short TTLs."""
    name: str = request.param
    if name == "local":
        opts = LocalOptions(path=tmp_path / "registry", ttl_s=0.6, poll_interval_s=0.05)
        b = Backend(name, lambda: LocalRegistry(opts), ttl_s=0.6, expiry_slack_s=0.5)
        try:
            yield b
        finally:
            await b.aclose()
        return
    if name == "consul-double":
        async with ConsulDouble() as double:
            # watch_query_interval_s: the watch's rate limit (default a query a second
            # after a burst of 2) would space a check's third and later changes a second
            # apart; no check is about it (test_consul.py tests it)
            copts = ConsulOptions(addr=double.addr, ttl_s=0.6, wait_s=0.5,
                                  backoff_base_s=0.01, backoff_max_s=0.1,
                                  request_timeout_s=2.0, watch_query_interval_s=0.1)

            @contextlib.asynccontextmanager
            async def consul_outage() -> AsyncIterator[None]:
                double.set_down(True)
                try:
                    yield
                finally:
                    double.set_down(False)

            b = Backend(name, lambda: ConsulRegistry(copts), ttl_s=0.6, expiry_slack_s=0.5,
                        outage=consul_outage)
            try:
                yield b
            finally:
                await b.aclose()
        return
    node: EtcdCluster = request.getfixturevalue("etcd_node")
    eopts = EtcdOptions(endpoints=tuple(node.endpoints), ttl_s=1, request_timeout_s=1.0,
                        backoff_base_s=0.05, backoff_max_s=0.3)

    @contextlib.asynccontextmanager
    async def etcd_outage() -> AsyncIterator[None]:
        node.kill(0)
        try:
            yield
        finally:
            node.start_member(0)
            await node.wait_healthy()

    # etcd's lessor checks for expired leases every 500 ms.
    b = Backend(name, lambda: EtcdRegistry(eopts), ttl_s=1.0, expiry_slack_s=1.0,
                outage=etcd_outage)
    try:
        yield b
    finally:
        await b.aclose()


@pytest.mark.parametrize(("backend", "check"), CASES, indirect=["backend"],
                         ids=[f"{b}-{c}" for b, c in CASES])
async def test_registry_conformance(backend: Backend, check: str) -> None:
    """Each backend keeps each promise of the Registry protocol (see conformance.py)."""
    fn: Callable[[Backend], Awaitable[None]] = CHECKS[check]
    assert backend.outage is not None or check != "last_known_good_during_outage"
    await fn(backend)
