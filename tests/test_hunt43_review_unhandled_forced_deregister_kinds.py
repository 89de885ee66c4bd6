"""Review of fdf21330 (a drain ended by a second signal tries its unfinished
deregistration once more after the stop, 2 s at most), on every registry kind: the local
registry, a real etcd, the Consul agent double. The first ``deregister()`` (the drain's)
waits until the second SIGINT cuts it; the retry then

* ``answers``: the entry is gone when ``run_until_signal()`` returns;
* ``hangs``: it is cut at its bound, logged ``deregister failed``, and the exit is not
  held (well under the drain's own 10 s deregistration bound and the 60 s grace);
* ``closed``: the registry was closed meanwhile: its error is logged, nothing raises.

In every case it is asked exactly once more (two ``deregister()`` calls in all).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog

from meshkit import server as server_module
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from meshkit.discovery._etcd import EtcdOptions, EtcdRegistry
from meshkit.server import MeshServer, ServeOptions
from tests.discovery.consul_double import ConsulDouble
from tests.support.etcd import EtcdCluster, require_etcd_binary
from tests.support.wait import until

_SERVICE = "hunt43runh.Forced"
_KINDS = ("local", "etcd", "consul-double")
_MODES = ("answers", "hangs", "closed")


@pytest.fixture(scope="module")
def etcd_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    node = EtcdCluster(require_etcd_binary(), tmp_path_factory.mktemp("etcd"), size=1)
    try:
        node.start_blocking()
        yield node
    finally:
        node.close()


def _cutting(base: type[Any], mode: str) -> type[Any]:
    """``base`` whose first ``deregister()`` waits until cancelled, and whose second
    one answers, hangs, or finds the registry closed (``mode``)."""

    class Cutting(base):  # type: ignore[misc]
        asked = 0
        waiting: asyncio.Event | None = None

        async def deregister(self, instance: Instance) -> None:
            self.asked += 1
            if self.asked == 1 or mode == "hangs":
                if self.waiting is not None:
                    self.waiting.set()
                await asyncio.sleep(600)
            if mode == "closed":
                await self.close()
            await super().deregister(instance)

    return Cutting


@contextlib.asynccontextmanager
async def _registry(kind: str, mode: str, tmp_path: Path,
                    request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if kind == "local":
        registry = _cutting(LocalRegistry, mode)(LocalOptions(
            path=tmp_path / "reg", ttl_s=30.0, heartbeat_interval_s=1.0,
            poll_interval_s=0.05))
        try:
            yield registry
        finally:
            await registry.close()
        return
    if kind == "etcd":
        node: EtcdCluster = request.getfixturevalue("etcd_node")
        registry = _cutting(EtcdRegistry, mode)(EtcdOptions(
            endpoints=tuple(node.endpoints), ttl_s=30, request_timeout_s=1.0))
        try:
            yield registry
        finally:
            await registry.close()
        return
    async with ConsulDouble() as double:
        registry = _cutting(ConsulRegistry, mode)(ConsulOptions(
            addr=double.addr, ttl_s=30.0, request_timeout_s=2.0))
        try:
            yield registry
        finally:
            await registry.close()


def _signal(sig: signal.Signals) -> None:
    server_module._fanouts[(asyncio.get_running_loop(), sig)].dispatch()


async def _echo(request: bytes, context: Any) -> bytes:
    return request


_CASES = [(k, m) for k in _KINDS for m in _MODES]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("kind", "mode"), _CASES, ids=[f"{k}-{m}" for k, m in _CASES])
async def test_the_retry_after_a_forced_end_is_bounded_once_and_quiet(
        kind: str, mode: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    async with _registry(kind, mode, tmp_path, request) as registry:
        registry.waiting = asyncio.Event()
        handler = grpc.method_handlers_generic_handler(
            _SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(_echo)})
        srv = MeshServer(_SERVICE, [(lambda h, s: s.add_generic_rpc_handlers((h,)),
                                     handler)], registry=registry,
                         options=ServeOptions(insecure=True, admin=None,
                                              drain_delay_s=0.0, grace_s=60.0))
        serving = asyncio.ensure_future(srv.run_until_signal())
        try:
            await until(lambda: srv.ready, timeout_s=30, what="the server serving")
            await until(lambda: srv.stats().registered, timeout_s=30, what="registered")
            with structlog.testing.capture_logs() as logs:
                _signal(signal.SIGINT)
                await asyncio.wait_for(registry.waiting.wait(), 30)
                registry.waiting = None
                cut = time.monotonic()
                _signal(signal.SIGINT)  # Ctrl-C again: now
                await asyncio.wait_for(serving, 60)
                took = time.monotonic() - cut
        finally:
            if not serving.done():
                serving.cancel()
                await asyncio.wait({serving}, timeout=30)
        serving.result()  # nothing raised
        assert registry.asked == 2, registry.asked
        # the retry's 2 s bound: not the drain's 10 s deregistration bound, nor the grace
        assert took < 8.0, took
        failed = [e for e in logs if e.get("event") == "deregister failed"]
        if mode == "answers":
            assert not failed, failed
            assert srv.stats().registered is False
            left = await registry.snapshot(_SERVICE)
            assert not left.live and not left.failing, f"the entry left for the TTL: {left}"
        else:
            assert len(failed) == 1, failed
