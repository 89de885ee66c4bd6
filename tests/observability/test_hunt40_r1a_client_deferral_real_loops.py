"""Review of 0f217b5 (the client telemetry's deferred completion: its two ``call_soon`` hops
made as Handles on asyncio's own loop, both in one copy of the finishing call's context)
on a real MeshServer and channel over loopback, on asyncio's loop, asyncio's in debug mode,
a loop with its own ``call_soon`` and uvloop. With an access logger that renders each line
as it is written (not the JSON batch writer: the mode whose client lines are deferred),
each call's client line is written once, after the answer, carrying what its caller bound
with structlog's context variables around the call (never another call's), for calls one
at a time and 16 at once; nothing stays counted as deferred."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.observability import TelemetryClientInterceptor, TelemetryOptions
from meshkit.observability._logging import _AccessLog
from tests.support.echo import add_echo, method
from tests.support.loops import LOOP_KINDS, loop_kind_factory
from tests.support.wait import until


class _OwnCallSoonLoop(asyncio.SelectorEventLoop):
    """asyncio's loop with a ``call_soon`` of its own."""

    calls = 0

    def call_soon(self, callback: Any, *args: Any, context: Any = None) -> Any:  # type: ignore[override]
        type(self).calls += 1
        return super().call_soon(callback, *args, context=context)


class _Lines:
    """An access logger rendering on the spot: each event's fields and the structlog
    context variables current where it is written."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def _log(self, event: str, **fields: Any) -> None:
        self.lines.append({**structlog.contextvars.get_contextvars(), **fields})

    info = warning = error = debug = _log


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_each_client_call_gets_one_line_in_its_callers_context(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _Lines()
    monkeypatch.setattr(_AccessLog, "logger", log)
    deferred: list[bool] = []
    interceptors: list[TelemetryClientInterceptor] = []
    real = TelemetryClientInterceptor._complete

    def complete(self: TelemetryClientInterceptor, is_deferred: bool, *args: Any) -> None:
        deferred.append(is_deferred)
        if self not in interceptors:
            interceptors.append(self)
        real(self, is_deferred, *args)

    monkeypatch.setattr(TelemetryClientInterceptor, "_complete", complete)
    sequential = [f"seq-{i}" for i in range(12)]
    concurrent = [f"con-{i}" for i in range(16)]

    async def main() -> None:
        reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=3.0, poll_interval_s=0.05))
        srv = meshkit.MeshServer(
            "echo",
            [add_echo("e1")],
            registry=reg,
            options=meshkit.ServeOptions(
                insecure=True,
                drain_delay_s=0.0,
                grace_s=1.0,
                telemetry=TelemetryOptions(
                    registry=CollectorRegistry(), tracing=False, access_log=False
                ),
            ),
        )
        await srv.start()
        ch = meshkit.dial(
            "echo",
            registry=reg,
            options=meshkit.DialOptions(
                insecure=True,
                telemetry=TelemetryOptions(registry=CollectorRegistry(), tracing=False),
            ),
        )
        try:
            await ch.wait_for_endpoints(1, timeout_s=10)
            call: Any = ch.unary_unary(method("Unary"))

            async def one(order: str) -> bytes:
                with structlog.contextvars.bound_contextvars(order_id=order):
                    answer: bytes = await call(order.encode(), timeout=10)
                return answer

            for r in sequential:
                assert await one(r) == b"e1|" + r.encode()
                await asyncio.sleep(0.01)  # the loop idles between calls
            got = await asyncio.gather(*(one(r) for r in concurrent))
            assert got == [b"e1|" + r.encode() for r in concurrent]
            n = len(sequential) + len(concurrent)
            await until(
                lambda: sum(ln.get("side") == "client" for ln in log.lines) >= n,
                timeout_s=10,
                what="every client line",
            )
            await asyncio.sleep(0.05)
            assert [icpt._deferred for icpt in interceptors] in ([], [0])
        finally:
            await ch.close()
            await srv.drain()
            await reg.close()

    with asyncio.Runner(
        loop_factory=loop_kind_factory(kind, _OwnCallSoonLoop), debug=kind == "asyncio-debug"
    ) as runner:
        runner.run(main())
    client = [ln for ln in log.lines if ln.get("side") == "client"]
    assert sorted(str(ln.get("order_id")) for ln in client) == sorted(sequential + concurrent)
    assert all(ln["code"] == "OK" for ln in client)
    # an idle loop between calls: the calls made one at a time are deferred
    assert deferred.count(True) >= len(sequential) // 2, deferred
    if kind == "own-call_soon":
        assert _OwnCallSoonLoop.calls > 0
