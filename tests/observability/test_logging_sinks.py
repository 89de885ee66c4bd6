"""A log sink that is gone never changes what the program does: standard error closed at
start (``prog 2>&-``), or a pipe whose reader died (EPIPE). Lines are dropped, as
``print`` and the standard library's logging drop them; the program runs as it would."""

from __future__ import annotations

import asyncio
import io
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from meshkit._log import get_logger
from meshkit.observability import configure_logging, flush_logs
from meshkit.observability._logging import _AccessLog, write_access
from tests.support.launch import launched

pytestmark = pytest.mark.timeout(120)

_ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    """This environment without ``MESHKIT_*``/``OTEL_*``/``PYTHON*``, the checkout on
    ``PYTHONPATH``, and ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MESHKIT_", "OTEL_", "PYTHON"))}
    env["PYTHONPATH"] = str(_ROOT)
    env.update(extra)
    return env


class _BrokenPipe(io.TextIOBase):
    """A text stream whose reader is gone: every write and flush raises EPIPE."""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.fixture
def restored_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_AccessLog, "logger", _AccessLog.logger)
    monkeypatch.setattr(_AccessLog, "built", _AccessLog.built)
    yield
    structlog.reset_defaults()


@pytest.mark.parametrize("json", [True, False])
def test_a_broken_stderr_never_raises_to_whoever_logged(
        monkeypatch: pytest.MonkeyPatch, restored_logging: None, json: bool) -> None:
    """A program logs through ``configure_logging()`` and its stderr's reader is gone
    (EPIPE). Before: ``structlog.PrintLogger`` raised ``BrokenPipeError`` to the code that
    logged (meshkit's own ``serve()``, a drain). Now the line is dropped; the access log
    (already so) too."""
    monkeypatch.setattr(sys, "stderr", _BrokenPipe())
    configure_logging("info", json=json, access_log_flush_interval_s=0)
    get_logger("meshkit.sinks").warning("a line nobody reads", n=1)
    structlog.get_logger("app").error("the application's own line")
    write_access(False, lambda n: {"n": n}, (1,))
    flush_logs()


def test_a_closed_stderr_stream_never_raises_to_whoever_logged(
        monkeypatch: pytest.MonkeyPatch, restored_logging: None) -> None:
    """``sys.stderr`` closed (``sys.stderr.close()``): configure_logging() read
    ``isatty()`` of it (ValueError); now it takes it for no terminal, and lines to it are
    dropped."""
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stderr", closed)
    configure_logging("info", access_log_flush_interval_s=0)
    get_logger("meshkit.sinks").warning("a line nobody reads")
    write_access(True, lambda n: {"n": n}, (1,))
    flush_logs()


# configure_logging(), a meshkit warning line and an access line, then the program's own
# output; a traceback goes to REPORT_FD (stderr is closed)
_LOGS_THEN_OUTPUT = r'''
import os, sys, traceback
try:
    from meshkit.observability import configure_logging, flush_logs
    from meshkit.observability._logging import write_access
    from meshkit._log import get_logger
    kw = {} if os.environ["JSON"] == "default" else {"json": os.environ["JSON"] == "1"}
    configure_logging(**kw)
    get_logger("meshkit.sinks").warning("a warning line")
    write_access(False, lambda n: {"n": n}, (1,))
    flush_logs()
except BaseException:
    os.write(int(os.environ["REPORT_FD"]), traceback.format_exc().encode())
    raise
print("RESULT")
'''


@pytest.mark.parametrize("json_arg", ["default", "1", "0"])
def test_configure_logging_with_stderr_closed_neither_crashes_nor_logs_on_stdout(
        tmp_path: Path, json_arg: str) -> None:
    """A program using meshkit starts with standard error closed (``prog 2>&-``, a daemon
    without a log sink: ``sys.stderr`` is ``None``). Before: ``configure_logging()`` died
    (``AttributeError: 'NoneType' object has no attribute 'isatty'``), and with
    ``json=True`` meshkit's lines went to **stdout** (``PrintLoggerFactory(None)`` falls
    back to it), mixed into the program's output. Now the lines are dropped, as
    ``print`` and the standard library's logging drop them: the program runs, its stdout
    carries its own output only."""
    script = tmp_path / "prog.py"
    script.write_text(_LOGS_THEN_OUTPUT)
    rep_r, rep_w = os.pipe()
    try:
        proc = subprocess.Popen(
            launched(sys.executable, str(script), close_stderr=True),
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, pass_fds=(rep_w,),
            env=_env(JSON=json_arg, REPORT_FD=str(rep_w)))
        os.close(rep_w)
        rep_w = -1
        out, _ = proc.communicate(timeout=60)
        with os.fdopen(rep_r, "rb") as rep:
            rep_r = -1
            report = rep.read().decode(errors="replace")
    finally:
        for fd in (rep_r, rep_w):
            if fd >= 0:
                os.close(fd)
    assert proc.returncode == 0, report[-800:]
    assert out.decode() == "RESULT\n"


# A server as an application writes one: configure_logging(), then serve() until a
# signal. It reports on REPORT_FD: STARTED once serving, DRAINED once serve() returned,
# EXC and the traceback on an exception.
_SERVER = r'''
import asyncio, os, traceback
import meshkit
from meshkit.observability import configure_logging

def rep(s):
    os.write(int(os.environ["REPORT_FD"]), (s + "\n").encode())

async def main():
    configure_logging()
    await meshkit.serve(
        "sinks", [], registry=os.environ["REG"],
        options=meshkit.ServeOptions(host="127.0.0.1", port=0, insecure=True,
                                     instance_id="sinks-1", grace_s=1.0,
                                     drain_delay_s=0.0),
        on_started=lambda server: rep("STARTED"))
    rep("DRAINED")

try:
    asyncio.run(main())
except BaseException:
    rep("EXC " + traceback.format_exc().replace("\n", " | "))
    raise
'''


def _reports(fd: int, until_line: str, timeout_s: float) -> list[str]:
    """The lines read from ``fd`` until one starts with ``until_line``, an ``EXC`` one,
    end of file or ``timeout_s``."""
    buf, end = b"", time.monotonic() + timeout_s
    while time.monotonic() < end:
        lines = buf.decode(errors="replace").splitlines()
        if any(ln.startswith((until_line, "EXC")) for ln in lines):
            return lines
        if select.select([fd], [], [], 0.2)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
    return buf.decode(errors="replace").splitlines()


def _listed(uri: str, service: str) -> set[str]:
    """The instance ids the registry lists for ``service`` now."""
    from meshkit.discovery import registry_from_uri

    async def read() -> set[str]:
        reg = registry_from_uri(uri)
        try:
            async with asyncio.timeout(10):
                async for instances in reg.watch(service):
                    return {i.instance_id for i in instances}
        finally:
            await reg.close()
        return set()

    return asyncio.run(read())


@pytest.mark.parametrize("reader_gone", ["before_start", "while_serving"])
def test_a_server_whose_log_reader_is_gone_still_starts_and_drains(
        tmp_path: Path, reader_gone: str) -> None:
    """A server's stderr is piped to a log shipper (``server 2>&1 | shipper``) and the
    shipper dies: every write to stderr fails with EPIPE. Before: meshkit's own lines
    (``structlog.PrintLogger``) raised ``BrokenPipeError`` to whoever logged - gone before
    the start, ``serve()`` failed at its "serving plaintext" line; gone while serving,
    SIGTERM's drain died at its "draining" line (exit 1, still registered until its TTL).
    Now the lines are dropped: the server starts, drains and deregisters on SIGTERM,
    ``serve()`` returns, status 0."""
    script = tmp_path / "server.py"
    script.write_text(_SERVER)
    # a long TTL: an instance left registered stays listed for the whole test
    uri = f"local://{tmp_path / 'reg'}?ttl_s=60&poll_interval_s=0.1"
    rep_r, rep_w = os.pipe()
    log_r, log_w = os.pipe()
    if reader_gone == "before_start":
        os.close(log_r)
        log_r = -1
    proc = None
    try:
        proc = subprocess.Popen(
            [sys.executable, str(script)], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=log_w, pass_fds=(rep_w,),
            env=_env(REG=uri, REPORT_FD=str(rep_w)))
        os.close(rep_w)
        rep_w = -1
        os.close(log_w)
        log_w = -1
        started = _reports(rep_r, "STARTED", 30)
        assert any(ln.startswith("STARTED") for ln in started), started
        if log_r >= 0:
            os.close(log_r)
            log_r = -1
        proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = proc.wait(30)
        except subprocess.TimeoutExpired:
            code = None
        reports = started + _reports(rep_r, "DRAINED", 5)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for fd in (rep_r, rep_w, log_r, log_w):
            if fd >= 0:
                os.close(fd)
    assert any(ln.startswith("DRAINED") for ln in reports), reports
    assert code == 0
    assert _listed(uri, "sinks") == set()


_OWN_STDERR_SCRIPT = """
import sys, structlog
from meshkit.observability import configure_logging
sys.stderr = open(sys.argv[1], "w", encoding=sys.argv[2], newline=sys.argv[3] or None)
configure_logging("info", json=True)
log = structlog.get_logger("app")
log.info("one")
log.info("two")
"""


@pytest.mark.parametrize(("encoding", "newline"), [("utf-8-sig", ""), ("utf-16", ""),
                                                   ("utf-8", "\\r\\n")])
def test_log_lines_reach_an_application_s_own_stderr_as_it_writes_them(
        tmp_path: Path, encoding: str, newline: str) -> None:
    """An application sends standard error to a file it opened (``sys.stderr =
    open(path, "w", encoding="utf-8-sig")``, a BOM for a Windows-side reader; or with
    ``newline="\\r\\n"``) and calls ``configure_logging(json=True)``. meshkit wrote each
    line to a plain file's descriptor itself (4c117a6), encoded chunk by chunk: a BOM
    before every line (``json.loads`` refuses lines 2 on) and no newline translation.
    Past the stream's buffers it now writes only the interpreter's own standard error in
    a BOM-free encoding; this file gets the bytes the stream itself writes."""
    out = tmp_path / "app.log"
    nl = newline.encode().decode("unicode_escape")
    subprocess.run([sys.executable, "-c", _OWN_STDERR_SCRIPT, str(out), encoding, nl],
                   check=True, timeout=60, cwd=_ROOT, capture_output=True)
    data = out.read_bytes()
    text = data.decode("utf-8-sig" if encoding == "utf-8-sig" else encoding)
    lines = text.split(nl or "\n")
    assert lines[-1] == "" and len(lines) == 3, repr(text)
    for line in lines[:2]:
        json.loads(line)


def test_a_non_blocking_stderr_is_written_through_its_stream() -> None:
    """A parent that set O_NONBLOCK on the shared stderr: a line written past the
    stream's buffers with ``os.write`` could go out in part and the rest be dropped on
    EAGAIN (glued to the next line); such a descriptor is left to the stream, whose buffer
    keeps the rest. The interpreter's own blocking stderr still takes the direct path."""
    script = ("import os, sys\n"
              "from meshkit.observability._logging import _file_fd\n"
              "direct = _file_fd(sys.__stderr__)\n"
              "os.set_blocking(2, False)\n"
              "print(direct, _file_fd(sys.__stderr__))\n")
    r, w = os.pipe()
    try:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        proc = subprocess.run([sys.executable, "-c", script], stderr=w, env=env,
                              stdout=subprocess.PIPE, check=True, timeout=60, cwd=_ROOT)
    finally:
        os.close(r)
        os.close(w)
    assert proc.stdout.split() == [b"2", b"None"], proc.stdout


