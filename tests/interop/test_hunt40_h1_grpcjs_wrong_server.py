"""A grpc-js server at an address the registry gives another service is told apart.

A registry entry outlives its instance and its address is taken by a grpc-js server of
another service (plaintext mesh). grpc-js answers a method it does not serve
``UNIMPLEMENTED`` "The server does not implement the method ..." in a trailers-only
answer that carries Node's ``date`` header. meshkit knows those words
(``NOT_SERVED_DETAILS``) but took the answer for a handler's own ``UNIMPLEMENTED`` because
it had metadata (the ``date``): every call picked there failed ``UNIMPLEMENTED`` while a
right endpoint stood READY, and the wrong endpoint was never counted failing (measured: 6
of 6 calls ``UNIMPLEMENTED``, no ejection). As for grpc core's "Method not found!"
(tests/test_hunt38_c10_wrong_server_unimplemented.py): a unary call goes on to the
endpoint that serves the method, and the wrong one is ejected; a response stream refused
there (which cannot be sent on) still ejects it. Node and @grpc/grpc-js as
``test_grpcjs.py`` needs them."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from pathlib import Path
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.balancer import Done, Endpoint, OutlierOptions
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from meshkit.resilience import RetryOptions
from tests.interop.test_hunt37_b1_grpcjs_features import _js_servers
from tests.support.echo import SERVICE, handler, method
from tests.test_hunt38_c10_wrong_server_unimplemented import _PreferWrong, _server

pytestmark = pytest.mark.timeout(60)


async def test_calls_go_on_from_a_grpcjs_server_of_another_service(tmp_path: Path) -> None:
    registry = LocalRegistry(LocalOptions(path=tmp_path / "reg", poll_interval_s=0.05, ttl_s=15.0))
    good = _server(SERVICE)
    try:
        port = good.add_insecure_port("127.0.0.1:0")
        await good.start()
        async with _js_servers(1) as [(js_port, _proc)]:
            for name, p in (("good", port), ("wrong", js_port)):
                await registry.register(
                    Instance(service="echo", instance_id=name, host="127.0.0.1", port=p)
                )
            options = meshkit.DialOptions(
                insecure=True,
                balancer=_PreferWrong,
                retry=RetryOptions(),
                telemetry=None,
                outlier=OutlierOptions(consecutive_failures=3, base_ejection_s=30),
            )
            async with meshkit.dial("echo", registry=registry, options=options) as ch:
                await ch.wait_for_endpoints(2, timeout_s=10)
                call: Any = ch.unary_unary(method("Unary"))
                got: list[Any] = []
                for i in range(6):
                    try:
                        got.append(await call(b"%d" % i, timeout=10))
                    except grpc.aio.AioRpcError as exc:
                        got.append((exc.code(), exc.details()))
                assert got == [b"%d" % i for i in range(6)]
                stats = {ep.instance_id: ep for ep in ch.stats().endpoints}
                assert stats["wrong"].ejected and stats["wrong"].failures == 3, stats
                assert not stats["good"].ejected and stats["good"].failures == 0, stats
    finally:
        await good.stop(None)
        await registry.close()


class _WrongLater(_PreferWrong):
    """Picks endpoint ``good`` until ``wrong_first`` is set, then ``wrong`` first."""

    wrong_first = False

    def pick(
        self, key: str | None = None, exclude: Collection[Endpoint] = ()
    ) -> tuple[Endpoint, Done] | None:
        if _WrongLater.wrong_first:
            return super().pick(key, exclude)
        good = [ep for ep in self._eps if ep.key == "good"]
        return (good[0], lambda code, latency_s: None) if good else None


async def test_a_stream_refused_by_a_grpcjs_server_of_another_service(tmp_path: Path) -> None:
    """A response stream picked onto the grpc-js server, after the right endpoint answered
    the method: the caller gets ``UNIMPLEMENTED`` (a stream cannot be sent on), and the
    grpc-js endpoint's outcome is a failure (it serves another service): ejected after one
    (``consecutive_failures=1``)."""
    registry = LocalRegistry(LocalOptions(path=tmp_path / "reg", poll_interval_s=0.05, ttl_s=15.0))
    good = grpc.aio.server()
    good.add_generic_rpc_handlers((handler("good"),))
    _WrongLater.wrong_first = False
    try:
        port = good.add_insecure_port("127.0.0.1:0")
        await good.start()
        async with _js_servers(1) as [(js_port, _proc)]:
            for name, p in (("good", port), ("wrong", js_port)):
                await registry.register(
                    Instance(service="echo", instance_id=name, host="127.0.0.1", port=p)
                )
            options = meshkit.DialOptions(
                insecure=True,
                balancer=_WrongLater,
                retry=RetryOptions(),
                telemetry=None,
                outlier=OutlierOptions(consecutive_failures=1, base_ejection_s=30),
            )
            async with meshkit.dial("echo", registry=registry, options=options) as ch:
                await ch.wait_for_endpoints(2, timeout_s=10)
                stream: Any = ch.unary_stream(method("ServerStream"))
                assert len([m async for m in stream(b"2", timeout=10)]) == 2
                _WrongLater.wrong_first = True
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in stream(b"2", timeout=10):
                        pass
                assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED, err.value
                await asyncio.sleep(0.05)  # a stream's outcome comes from a spawned task
                stats = {ep.instance_id: ep for ep in ch.stats().endpoints}
                assert stats["wrong"].ejected, stats
                assert not stats["good"].ejected and stats["good"].failures == 0, stats
    finally:
        await good.stop(None)
        await registry.close()
