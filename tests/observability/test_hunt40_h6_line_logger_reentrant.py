"""A line logged through :func:`configure_logging`'s general chain while the same thread
writes another: a task of a closed loop, destroyed pending, is collected by the garbage
collector while a line is written, and asyncio's "Task was destroyed but it is pending!"
goes through the standard library's last resort to structlog (configure_logging bridges
it) and to the same line logger. With plain locks the thread then waited for itself for
ever: the line logger's lock (held around the stream's write) and the log writer's
condition (held while ``poll()`` asks whether standard error takes the line, which
allocates its answer). Each case runs in a child process with a timeout, so a deadlock
fails instead of hanging the suite; the collection is started by ``gc.collect()`` where
an allocation may start one: in an application stream's ``write()``, and in the poll of
the interpreter's own standard error (a pipe here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_SCRIPT = r"""
import asyncio, gc, io, logging, sys

case = sys.argv[1]


class Stream(io.StringIO):  # an application's own stream
    collect = True

    def write(self, s):
        if self.collect:
            self.collect = False
            gc.collect()  # a collection an allocation here starts
        return super().write(s)


class ToLogger:  # standard error forwarded to logging (a common recipe)
    def __init__(self):
        self.got = []

    def write(self, s):
        self.got.append(s)
        if len(self.got) < 6:  # (the guard of the test: fed for ever, it stops here)
            logging.getLogger("stderr").error(s.strip())
        return len(s)

    def flush(self):
        pass


if case == "stream":
    sys.stderr = Stream()
elif case == "stream-logs-itself":
    sys.stderr = ToLogger()

from meshkit.observability import configure_logging
from meshkit.observability import _logging

configure_logging("info", json=True)

if case in ("stderr-fd", "access-stderr-fd"):
    import select

    class Poll:  # standard error's poll, as _FdWriter._takes_now asks it
        collect = True

        def poll(self, timeout):
            if self.collect:
                self.collect = False
                gc.collect()  # its answer is a new list: a collection may start there
            return [(2, select.POLLOUT)]

    assert _logging._file_fd(sys.stderr) == 2
    _logging._fd_writer._polls[2] = Poll()


def drop_a_pending_task():
    loop = asyncio.new_event_loop()

    async def waits():
        await loop.create_future()

    loop.create_task(waits())
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()  # the task is left pending, in a cycle with its future


gc.disable()  # the collection comes where the script says
if case != "stream-logs-itself":
    drop_a_pending_task()
if case == "access-stderr-fd":  # an access line written at once (outside a loop)
    _logging.write_access(False, lambda: {"outer": True}, ())
else:
    _logging.get_logger("app").warning("outer")
_logging.flush_logs()
if case == "stream":
    sys.__stderr__.write(sys.stderr.getvalue())
elif case == "stream-logs-itself":
    sys.__stderr__.write("".join(sys.stderr.got))
"""


@pytest.mark.parametrize("case", ["stream", "stderr-fd", "access-stderr-fd", "stream-logs-itself"])
def test_a_line_logged_while_a_line_is_written_follows_it(case: str) -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", _SCRIPT, case],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        done = None
    assert done is not None, f"{case}: the thread waited for itself (deadlock)"
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    got = [line.get("outer") or line["event"].split("\n")[0] for line in lines]
    if case == "stream-logs-itself":  # the line it logs as it takes the first follows it;
        # the one it logs as it takes that line is dropped (no stream feeds itself for ever)
        assert [line["event"] for line in lines][:1] == ["outer"]
        assert [line.get("logger") for line in lines] == [None, "stderr"], got
    elif case == "access-stderr-fd":  # each once (the log writer's order: either)
        got.sort(key=str)
        assert got == ["Task was destroyed but it is pending!", True], done.stderr[-2000:]
    else:  # in order, each once: the line logged inside after the one it interrupted
        assert got == ["outer", "Task was destroyed but it is pending!"], done.stderr[-2000:]
