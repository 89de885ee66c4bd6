"""The JSON access log's writer is re-entered on the thread that holds its lock when a
finalizer the garbage collector runs inside the locked section logs an access line: a
client call whose coroutine was dropped while suspended (a task of a loop that was closed
with it pending) is closed by the collector, and the telemetry interceptor logs the
call's line from its ``GeneratorExit``. A collection starts at whatever allocation
crosses the threshold, and the batch's rendering (the records' ``build``) allocates the
most. With a plain ``Lock`` the thread then waited for itself for ever (py-spy: the
inner ``write_access`` at ``with w._lock`` under ``_write_locked``, 0 % CPU). Each case
runs in a child process with a timeout, so a deadlock fails instead of hanging the
suite; the collection is started by ``gc.collect()`` in a record's ``build``, where an
allocation may start one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_SCRIPT = r"""
import asyncio, gc, io, json, sys

from prometheus_client import CollectorRegistry

from meshkit.interceptors import CallKind, ClientCallDetails
from meshkit.observability import TelemetryOptions, flush_logs
from meshkit.observability._client import TelemetryClientInterceptor
from meshkit.observability._logging import (
    BufferedLineWriter, _AccessLog, _AccessWriter, write_access)

case = sys.argv[1]


class Feeds(io.StringIO):  # a stream that logs an access line for each batch written
    def write(self, s):
        n = len(self.getvalue().splitlines())
        if n < 50:  # (the guard of the test: a stream fed for ever stops here)
            write_access(False, build, (10 + n,))
        return super().write(s)


out = Feeds() if case == "feeds-itself" else io.StringIO()
writer = BufferedLineWriter(out, flush_interval_s=0 if case == "at-once" else 30)
_AccessLog.logger = _AccessWriter(writer, 20)
icpt = TelemetryClientInterceptor(TelemetryOptions(registry=CollectorRegistry(),
                                                   tracing=False))


class Suspend:
    def __await__(self):
        yield


async def proceed(details, request):
    await Suspend()  # a call still waiting for its answer


def drop_a_suspended_call():
    details = ClientCallDetails(service="dropped", method="/meshkit.test.Echo/Unary",
                                kind=CallKind.UNARY_UNARY, timeout_s=5, metadata=())
    coro = icpt.intercept_unary(details, b"x", proceed)
    coro.send(None)
    cycle = [coro]
    cycle.append(cycle)  # garbage only the collector frees (closing the coroutine)


def build(n):
    if n == 1:
        if case == "flush-inside":  # e.g. a signal handler that flushes the logs
            flush_logs(0)
        else:
            gc.collect()  # a collection an allocation here starts
    return {"n": n}


gc.disable()  # the collection comes where the script says
drop_a_suspended_call()
if case == "at-once":
    write_access(False, build, (1,))
elif case == "feeds-itself":
    writer.flush_interval_s = 0
    write_access(False, build, (0,))
    print(json.dumps([json.loads(line)["n"] for line in out.getvalue().splitlines()]))
    sys.exit()
else:
    async def main():
        for n in range(3):
            write_access(False, build, (n,))
        flush_logs(0)

    asyncio.run(main())
flush_logs(0)
lines = [json.loads(line) for line in out.getvalue().splitlines()]
print(json.dumps([line.get("n", line.get("service", line.get("target"))) for line in lines]))
"""


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("at-once", [1, "dropped"]),
        ("batch", [0, 1, 2, "dropped"]),
        ("flush-inside", [0, 1, 2]),
        # the line the stream logs as it takes a batch follows it; the one it logs as it
        # takes that line waits for the next batch
        ("feeds-itself", [0, 10]),
    ],
    ids=["at-once", "batch", "flush-inside", "feeds-itself"],
)
def test_a_line_logged_while_the_writer_writes_is_written_after_it(
    case: str, expected: list[object]
) -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", _SCRIPT, case],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case}: the access log's writer waited for itself (deadlock)")
    assert done.returncode == 0, done.stderr[-2000:]
    # in order, each line once: the one logged inside after the batch it interrupted
    assert json.loads(done.stdout) == expected
