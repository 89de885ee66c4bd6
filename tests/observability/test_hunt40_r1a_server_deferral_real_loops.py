"""Review of d494461 (the server telemetry's deferred completion appended to asyncio's ready
queue as the Handle ``call_soon`` makes) on a real MeshServer and channel over loopback, on
each kind of loop a server runs on: asyncio's, asyncio's in debug mode, asyncio's with its
``call_soon`` replaced (a subclass), and uvloop. Each server call's JSON access line is
written once, in that call's own context (what its handler bound with structlog's context
variables, never another call's), for calls one at a time (an idle loop: deferred) and 24 at
once (a busy loop); nothing stays counted as deferred; a loop whose ``call_soon`` is its own
gets every deferred completion through it."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.observability import TelemetryOptions, TelemetryServerInterceptor
from meshkit.observability._logging import BufferedLineWriter, _AccessLog, _AccessWriter
from tests.support.loops import LOOP_KINDS, loop_kind_factory
from tests.support.wait import until

SERVICE = "meshkit.test.Bound"
METHOD = f"/{SERVICE}/Unary"


class _OwnCallSoonLoop(asyncio.SelectorEventLoop):
    """asyncio's loop with a ``call_soon`` of its own (counting the telemetry's)."""

    completions = 0

    def call_soon(self, callback: Any, *args: Any, context: Any = None) -> Any:  # type: ignore[override]
        if getattr(callback, "__func__", None) is _COMPLETE[0]:
            type(self).completions += 1
        return super().call_soon(callback, *args, context=context)


_COMPLETE: list[Any] = [None]  # the patched _complete, as _OwnCallSoonLoop compares it


def _add(_servicer: Any, server: Any) -> None:
    async def unary(request: bytes, context: Any) -> bytes:
        structlog.contextvars.bind_contextvars(order_id=request.decode())
        if int(request.decode().rpartition("-")[2]) % 2:
            await asyncio.sleep(0.001)  # half of them answer after a turn of the loop
        return request

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {"Unary": grpc.unary_unary_rpc_method_handler(unary)}
            ),
        )
    )


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_each_server_call_gets_one_access_line_in_its_own_context(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    writer = BufferedLineWriter(out, flush_interval_s=30)
    monkeypatch.setattr(_AccessLog, "logger", _AccessWriter(writer, 20))
    deferred: list[bool] = []
    interceptors: list[TelemetryServerInterceptor] = []
    real = TelemetryServerInterceptor._complete

    def complete(self: TelemetryServerInterceptor, is_deferred: bool, *args: Any) -> None:
        deferred.append(is_deferred)
        if self not in interceptors:
            interceptors.append(self)
        real(self, is_deferred, *args)

    monkeypatch.setattr(TelemetryServerInterceptor, "_complete", complete)
    _COMPLETE[0] = complete
    monkeypatch.setattr(_OwnCallSoonLoop, "completions", 0)
    opts = TelemetryOptions(registry=CollectorRegistry(), tracing=False)
    sequential = [f"seq-{i}" for i in range(12)]
    concurrent = [f"con-{i}" for i in range(24)]

    async def main() -> None:
        reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=3.0, poll_interval_s=0.05))
        srv = meshkit.MeshServer(
            "bound",
            [(_add, None)],
            registry=reg,
            options=meshkit.ServeOptions(
                insecure=True, drain_delay_s=0.0, grace_s=1.0, telemetry=opts
            ),
        )
        await srv.start()
        ch = meshkit.dial(
            "bound",
            registry=reg,
            options=meshkit.DialOptions(
                insecure=True,
                telemetry=TelemetryOptions(
                    registry=CollectorRegistry(), tracing=False, access_log=False
                ),
            ),
        )
        try:
            await ch.wait_for_endpoints(1, timeout_s=10)
            call: Any = ch.unary_unary(METHOD)
            for r in sequential:
                assert await call(r.encode(), timeout=10) == r.encode()
                await asyncio.sleep(0.01)  # the loop idles between calls
            got = await asyncio.gather(*(call(r.encode(), timeout=10) for r in concurrent))
            assert got == [r.encode() for r in concurrent]
            n = len(sequential) + len(concurrent)
            await until(lambda: len(deferred) >= n, timeout_s=10, what="every completion")
            await asyncio.sleep(0.05)
            assert [icpt._deferred for icpt in interceptors] == [0]
        finally:
            await ch.close()
            await srv.drain()
            await reg.close()

    with asyncio.Runner(
        loop_factory=loop_kind_factory(kind, _OwnCallSoonLoop), debug=kind == "asyncio-debug"
    ) as runner:
        runner.run(main())
    writer.flush()
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    served = [ln for ln in lines if ln.get("side") == "server" and ln.get("method") == METHOD]
    assert sorted(str(ln.get("order_id")) for ln in served) == sorted(sequential + concurrent)
    assert all(ln["code"] == "OK" for ln in served)
    # an idle loop between calls: the calls made one at a time are deferred
    assert deferred.count(True) >= len(sequential) // 2, deferred
    if kind == "own-call_soon":
        assert _OwnCallSoonLoop.completions == deferred.count(True)
