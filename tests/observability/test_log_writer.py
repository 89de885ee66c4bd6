"""How meshkit writes log lines to the interpreter's own stderr/stdout
(``meshkit.observability._logging._FdWriter``): at once while the descriptor takes them,
queued for the ``meshkit-log-writer`` thread while the reader is behind. Every test runs a
small program in a subprocess whose standard error is a pipe the test reads (or, to play a
stalled log reader, does not read yet). The faults each test names were found in the
writer thread's first version (31bf897) and fixed before it was released."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(90)

_ROOT = Path(__file__).resolve().parents[2]

# What every program starts with: configure_logging() (JSON), a logger, a report channel
# (stdout, flushed at once) and fill_stderr(): standard error's pipe filled to the brim
# with '#' lines, so the next write(2) to it blocks until the reader reads (a stalled
# log reader), whatever the pipe's size.
_PRELUDE = '''
import os, sys, time, threading
from meshkit.observability import configure_logging, flush_logs
from meshkit.observability import _logging
from meshkit._log import get_logger

def rep(s):
    os.write(1, (s + "\\n").encode())

def fill_stderr():
    os.set_blocking(2, False)
    try:
        while True:
            os.write(2, b"#" * 1023 + b"\\n")
    except BlockingIOError:
        pass
    finally:
        os.set_blocking(2, True)

log = get_logger("app")
'''


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MESHKIT_", "OTEL_", "PYTHON"))}
    env["PYTHONPATH"] = str(_ROOT)
    env.update(extra)
    return env


class _Proc:
    """A program (``_PRELUDE`` + ``body``) with stdout and stderr pipes; stderr is read
    only from :meth:`read_stderr` on (a stalled reader until then). With ``stderr_file``
    its stderr is that file instead (``prog 2>>app.log``), read at :meth:`finish`."""

    def __init__(self, tmp_path: Path, body: str, *args: str,
                 stderr_file: Path | None = None, **env: str) -> None:
        script = tmp_path / "prog.py"
        script.write_text(_PRELUDE + textwrap.dedent(body))
        self._file = stderr_file
        if stderr_file is None:
            self._err_r, err_w = os.pipe()
        else:
            self._err_r, err_w = -1, os.open(stderr_file, os.O_WRONLY | os.O_CREAT
                                             | os.O_APPEND, 0o600)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), *args], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=err_w, cwd=_ROOT, env=_env(**env))
        os.close(err_w)
        self._err: list[bytes] = []
        self._reader: threading.Thread | None = None
        self._out_buf = b""

    def report(self, timeout_s: float) -> str | None:
        """The next line the program reported on stdout; None: none within the time."""
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._out_buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self._out_buf += chunk
        line, self._out_buf = self._out_buf.split(b"\n", 1)
        return line.decode()

    def send(self, s: str) -> None:
        self.proc.stdin.write(s.encode() + b"\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def read_stderr(self) -> None:
        def run() -> None:
            while True:
                chunk = os.read(self._err_r, 65536)
                if not chunk:
                    return
                self._err.append(chunk)

        self._reader = threading.Thread(target=run, daemon=True)
        self._reader.start()

    def finish(self, timeout_s: float = 30) -> tuple[int | None, str]:
        """Wait for the exit (read stderr meanwhile); (exit code or None, stderr text)."""
        if self._reader is None and self._file is None:
            self.read_stderr()
        try:
            code: int | None = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        self.close()
        if self._file is not None:
            return code, self._file.read_text(errors="replace")
        return code, b"".join(self._err).decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        if self._err_r >= 0:
            os.close(self._err_r)
            self._err_r = -1
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


def _records(text: str) -> list[dict[str, Any]]:
    """The JSON lines of ``text`` (the '#' filler skipped); a line that is not JSON fails."""
    out = []
    for ln in text.splitlines():
        if not ln or ln.startswith("#"):
            continue
        out.append(json.loads(ln))
    return out


# -- the writer thread is not used under PYTHONUNBUFFERED -------------------------------

def test_a_stalled_reader_does_not_block_logging_under_pythonunbuffered(
        tmp_path: Path) -> None:
    """``PYTHONUNBUFFERED=1`` (``python -u``; the ``ENV`` line of most Python container
    images, so that print() output reaches ``docker logs`` at once) makes ``sys.stderr``
    a TextIOWrapper straight over a ``FileIO``, no ``BufferedWriter``. ``_file_fd`` only
    accepts TextIOWrapper -> BufferedWriter -> FileIO, so every line goes the synchronous
    way: with a stalled reader the event loop blocks at its next line, exactly the fault
    31bf897 fixed (README: "A log reader that stalls ... never stops the event loop")."""
    p = _Proc(tmp_path, '''
        import asyncio
        fill_stderr()
        configure_logging("info", json=True)
        async def main():
            t = time.monotonic()
            for i in range(2000):
                log.info("line", i=i)
            rep(f"LOGGED {time.monotonic() - t:.2f}")
        asyncio.run(main())
        os._exit(0)
    ''', PYTHONUNBUFFERED="1")
    try:
        got = p.report(15)
    finally:
        p.close()
    assert got is not None and got.startswith("LOGGED"), \
        "logging 2000 lines blocked on a stalled stderr reader (PYTHONUNBUFFERED=1)"


# -- exit ---------------------------------------------------------------------------------

def test_exit_with_a_stalled_reader_waits_at_most_exit_wait_s(tmp_path: Path) -> None:
    """README: "at exit queued lines get at most 5 s". A normal exit waits twice: in
    threading's shutdown hook (``_at_threading_shutdown`` -> ``_fd_writer.close(5)``) and
    again in the atexit handler (``_at_exit`` -> ``close(5)``), whose ``wait`` does not
    look at ``_gave_up``: 10 s."""
    p = _Proc(tmp_path, '''
        fill_stderr()
        configure_logging("info", json=True)
        for i in range(100):
            log.info("line", i=i)
        rep("EXITING")
    ''')
    try:
        assert p.report(20) == "EXITING"
        t0 = time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.proc.wait(20)
        took = time.monotonic() - t0
    finally:
        p.close()
    assert took < 7.5, f"exit took {took:.1f} s with a stalled reader (EXIT_WAIT_S is 5)"


def test_a_forked_child_that_logs_and_os_exits_keeps_its_line(tmp_path: Path) -> None:
    """A pre-fork server's (or a daemon's double-fork) child logs its last line and ends
    with ``os._exit()`` (as a forked child must, not to run the parent's atexit handlers).
    Before 31bf897 the line was written when logged (``configure_logging``: "lines are
    written to stderr as they are logged"); now it waits in the child's writer thread's
    queue, which ``os._exit`` throws away: every child's line is lost, with a reader that
    reads everything at once."""
    p = _Proc(tmp_path, '''
        configure_logging("info", json=True)
        kids = []
        for k in range(5):
            pid = os.fork()
            if pid == 0:
                log.info("child exiting", k=k)
                os._exit(0)
            kids.append(pid)
        for pid in kids:
            os.waitpid(pid, 0)
        log.info("parent done")
    ''')
    p.read_stderr()
    code, err = p.finish()
    events = Counter(r["event"] for r in _records(err))
    assert code == 0
    assert events["parent done"] == 1
    assert events["child exiting"] == 5, events


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_a_pool_workers_last_task_keeps_its_lines(tmp_path: Path, method: str) -> None:
    """``with multiprocessing.Pool() as pool: pool.map(...)``, standard error a log file
    (``prog 2>>app.log``: a write to it never blocks). The pool's ``__exit__``
    terminates the workers (SIGTERM) once the results are in. A worker's task returned
    after logging its lines; before 31bf897 they were written by then, now they wait in
    the worker's writer thread queue (the logging thread holds the GIL for 5 ms slices,
    the writer is behind) and the SIGTERM kills it with them (hundreds of lines of a
    round's last tasks lost, in about half the rounds; all arrive before the commit)."""
    p = _Proc(tmp_path, '''
        import multiprocessing as mp

        def work(n):
            wlog = get_logger("worker")
            for i in range(2000):
                wlog.info("wline", n=n, i=i, pad="y" * 200)
            return n

        if __name__ == "__main__":
            configure_logging("info", json=True)
            ctx = mp.get_context(sys.argv[1])
            for rnd in range(12):  # each round's last tasks race their pool's terminate()
                with ctx.Pool(2, initializer=configure_logging,
                              initargs=("info",)) as pool:
                    rep(repr(pool.map(work, [rnd * 10 + k for k in range(4)])))
    ''', method, stderr_file=tmp_path / "app.log")
    code, err = p.finish(60)
    per_task = Counter(r.get("n") for r in _records(err) if r["event"] == "wline")
    assert code == 0
    short = {n: c for n, c in per_task.items() if c != 2000}
    assert len(per_task) == 48 and not short, f"tasks missing lines: {short}"


# -- order and splicing with the application's own stderr ---------------------------------

def test_a_line_logged_before_an_unhandled_exception_precedes_its_traceback(
        tmp_path: Path) -> None:
    """A program logs an error and dies of an unhandled exception. Python prints the
    traceback at once; meshkit's line, queued for the writer thread, comes after it (or
    in the middle of it), so the log reads as if the error was logged after the crash.
    Before 31bf897 it came first ("lines are written to stderr as they are logged")."""
    p = _Proc(tmp_path, '''
        configure_logging("info", json=True)
        log.error("about to fail", step=1)
        raise RuntimeError("boom")
    ''')
    p.read_stderr()
    code, err = p.finish()
    assert code == 1
    lines = err.splitlines()
    first = [n for n, ln in enumerate(lines) if "about to fail" in ln]
    tb = [n for n, ln in enumerate(lines) if ln.startswith("Traceback")]
    assert first and tb and first[0] < tb[0], lines


def test_a_json_line_never_lands_inside_the_applications_own_stderr_line(
        tmp_path: Path) -> None:
    """The application writes a line to ``sys.stderr`` in pieces (``"item 3 ... "``, work,
    ``"done\\n"``, as print() with several arguments and Python's traceback printer do).
    The writer thread's ``_write_chunks`` first calls ``out.flush()`` on
    ``sys.__stderr__`` from its own thread, pushing out the application's half line, then
    writes the JSON line after it: ``app 0 {"i":0,...}`` - the JSON no longer starts a
    line, so a log shipper cannot parse it. Before 31bf897 (written in the caller's
    thread) no line was ever spliced."""
    p = _Proc(tmp_path, '''
        configure_logging("info", json=True)
        for i in range(300):
            log.info("meshline", i=i)
            sys.stderr.write(f"app {i} ")
            time.sleep(0.001)  # computing the rest of the line
            sys.stderr.write("end\\n")
    ''')
    p.read_stderr()
    code, err = p.finish()
    assert code == 0
    spliced = [ln for ln in err.splitlines()
               if not (ln.startswith("{") and ln.endswith("}"))
               and not (ln.startswith("app ") and ln.endswith(" end"))]
    assert spliced == [], f"{len(spliced)} spliced lines, e.g. {spliced[:3]}"


# -- the dropped-lines warning ------------------------------------------------------------

def test_the_dropped_lines_warning_counts_every_dropped_line_once(tmp_path: Path) -> None:
    """README: lines past the bound "are dropped and counted (one ``log lines dropped``
    warning with the count once it writes again)". The warning is logged by the writer
    thread through the same bounded queue (``_FdWriter._run`` -> ``_log.warning`` ->
    ``put``), after its counter was reset: right after the reader resumes the queue is
    still full (one line written: room for about one line, the warning is longer), so
    the warning itself is dropped, the count it carried lost and only +1 counted: 2600
    lines dropped, one warning saying 1 (with natural line lengths it happens in some
    episodes, and then "dropped: 1" warnings follow). Lines logged = lines received +
    the counts reported."""
    p = _Proc(tmp_path, '''
        fill_stderr()
        configure_logging("info", json=True)
        w = _logging._fd_writer
        log.info("line", i="000000")  # the head: its write blocks
        size = w._queue[0][2]  # every line is as long (fixed-width fields)
        # room for 400 lines queued and a few characters more (the bound is what the
        # application chooses; any bound ends so, give or take a line's length)
        _logging.MAX_PENDING_LOG_CHARS = 400 * size + 5
        n = 3000
        for i in range(1, n):
            log.info("line", i=f"{i:06d}")
        rep(f"STALLED {w._dropped}")
        sys.stdin.readline()  # the reader reads again
        time.sleep(0.5)
        for i in range(n, n + 5):
            log.info("line", i=f"{i:06d}")
            time.sleep(0.05)
        flush_logs()
        time.sleep(0.3)
        flush_logs()
    ''')
    try:
        stalled = p.report(20)
        assert stalled is not None and stalled.startswith("STALLED"), stalled
        time.sleep(0.3)
        p.read_stderr()
        p.send("go")
        code, err = p.finish()
    finally:
        p.close()
    recs = _records(err)
    got = sum(1 for r in recs if r["event"] == "line")
    warnings = [r for r in recs if r["event"] == "log lines dropped"]
    assert code == 0
    assert all(w["level"] == "warning" for w in warnings)
    reported = sum(w["dropped"] for w in warnings)
    assert got + reported == 3005, \
        f"{got} lines received + {reported} reported dropped != 3005 logged " \
        f"({stalled} while stalled; warnings: {[w['dropped'] for w in warnings]})"


# -- threading's shutdown hook switches the writer off for live non-daemon threads ---------

@pytest.mark.skipif(sys.version_info[:3] in ((3, 12, 0), (3, 12, 1)), reason=(
    "CPython 3.12.0 and 3.12.1 refuse to start a thread once the main thread returned "
    "(gh-113964, fixed in 3.12.2): the writer thread cannot start there, and the lines "
    "are written in their caller's thread; starting it at configure_logging() instead "
    "would make every later os.fork() warn DeprecationWarning on 3.12+ (a multi-threaded "
    "fork)"))
def test_a_server_thread_after_main_returned_is_not_blocked_by_a_stalled_reader(
        tmp_path: Path) -> None:
    """The main thread starts a (non-daemon) server thread and returns; threading's
    shutdown hook (``_at_threading_shutdown`` -> ``_fd_writer.close``) runs at once and
    sets ``_sync``: from then on, for the rest of the server's life, every line is written
    in the caller's thread, so a stalled reader blocks the server's loop again (the fault
    31bf897 fixed). Here 3000 lines logged by the thread block until the reader reads."""
    p = _Proc(tmp_path, '''
        configure_logging("info", json=True)
        def serve():
            time.sleep(0.5)  # main has returned: threading's shutdown hooks have run
            fill_stderr()
            t = time.monotonic()
            for i in range(3000):
                log.info("served", i=i)
            rep(f"LOGGED {time.monotonic() - t:.2f}")
        threading.Thread(target=serve).start()
        rep("MAIN RETURNS")
    ''')
    try:
        assert p.report(20) == "MAIN RETURNS"
        got = p.report(6)  # the reader stalls meanwhile
    finally:
        p.close()
    assert got is not None and got.startswith("LOGGED"), \
        "a thread logging after the main thread returned blocked on a stalled reader"


def test_a_server_thread_after_main_returned_logs_again_once_the_reader_resumes(
        tmp_path: Path) -> None:
    """As above, but the reader was stalled when the main thread returned: the shutdown
    hook waited its 5 s and set ``_gave_up``, and ``put`` then drops every line for the
    rest of the process, though the server thread keeps serving and the reader reads
    again: lines logged after the recovery are lost with no trace (not even counted in a
    warning)."""
    p = _Proc(tmp_path, '''
        _logging.EXIT_WAIT_S = 1.0  # the exit's wait (5 s by default): its end is what counts
        configure_logging("info", json=True)
        def serve():
            w = _logging._fd_writer
            while w._exit_by is None or time.monotonic() < w._exit_by + 0.2:
                time.sleep(0.02)
            rep("HOOK WAITED")  # the shutdown hook's wait ended, the reader still stalled
            sys.stdin.readline()  # the reader reads again
            for i in range(10):
                log.info("later", i=i)
            flush_logs()
            rep("THREAD DONE")
        threading.Thread(target=serve).start()
        fill_stderr()
        for i in range(100):
            log.info("burst", i=i)
        rep("MAIN RETURNS")
    ''')
    try:
        assert p.report(20) == "MAIN RETURNS"
        assert p.report(20) == "HOOK WAITED"  # past the shutdown hook's wait
        p.read_stderr()
        time.sleep(0.5)
        p.send("go")
        assert p.report(20) == "THREAD DONE"
        code, err = p.finish()
    finally:
        p.close()
    events = Counter(r["event"] for r in _records(err))
    assert code == 0
    assert events["later"] == 10, events


# -- blocking calls -----------------------------------------------------------------------

def test_configure_logging_again_is_not_held_by_a_stalled_reader(tmp_path: Path) -> None:
    """``configure_logging`` "may be called again" (a log level changed at run time, e.g.
    from a SIGHUP handler or an admin call on the loop). It calls ``flush_logs()`` with
    its default wait (EXIT_WAIT_S, 5 s) for the writer thread's queue, so with a stalled
    reader it blocks its caller - the event loop - for 5 s; it only needs the access
    log's buffered lines handed over (``flush_logs(0)``)."""
    p = _Proc(tmp_path, '''
        import asyncio
        fill_stderr()
        configure_logging("info", json=True)
        async def main():
            for i in range(100):
                log.info("line", i=i)
            t = time.monotonic()
            configure_logging("debug", json=True)
            rep(f"TOOK {time.monotonic() - t:.2f}")
        asyncio.run(main())
        os._exit(0)
    ''')
    try:
        got = p.report(20)
    finally:
        p.close()
    assert got is not None and got.startswith("TOOK"), got
    assert float(got.split()[1]) < 1.0, f"configure_logging() held the loop: {got}"


# -- fork while another thread logs ---------------------------------------------------------

def test_a_child_forked_while_a_thread_logs_can_log(tmp_path: Path) -> None:
    """A pre-fork server forks its workers while another thread of it logs. ``_forked``
    re-creates the locks of the access log's writers and the writer thread's, but not
    ``_LineLogger._lock`` (held by the logging thread during ``put``, and by
    ``_write_chunks`` before 31bf897 too): a child forked while it was held deadlocks at
    its first line (most forks here)."""
    p = _Proc(tmp_path, '''
        configure_logging("info", json=True)
        def spam():
            while True:
                log.info("from thread")
        for _ in range(2):
            threading.Thread(target=spam, daemon=True).start()
        hung = 0
        for k in range(6):
            pid = os.fork()
            if pid == 0:
                log.info("child", k=k)
                flush_logs(1)
                os._exit(0)
            deadline = time.monotonic() + 3
            while True:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    hung += 1
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.005)
        rep(f"HUNG {hung}")
        os._exit(0)
    ''')
    p.read_stderr()
    try:
        got = p.report(60)
    finally:
        p.close()
    assert got == "HUNG 0", f"{got} of 6 forked children deadlocked at their first line"
