"""A non-OK code counted by a finalizer inside another count of it is never lost.

0a26f5f1 made the code-count lock reentrant: a garbage collection may run inside it
(from CPython 3.12 at the eval breaker of ``StatusCode.__hash__``, Python code) and
finalize a stream handler's generator, whose telemetry counts ``CANCELLED`` on the same
thread. Its test covers a collection at the first hash of the count (the read); the
count hashes the key a second time to write it, and a collection there ran the nested
count between the outer one's read and its write: the outer write put back the value it
had read plus one, and the nested call was lost from ``grpc_*_handled_total``. Fixed:
a count nested in another is queued and added by the outer one after its own write.
"""

from __future__ import annotations

import gc
import os
import signal
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from meshkit.observability import _metrics


class _CollectingCode:
    """A status code whose ``n``-th hash runs a garbage collection (where CPython 3.12+
    may run one that is due)."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.hashes = 0

    def __hash__(self) -> int:
        self.hashes += 1
        if self.hashes == self.at:
            gc.collect()
        return 4321

    def __eq__(self, other: object) -> bool:
        return other is self


class _AbandonedCall:
    """Garbage in a cycle whose finalizer finishes its call, as the telemetry does for a
    stream handler's generator closed by the collector."""

    def __init__(self, finish: Callable[[], None]) -> None:
        self.cycle = self
        self.finish = finish

    def __del__(self) -> None:
        self.finish()


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


_RECORD = ("unary", "p.S", "M")


@pytest.mark.parametrize("at", [1, 2, 3], ids=["read-hash", "write-hash", "later"])
def test_count_code_nested_at_either_hash_is_kept(no_automatic_gc: None, at: int) -> None:
    record = _metrics.BoundServer(_RECORD, (0.1, 1.0))
    code = _CollectingCode(at)
    _AbandonedCall(lambda: record.count_code(code))  # type: ignore[arg-type]
    record.count_code(code)  # type: ignore[arg-type]
    if code.hashes < at:  # not collected inside the outer count: collect now
        gc.collect()
    assert record.handled == {code: 2}


@pytest.mark.parametrize("at", [1, 2], ids=["read-hash", "write-hash"])
def test_finished_nested_at_either_hash_is_kept(no_automatic_gc: None, at: int) -> None:
    record = _metrics.BoundServer(_RECORD, (0.1, 1.0))
    record.start()
    record.start()
    code = _CollectingCode(at)
    _AbandonedCall(lambda: record.finished(code, 0.001))  # type: ignore[arg-type]
    record.finished(code, 0.001)  # type: ignore[arg-type]
    assert record.handled == {code: 2}
    assert record.in_flight == 0
    assert sum(record.counts) == 2


def test_nested_cancelled_inside_another_code_is_kept(no_automatic_gc: None) -> None:
    record = _metrics.BoundServer(_RECORD, (0.1, 1.0))
    code = _CollectingCode(2)
    _AbandonedCall(lambda: record.count_code(grpc.StatusCode.CANCELLED))
    _AbandonedCall(lambda: record.count_code(code))  # type: ignore[arg-type]
    record.count_code(code)  # type: ignore[arg-type]
    assert record.handled == {code: 2, grpc.StatusCode.CANCELLED: 1}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork only")
def test_a_forked_child_counts_though_a_parent_thread_was_counting() -> None:
    # a parent thread inside a count at the fork: the child's counts are not queued for
    # an outer count that will never end there
    record = _metrics.BoundServer(_RECORD, (0.1, 1.0))
    with _metrics._CODES.lock:
        _metrics._CODES.counting = True
        try:
            pid = os.fork()
            if pid == 0:  # the child
                ok = False
                try:
                    record.count_code(grpc.StatusCode.CANCELLED)
                    ok = record.handled == {grpc.StatusCode.CANCELLED: 1}
                finally:
                    os._exit(0 if ok else 1)
        finally:
            _metrics._CODES.counting = False
    deadline = time.monotonic() + 60.0
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child did not end in 60 s")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0, "the child's count was lost"