# An echo server as an application writes one, its standard error a pipe the test reads
# only when it says so: configure_logging() (JSON, the access log on), serve() until a
# signal; it reports PORT n once serving and DRAINED once serve() returned.
_STALLED_SERVER = r'''
import asyncio, os, traceback
import meshkit
from meshkit.observability import _logging, configure_logging
from tests.support.echo import add_echo

# a small queue bound (4 MiB by default), so a few thousand calls are past it
_logging.MAX_PENDING_LOG_CHARS = 32768
# exit waits 1 s (5 by default) for a reader that stalled: a bound, whatever its value
_logging.EXIT_WAIT_S = 1.0

def rep(s):
    os.write(int(os.environ["REPORT_FD"]), (s + "\n").encode())

async def main():
    configure_logging("info", json=True)
    await meshkit.serve(
        "stalled", [add_echo("stalled-1")], registry=os.environ["REG"],
        options=meshkit.ServeOptions(host="127.0.0.1", port=0, insecure=True,
                                     instance_id="stalled-1", grace_s=1.0,
                                     drain_delay_s=0.0),
        on_started=lambda server: rep(f"PORT {server.port}"))
    rep("DRAINED")

try:
    asyncio.run(main())
except BaseException:
    rep("EXC " + traceback.format_exc().replace("\n", " | "))
    raise
'''


