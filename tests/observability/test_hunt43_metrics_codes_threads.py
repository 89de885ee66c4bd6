"""Calls of one method finishing with an error on several threads at once all count.

A method's record is shared by every channel (and server) of the process counting into
one registry, whatever event loop they run on: two threads each running an event loop
(``asyncio.run`` in a thread, a thread's own ``serve()``) finish calls of one method in
the same record. ``_Record.finished`` counted a non-OK code with
``handled[code] = handled.get(code, 0) + 1``: ``grpc.StatusCode`` hashes in Python, and a
thread switch between the read and the write lost the other thread's increment, so
``grpc_client_handled_total{grpc_code="Unavailable"}`` (and the error ratio the alerts
read) under-counted: with a short switch interval a quarter of the errors were lost
while ``grpc_client_started_total`` and the histogram counted every call.

Now a non-OK code is counted under a lock (an OK call, the hot path, is a plain
``+=`` on a slot, which no thread switch splits).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import grpc
import pytest
from prometheus_client import CollectorRegistry

from meshkit.observability._metrics import RpcMetrics
from meshkit.observability._semconv import MethodNames

pytestmark = pytest.mark.timeout(120)

_THREADS = 4
_CALLS = 30_000  # per thread


@pytest.fixture
def often_switching() -> Iterator[None]:
    """Threads switched as often as CPython allows (a race shows within a few calls)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("often_switching")
def test_error_codes_finished_on_several_threads_are_all_counted() -> None:
    rpc = RpcMetrics(CollectorRegistry())
    record = rpc.bind_client(MethodNames("/p.S/M", "unary"))
    start = threading.Barrier(_THREADS)
    codes = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)

    def run() -> None:
        start.wait(timeout=10)
        for i in range(_CALLS):
            record.start()
            record.finished(codes[i % 2], 0.001)

    threads = [threading.Thread(target=run) for _ in range(_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=100)
    assert not any(t.is_alive() for t in threads)
    total = _THREADS * _CALLS
    assert record.started == total and sum(record.counts) == total
    assert record.in_flight == 0
    assert dict(record.handled) == {codes[0]: total // 2, codes[1]: total // 2}


@pytest.mark.usefixtures("often_switching")
def test_count_code_on_several_threads_counts_every_one() -> None:
    """``count_code``, the non-OK count alone (for a caller counting the rest inline, as
    the server telemetry does), loses none either."""
    rpc = RpcMetrics(CollectorRegistry())
    record = rpc.bind_server(MethodNames("/p.S/M", "unary"))
    start = threading.Barrier(_THREADS)

    def run() -> None:
        start.wait(timeout=10)
        for _ in range(_CALLS):
            record.count_code(grpc.StatusCode.UNAVAILABLE)

    threads = [threading.Thread(target=run) for _ in range(_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=100)
    assert not any(t.is_alive() for t in threads)
    assert dict(record.handled) == {grpc.StatusCode.UNAVAILABLE: _THREADS * _CALLS}
