"""A plain-function (sync) handler's downstream ``DEADLINE_EXCEEDED`` is answered as an
``async def`` handler's is.

meshkit/_unhandled.py's ``_downstream_deadline`` looked at ``grpc.aio.AioRpcError`` only,
so a sync handler whose synchronous downstream call (a ``grpc.insecure_channel`` stub)
ran out this call's deadline, or was refused by a meshkit server's deadline admission
(``meshkit-deadline-refused``), was answered ``UNKNOWN`` with an ``unhandled exception``
traceback at ``error`` where an async handler gets ``DEADLINE_EXCEEDED`` (telemetry said
``Unknown``, the log line was a traceback per call under overload). The refused case
failed so before the fix; the run-out case is a guard (grpc ends a call whose deadline
passed before its handler's answer, so nothing of it was logged either way).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc
import pytest
import structlog
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions
from meshkit.resilience._deadline import (
    ADMISSION_REFUSAL_METADATA,
    DOWNSTREAM_REFUSAL_DETAILS,
)
from tests.support.wait import until

_DOWN = "hunt43rs.Down"
_MID = "hunt43rs.Mid"


async def _down_slow(request: bytes, context: Any) -> bytes:
    await asyncio.sleep(30)
    return b"late"


async def _down_refuses(request: bytes, context: Any) -> bytes:
    # what a meshkit server answers for a deadline too short for its min_remaining_s,
    # passed on by a hop below
    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, DOWNSTREAM_REFUSAL_DETAILS,
                        trailing_metadata=(ADMISSION_REFUSAL_METADATA,))
    raise AssertionError("unreachable")


def _count(metrics: Any, name: str, **labels: str) -> float:
    return sum(float(sample.value) for family in metrics.collect() for sample in family.samples
               if sample.name == name
               and all(sample.labels.get(k) == v for k, v in labels.items()))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("which", ["RunOut", "Refused"], ids=["run-out", "refused"])
async def test_a_sync_handlers_downstream_deadline_is_answered_deadline_exceeded(
        registry: LocalRegistry, which: str) -> None:
    down = grpc.aio.server()
    down.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_DOWN, {
        "Slow": grpc.unary_unary_rpc_method_handler(_down_slow),
        "Refuses": grpc.unary_unary_rpc_method_handler(_down_refuses)}),))
    port = down.add_insecure_port("127.0.0.1:0")
    await down.start()
    target = f"127.0.0.1:{port}"

    ended = threading.Event()

    def mid(request: bytes, context: Any) -> bytes:  # a plain function: a handler thread
        method = "Slow" if which == "RunOut" else "Refuses"
        try:
            with grpc.insecure_channel(target) as raw:
                ch: Any = raw
                # under this call's own deadline, as a sync handler passes it on by hand
                answer: bytes = ch.unary_unary(f"/{_DOWN}/{method}")(
                    b"", timeout=context.time_remaining())
                return answer
        finally:
            ended.set()

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            _MID, {"Call": grpc.unary_unary_rpc_method_handler(mid)}),))

    metrics = CollectorRegistry()

    def counted() -> float:
        return _count(metrics, "grpc_server_handled_total", grpc_service=_MID,
                      grpc_method="Call")

    srv = meshkit.MeshServer(_MID, [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, admin=None, drain_delay_s=0.0, grace_s=1.0,
                                 telemetry=TelemetryOptions(registry=metrics)))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as raw:
            ch: Any = raw
            # run out: the caller's deadline short (the downstream sleeps 30 s); refused:
            # time enough, the answer is the server's own
            timeout = 1.5 if which == "RunOut" else 20.0
            with structlog.testing.capture_logs() as logs:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await ch.unary_unary(f"/{_MID}/Call")(b"", timeout=timeout)
                # the handler's exception answered, and the call recorded
                await until(ended.is_set, timeout_s=30, what="the handler's end")
                await until(lambda: counted() >= 1, timeout_s=30, what="the call's record")
                # the answer's log line comes right after the handler ends: a few loop
                # turns (never a timing bound: it is written or not)
                for _ in range(20):
                    await asyncio.sleep(0.05)
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            if which == "Refused":
                assert info.value.details() == DOWNSTREAM_REFUSAL_DETAILS
                assert ADMISSION_REFUSAL_METADATA in tuple(
                    tuple(item) for item in info.value.trailing_metadata() or ())
    finally:
        await srv.drain()
        await down.stop(None)
    errors = [e for e in logs if e.get("event") == "unhandled exception"]
    assert not errors, errors
    if which == "RunOut":  # the call gone with its deadline: grpc ended it, not the answer
        return
    by_code = {code: _count(metrics, "grpc_server_handled_total", grpc_service=_MID,
                            grpc_method="Call", grpc_code=code)
               for code in ("DeadlineExceeded", "Unknown")}
    assert by_code == {"DeadlineExceeded": 1.0, "Unknown": 0.0}, by_code
