"""A grpc.aio server of your own with meshkit's interceptors refuses a plain-function
handler's call ``RESOURCE_EXHAUSTED`` "server busy" (nack trailer) when the loop's
default executor cannot start a thread for it (8e650728). Before this test's fix the
refusal was silent: no line in the server's log, while every such call was answered
"server busy" (an operator saw a busy server with idle CPUs and nothing logged; before
8e650728 the same calls failed ``UNKNOWN`` and were logged as unhandled exceptions). A
MeshServer's pool warns once ("could not start a handler thread", eaab9dec); the
default-executor path now warns too, at most once a minute (``meshkit.server``).

A real ``grpc.aio`` server on 127.0.0.1; the failing start is the one thing injected, as
in tests/test_hunt42_r_handler_default_executor_start_fails.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from meshkit import _handlers
from meshkit._handlers import Before, WrappingInterceptor, handler_resolver
from meshkit._limits import guard_generic_handler

pytestmark = pytest.mark.timeout(60)

_SERVICE = "hunt42.r.DefaultExecutorLog"
_PREFIX = "hunt42-default-executor-log"
_WAIT_S = 8.0


class _Checks(WrappingInterceptor):
    def _before_for(self, method: str) -> Before | None:
        def before(context: Any) -> None:
            return None

        return before


@pytest.fixture
def refusing(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    refused = [0]
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name.startswith(_PREFIX):
            refused[0] += 1
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    # (a warning of an earlier test in this process must not hide this one's)
    monkeypatch.setattr(_handlers, "_NO_DEFAULT_THREAD_WARNED_AT", None, raising=False)
    yield refused


@pytest.fixture
async def channel(refusing: list[int]) -> AsyncIterator[grpc.aio.Channel]:
    def work(request: bytes, context: Any) -> bytes:
        return b"done:" + request

    def down(request: bytes, context: Any) -> Iterator[bytes]:
        yield b"first:" + request

    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix=_PREFIX)
    loop.set_default_executor(pool)
    service = guard_generic_handler(grpc.method_handlers_generic_handler(_SERVICE, {
        "Work": grpc.unary_unary_rpc_method_handler(work),
        "Down": grpc.unary_stream_rpc_method_handler(down)}), handler_resolver([_Checks()]))
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((service,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    chan = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield chan
    finally:
        await chan.close()
        await server.stop(None)
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        pool.shutdown(wait=False, cancel_futures=True)


@pytest.mark.parametrize("method", ["Work", "Down"])
async def test_refusals_for_want_of_a_default_executor_thread_are_logged_once(
        channel: grpc.aio.Channel, refusing: list[int], method: str) -> None:
    with capture_logs() as logs:
        for n in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                if method == "Work":
                    await channel.unary_unary(f"/{_SERVICE}/Work")(b"x", timeout=_WAIT_S)
                else:
                    call = channel.unary_stream(f"/{_SERVICE}/Down")(b"x", timeout=_WAIT_S)
                    _ = [m async for m in call]
            assert (failed.value.code(), failed.value.details()) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED, "server busy"), n
    assert refusing[0] == 3
    warned = [e for e in logs if str(e.get("event", "")).startswith("could not start")]
    assert len(warned) == 1, logs
    assert warned[0]["log_level"] == "warning"
    assert "can't start new thread" in str(warned[0].get("error")), warned[0]
    assert not [e for e in logs if e["log_level"] in ("error", "critical")], logs
