"""Two threads making a registry's first metrics, or a method's first record, at once.

``rpc_metrics(registry)`` looked the registry up and, finding nothing, made an
``RpcMetrics`` for it, unlocked: two threads asking at once (two servers or channels
started on two threads' event loops, counting into one ``TelemetryOptions.registry``, or
into the default registry on first use) both made one, and the second's registration
raised prometheus-client's ``DuplicateTimeseries`` out of ``serve()``/``dial()``.

``RpcMetrics.bind_client``/``bind_server`` did the same per method: two threads binding
one method at once each made a record, the second stored over the first, and the
calls counted in the first (its interceptor keeps the record it was handed, per method)
were never rendered: a channel's calls of that method missing from ``/metrics`` for the
life of the channel.

Both now make the object under a lock, looking again once they hold it. The tests hold
the first thread inside the constructor until a second thread arrives (a barrier, at
most 1 s): before the fix the second made its own; now it waits for the first's.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from meshkit.observability import _metrics
from meshkit.observability._semconv import MethodNames

pytestmark = pytest.mark.timeout(60)

_MEET_S = 1.0  # how long the first constructor waits for a second thread to arrive


def _at_once(n: int, call: Callable[[], Any]) -> tuple[list[Any], list[BaseException]]:
    """``call()`` in ``n`` threads started together: results and exceptions."""
    start = threading.Barrier(n)
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        start.wait(timeout=10)
        try:
            results.append(call())
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    return results, errors


def _meeting() -> Callable[[], None]:
    """A wait for a second thread to reach the same point (at most ``_MEET_S``)."""
    meet = threading.Barrier(2)

    def wait() -> None:
        # alone in the constructor (the fix): the other thread waits at the lock
        with contextlib.suppress(threading.BrokenBarrierError):
            meet.wait(timeout=_MEET_S)

    return wait


def test_rpc_metrics_of_one_registry_from_two_threads_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Both threads get the one ``RpcMetrics`` of the registry; neither raises
    ``DuplicateTimeseries``."""
    wait = _meeting()

    class Slow(_metrics.RpcMetrics):
        def __init__(self, registry: CollectorRegistry) -> None:
            wait()
            super().__init__(registry)

    monkeypatch.setattr(_metrics, "RpcMetrics", Slow)
    registry = CollectorRegistry()
    results, errors = _at_once(2, lambda: _metrics.rpc_metrics(registry))
    assert errors == []
    assert len(results) == 2 and results[0] is results[1]
    assert _metrics.rpc_metrics(registry) is results[0]


@pytest.mark.parametrize("side", ["client", "server"], ids=["client", "server"])
def test_one_method_bound_from_two_threads_gets_one_record(
        monkeypatch: pytest.MonkeyPatch, side: str) -> None:
    """Both threads get the record the registry renders, so each one's calls count."""
    wait = _meeting()
    base = _metrics.BoundClient if side == "client" else _metrics.BoundServer

    class Slow(base):  # type: ignore[misc,valid-type]
        __slots__ = ()

        def __init__(self, labels: tuple[str, str, str], bounds: tuple[float, ...]) -> None:
            wait()
            super().__init__(labels, bounds)

    rpc = _metrics.RpcMetrics(CollectorRegistry())
    monkeypatch.setattr(_metrics, "BoundClient" if side == "client" else "BoundServer", Slow)
    names = MethodNames("/p.S/M", "unary")
    bind = rpc.bind_client if side == "client" else rpc.bind_server
    results, errors = _at_once(2, lambda: bind(names))
    assert errors == []
    assert len(results) == 2 and results[0] is results[1]
    for record in results:
        record.start()
        record.finished(grpc.StatusCode.OK, 0.001)
    records = rpc.clients if side == "client" else rpc.servers
    assert [r.started for r in records.values()] == [2]


def test_other_record_bound_from_two_threads_gets_one_record(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A server's unregistered methods share one ``other`` record, made once too."""
    wait = _meeting()

    class Slow(_metrics.BoundServer):
        __slots__ = ()

        def __init__(self, labels: tuple[str, str, str], bounds: tuple[float, ...]) -> None:
            wait()
            super().__init__(labels, bounds)

    rpc = _metrics.RpcMetrics(CollectorRegistry())
    monkeypatch.setattr(_metrics, "BoundServer", Slow)
    results, errors = _at_once(2, lambda: rpc.bind_server(
        MethodNames("/made.Up/X", "unary"), registered=False))
    assert errors == []
    assert len(results) == 2 and results[0] is results[1]