async def _echo_calls(port: int, calls: int, timeout_s: float) -> list[str]:
    """Make ``calls`` unary calls (8 callers in turn) to the echo server on ``port``; the
    codes of those that failed (a caller stops at its first failure)."""
    import grpc

    from tests.support.echo import method

    failed: list[str] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        unary = channel.unary_unary(method("Unary"))

        async def caller(n: int) -> None:
            for _ in range(n):
                try:
                    await unary(b"x" * 64, timeout=timeout_s)
                except grpc.aio.AioRpcError as exc:
                    failed.append(exc.code().name)
                    return

        await asyncio.gather(*(caller(calls // 8) for _ in range(8)))
    return failed


def _drain_pipe(fd: int, into: list[bytes], stop: threading.Event) -> None:
    """Read ``fd`` into ``into`` until end of file or ``stop`` is set (a thread)."""
    while not stop.is_set():
        if select.select([fd], [], [], 0.1)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            into.append(chunk)


@pytest.mark.parametrize("then", ["reader_resumes", "stop_while_stalled"])
def test_a_stalled_log_reader_neither_stops_the_server_nor_holds_its_exit(
        tmp_path: Path, then: str) -> None:
    """A server's standard error is a pipe whose reader stalls (a log shipper or
    container runtime that stops reading: Docker's default "blocking" log mode, a full
    disk behind journald). Before: the access log's batch write blocked the event loop
    once the pipe's 64 KiB were full, so every later call timed out, and SIGTERM's drain
    never ended (its last flush blocked too). Now lines are written by a writer thread:
    while it is blocked, lines past its bound are dropped and counted, calls are served,
    the count is logged once the reader reads again, and exit waits a bounded time for a
    reader that never does."""
    script = tmp_path / "server.py"
    script.write_text(_STALLED_SERVER)
    uri = f"local://{tmp_path / 'reg'}?ttl_s=60&poll_interval_s=0.1"
    rep_r, rep_w = os.pipe()
    log_r, log_w = os.pipe()
    proc = None
    read: list[bytes] = []
    stop = threading.Event()
    reader = threading.Thread(target=_drain_pipe, args=(log_r, read, stop), daemon=True)
    try:
        proc = subprocess.Popen(
            [sys.executable, str(script)], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=log_w, pass_fds=(rep_w,), cwd=_ROOT,
            env=_env(REG=uri, REPORT_FD=str(rep_w)))
        os.close(rep_w)
        rep_w = -1
        os.close(log_w)
        log_w = -1
        started = _reports(rep_r, "PORT", 30)
        port = int(next(ln for ln in started if ln.startswith("PORT")).split()[1])
        # ~300 bytes per access line: 1,200 calls write about 360 kB, over five times the
        # pipe's buffer (64 KiB), over three times it and the queue's bound (32 KiB)
        failed = asyncio.run(_echo_calls(port, 1200, timeout_s=5.0))
        assert failed == [], f"{len(failed)} calls failed ({sorted(set(failed))}) while " \
                             f"the log reader stalled"
        if then == "reader_resumes":
            reader.start()
            assert asyncio.run(_echo_calls(port, 8, timeout_s=5.0)) == []
            deadline = time.monotonic() + 10
            dropped: list[dict[str, Any]] = []
            while time.monotonic() < deadline and not dropped:
                time.sleep(0.2)
                lines = b"".join(read).decode(errors="replace").splitlines()
                dropped = [json.loads(ln) for ln in lines
                           if '"log lines dropped"' in ln]
            assert dropped and dropped[0]["dropped"] > 0 and dropped[0]["level"] == "warning", \
                lines[-5:]
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = proc.wait(30)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - t0
        reports = started + _reports(rep_r, "DRAINED", 5)
    finally:
        stop.set()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for fd in (rep_r, rep_w, log_w):
            if fd >= 0:
                os.close(fd)
        if reader.is_alive():
            reader.join(5)
        os.close(log_r)
    assert code == 0 and any(ln.startswith("DRAINED") for ln in reports), (code, reports)
    assert took < 20, f"exit took {took:.1f} s"
