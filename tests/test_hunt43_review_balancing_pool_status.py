"""The pool asks the registry about its own service (``status(service)``).

The registries' ``status()`` without a service is False only while every watched service
fails (one etcd prefix its user may not read leaves the others readable); the pool's
``_resolved_or_unreadable``, ``registry_unreadable`` and ``_registry_problem`` kept
asking that registry-wide question, so a channel whose own service's watch was refused
(etcd ``permission denied`` on its prefix) while another service of the same registry
read waited its whole ``resolve_timeout_s`` for an answer that could not come, instead
of failing ``UNAVAILABLE`` at once saying the registry cannot be read. They now ask
``status(self.service)``, and ``status()`` of a custom registry that takes no argument
(a ``TypeError``). A real etcd with authentication (one prefix refused), and registry
doubles for the fallback.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import EtcdOptions, EtcdRegistry, Instance, RegistryStatus
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.support.etcd import EtcdCluster, require_etcd_binary
from tests.support.wait import until

pytestmark = pytest.mark.timeout(90)

_ROOT_PW = "root-Pa55"
_APP_PW = "app-Pa55"
_PREFIX = "/meshkit/services/"
_FAST: dict[str, Any] = {"ttl_s": 3, "request_timeout_s": 2.0, "operation_timeout_s": 4.0,
                         "backoff_base_s": 0.05, "backoff_max_s": 0.3}
_ALLOWED = unique_service()
_DENIED = unique_service()
_UNREADABLE = "the service registry cannot be read"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """root (role root), and app: read and write on ``_ALLOWED``'s prefix only."""
    cluster = EtcdCluster(require_etcd_binary(), Path(tmp_path_factory.mktemp("etcd")))
    try:
        cluster.start_blocking()
        cluster.add_root(_ROOT_PW)
        cluster.call("/auth/role/add", {"name": "app"})
        start = f"{_PREFIX}{_ALLOWED}/"
        end = start[:-1] + "0"  # '/' + 1
        cluster.call("/auth/role/grant", {"name": "app", "perm": {
            "permType": "READWRITE", "key": _b64(start), "range_end": _b64(end)}})
        cluster.call("/auth/user/add", {"name": "app", "password": _APP_PW})
        cluster.call("/auth/user/grant", {"user": "app", "role": "app"})
        cluster.enable_auth()
        yield cluster
    finally:
        cluster.close()


async def test_a_channel_whose_own_prefix_is_refused_fails_fast(node: EtcdCluster) -> None:
    """Another service of the registry reads (``status()`` is not False): the channel of
    the refused service still fails its call UNAVAILABLE well before its 30 s
    ``resolve_timeout_s``, saying the registry cannot be read, and is
    TRANSIENT_FAILURE; the readable service's channel is not."""
    root = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), user="root",
                                    password=_ROOT_PW, **_FAST))
    app = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), user="app",
                                   password=_APP_PW, **_FAST))
    opts = meshkit.DialOptions(insecure=True, resolve_timeout_s=30.0)
    try:
        await root.register(make_instance(_ALLOWED, 1))
        allowed = Collector(app, _ALLOWED)
        assert len(await allowed.next(timeout_s=15)) == 1
        async with meshkit.dial(_DENIED, registry=app, options=opts) as ch:
            call = ch.unary_unary(f"/{_DENIED}.Svc/Get", _registered_method=True)
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(b"", timeout=60)
            took = time.monotonic() - started
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE, err.value
            details = err.value.details() or ""
            assert _UNREADABLE in details, details
            assert _APP_PW not in details and "permission" not in details, details
            assert took < 20, took  # not the 30 s resolve_timeout_s
            assert ch.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE
            # the registry as a whole still reads (another service's watch answers)
            assert app.status().readable is not False, app.status()
        async with meshkit.dial(_ALLOWED, registry=app, options=opts) as ok:
            await until(lambda: len(ok._pool.endpoints) == 1, timeout_s=15,
                        what="the readable service's endpoint")
            assert not ok._pool.registry_unreadable()
            assert ok._pool._registry_problem() is None
        await allowed.stop()
    finally:
        await app.close()
        await root.close()


class _Registry:
    """A registry that never answers its watch, whose ``status`` is given: per service
    (``(service) -> readable``) or without an argument (a custom registry's)."""

    def __init__(self, status: Any) -> None:
        self.status = status
        self.asked: list[tuple[Any, ...]] = []

    async def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        await asyncio.Event().wait()
        yield frozenset()

    async def close(self) -> None:
        pass


def _st(readable: bool | None) -> RegistryStatus:
    return RegistryStatus(kind="double", readable=readable, writable=None)


def _per_service(reg: _Registry) -> Any:
    def status(service: str | None = None) -> RegistryStatus:
        reg.asked.append((service,))
        return _st(service != "refused")
    return status


def _no_argument(readable: bool | None) -> Any:
    def status() -> RegistryStatus:
        return _st(readable)
    return status


async def _call_fails(reg: _Registry, service: str) -> tuple[grpc.aio.AioRpcError, float]:
    opts = meshkit.DialOptions(insecure=True, resolve_timeout_s=30.0)
    async with meshkit.dial(service, registry=reg, options=opts) as ch:  # type: ignore[arg-type]
        call = ch.unary_unary(f"/{service}.Svc/Get", _registered_method=True)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(b"", timeout=60)
        took = time.monotonic() - started
        assert ch.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE
        assert ch._pool.registry_unreadable()
        assert ch._pool._registry_problem() == _UNREADABLE
    return err.value, took


async def test_the_pool_asks_about_its_own_service() -> None:
    """A registry readable as a whole (``status()``) that refuses the pool's service
    (``status("refused")``): the call fails fast saying so."""
    reg = _Registry(None)
    reg.status = _per_service(reg)
    err, took = await _call_fails(reg, "refused")
    assert err.code() is grpc.StatusCode.UNAVAILABLE, err
    assert _UNREADABLE in (err.details() or ""), err.details()
    assert took < 20, took
    assert ("refused",) in reg.asked, reg.asked


async def test_a_readable_service_of_a_registry_is_not_taken_for_unreadable() -> None:
    """The other way round: its own service reads, so the pool reports no problem."""
    reg = _Registry(None)
    reg.status = _per_service(reg)
    opts = meshkit.DialOptions(insecure=True, resolve_timeout_s=30.0)
    async with meshkit.dial("fine", registry=reg, options=opts) as ch:  # type: ignore[arg-type]
        assert not ch._pool.registry_unreadable()
        assert ch._pool._registry_problem() is None
        assert ch.get_state() is grpc.ChannelConnectivity.IDLE
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await ch._pool._resolved_or_unreadable()


async def test_a_custom_registry_whose_status_takes_no_service_still_works() -> None:
    """``status()`` without a parameter (a registry written before status(service)):
    the pool asks it so, and an unreadable one still fails the call fast."""
    err, took = await _call_fails(_Registry(_no_argument(False)), "svc")
    assert err.code() is grpc.StatusCode.UNAVAILABLE, err
    assert _UNREADABLE in (err.details() or ""), err.details()
    assert took < 20, took
    opts = meshkit.DialOptions(insecure=True, resolve_timeout_s=30.0)
    reg = _Registry(_no_argument(True))
    async with meshkit.dial("svc", registry=reg, options=opts) as ch:  # type: ignore[arg-type]
        assert not ch._pool.registry_unreadable()
        assert ch._pool._registry_problem() is None
