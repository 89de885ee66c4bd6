"""A call finished by the garbage collector while its thread counts a code never hangs.

``_Record.finished`` and ``_Record.count_code`` (the server telemetry's ``_finish``)
count a non-OK code under a process-wide lock (7aa53883, 4ed1d762). Counting hashes the
``grpc.StatusCode`` key, and its ``__hash__`` is Python code: from Python 3.12 a
collection that is due runs at the eval breaker of such a call, i.e. *inside* the lock.
A collection finalizes what it frees: a server response stream's generator (or a
handler's coroutine) abandoned outside its loop is closed with ``GeneratorExit``, and the
telemetry finishes that call as ``CANCELLED`` -- counting its code under the same lock,
on the same thread. With a plain ``threading.Lock`` the thread waited for itself for
ever (an event loop hung, and every later error count of the process behind it):
reproduced with the same pattern on CPython 3.12.1 and 3.13.0 (``gc.set_threshold(1)``).

This interpreter may run collections elsewhere, so the tests stand a code in for
``StatusCode`` whose ``__hash__`` runs the collection where 3.12+ may: inside the lock.
The fix: the lock is reentrant; the nested count is kept.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(180)

_HANG_S = 60.0  # a count takes microseconds; a hung one never ends

# Each case runs in a child interpreter: a thread hung in a collection leaves the
# collector "collecting" for ever (every later collection of that process does nothing),
# which would spoil the cases after it.
_PRELUDE = textwrap.dedent("""
    import gc
    import grpc
    from meshkit.observability import _metrics

    class CollectingCode:
        # a status code whose hash runs a garbage collection once (where CPython
        # 3.12+ may run one due: the eval breaker of StatusCode.__hash__)
        armed = False

        def __hash__(self):
            if self.armed:
                self.armed = False
                gc.collect()
            return 1234

    class AbandonedCall:
        # garbage in a cycle whose finalizer finishes its call cancelled, as the
        # telemetry does for a stream handler's generator closed by the collector
        def __init__(self, finish):
            self.cycle = self
            self.finish = finish

        def __del__(self):
            self.finish()

    code = CollectingCode()
    gc.disable()  # collected where the code's hash says, not before
""")

_CASES = {
    "finished": """
        record = _metrics.BoundServer(("unary", "p.S", "M"), (0.1, 1.0))
        record.start(); record.start()
        AbandonedCall(lambda: record.finished(grpc.StatusCode.CANCELLED, 0.001))
        code.armed = True
        record.finished(code, 0.001)
        assert not code.armed
        assert record.handled == {code: 1, grpc.StatusCode.CANCELLED: 1}, record.handled
        assert record.in_flight == 0
    """,
    "count_code": """
        record = _metrics.BoundServer(("unary", "p.S", "M"), (0.1, 1.0))
        AbandonedCall(lambda: record.count_code(grpc.StatusCode.CANCELLED))
        code.armed = True
        record.count_code(code)
        assert not code.armed
        assert record.handled == {code: 1, grpc.StatusCode.CANCELLED: 1}, record.handled
    """,
    "same_code": """
        # the nested count of the same code (the collection runs while the outer
        # count hashes its key to read it) is not overwritten by the outer one
        record = _metrics.BoundClient(("unary", "p.S", "M"), (0.1, 1.0))
        AbandonedCall(lambda: record.count_code(code))
        code.armed = True
        record.count_code(code)
        assert not code.armed
        assert record.handled == {code: 2}, record.handled
    """,
}


@pytest.mark.parametrize("case", sorted(_CASES), ids=sorted(_CASES))
def test_a_code_counted_while_the_collector_finishes_another_call(case: str) -> None:
    script = _PRELUDE + textwrap.dedent(_CASES[case]) + "print('counted')\n"
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True,
                              text=True, timeout=_HANG_S)
    except subprocess.TimeoutExpired:
        done = None
    assert done is not None, "the thread waits for the lock it holds (a finalizer counted)"
    assert done.returncode == 0 and done.stdout.strip() == "counted", done.stderr[-2000:]
