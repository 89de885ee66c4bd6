"""The server telemetry's inline count of a finished call loses no error code across
threads.

``TelemetryServerInterceptor._finish`` counts a call's outcome inline (what
``_Record.finished`` does, without its frame). Two servers of one process serving the same
method on two threads' event loops count into one record (one registry, the same labels);
its non-OK count was ``handled[code] = handled.get(code, 0) + 1``, which a thread switch
splits (``grpc.StatusCode`` hashes in Python), so ``grpc_server_handled_total`` for error
codes under-counted while ``grpc_server_started_total`` counted every call. It now counts a
non-OK code with ``_Record.count_code`` (under the lock ``finished`` takes; an OK call is
still a plain ``+=``).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from meshkit.observability import TelemetryOptions
from meshkit.observability._server import TelemetryServerInterceptor

pytestmark = pytest.mark.timeout(120)

_THREADS = 4
_CALLS = 20_000  # per thread


@pytest.fixture
def often_switching() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


class _Context:
    """What ``_finish`` reads of a grpc.aio servicer context: the code the handler set."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


@pytest.mark.usefixtures("often_switching")
def test_error_codes_finished_on_several_threads_are_all_counted() -> None:
    prom = CollectorRegistry()
    icpt = TelemetryServerInterceptor(
        "s", TelemetryOptions(tracing=False, registry=prom, access_log=False))
    handler = grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)
    reporter: Any = icpt._reporter_for("/p.S/M", handler)
    assert reporter is not None and reporter.messages is not None
    record = reporter.messages
    codes = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
    contexts = tuple(_Context(code) for code in codes)
    start = threading.Barrier(_THREADS)

    def run() -> None:
        start.wait(timeout=10)
        for i in range(_CALLS):
            context = contexts[i % 2]
            state = reporter.start(context)
            reporter.finish(state, context, None)

    threads = [threading.Thread(target=run) for _ in range(_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=100)
    assert not any(t.is_alive() for t in threads)
    total = _THREADS * _CALLS
    assert record.started == total, record.started
    assert dict(record.handled) == {codes[0]: total // 2, codes[1]: total // 2}, \
        dict(record.handled)
