"""grpc core's (C-core's) own log lines stay off the ``meshkit`` command's stderr unless
the user asks for them (``GRPC_VERBOSITY``, ``GRPC_TRACE``).

grpcio 1.85 leaves absl's default in place when ``GRPC_VERBOSITY`` is unset, so C-core's
INFO lines reach stderr, glog-style (``I1206 10:07:00.139370    6989
chttp2_transport.cc:1403] ...``). One it writes without any tracer: a GOAWAY with an error
code (``Got goaway [2] err=...``), which a server or proxy going away in trouble sends.
The server here is a few lines of raw HTTP/2 on loopback that answers the command's first
call with ``GOAWAY(INTERNAL_ERROR)`` and closes the connection a second later: the
C-core server sends a graceful GOAWAY (code 0, no INFO line) when it stops, so it cannot
stand in for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshkit.discovery import Instance, LocalOptions, LocalRegistry

pytestmark = pytest.mark.timeout(60)

#: A glog-style line of grpc core: severity letter, MMDD, time, thread id, file:line].
CORE_LINE = re.compile(r"^[DIWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w./-]+:\d+\] ", re.M)

_HTTP2_PREFACE_LEN = 24
_SETTINGS, _HEADERS, _GOAWAY = 4, 1, 7
_ACK = 1
_INTERNAL_ERROR = 2


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame (RFC 9113 section 4.1)."""
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + \
        stream.to_bytes(4, "big") + payload


async def _goaway_on_first_call(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
    """Speak HTTP/2 far enough for a client to start a call, then answer that call's
    HEADERS with ``GOAWAY(INTERNAL_ERROR)`` and close."""
    try:
        await reader.readexactly(_HTTP2_PREFACE_LEN)
        writer.write(_frame(_SETTINGS, 0, 0))
        while True:
            head = await reader.readexactly(9)
            kind, flags = head[3], head[4]
            stream = int.from_bytes(head[5:9], "big") & 0x7FFF_FFFF
            await reader.readexactly(int.from_bytes(head[:3], "big"))
            if kind == _SETTINGS and not flags & _ACK:
                writer.write(_frame(_SETTINGS, _ACK, 0))
            if kind == _HEADERS:
                writer.write(_frame(_GOAWAY, 0, 0, struct.pack(">II", stream, _INTERNAL_ERROR)
                                    + b"server stopping"))
                await writer.drain()
                # closing at once could make the client's next write (the request's DATA)
                # fail with a broken pipe before it read the GOAWAY (seen once in 4 runs):
                # the connection stays open 1 s first (the client may retry meanwhile)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_until_eof(reader), 1.0)
                return
    except (asyncio.IncompleteReadError, ConnectionError):
        return
    finally:
        writer.close()


async def _until_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


@pytest.fixture
async def goaway_registry(tmp_path: Path) -> AsyncIterator[str]:
    """The URI of a local registry whose service ``stopping`` is one instance of the
    GOAWAY server above."""
    server = await asyncio.start_server(_goaway_on_first_call, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=30.0, poll_interval_s=0.05))
    try:
        await reg.register(Instance(service="stopping", instance_id="s1", host="127.0.0.1",
                                    port=port))
        yield f"local://{tmp_path / 'reg'}"
    finally:
        await reg.close()
        server.close()
        await server.wait_closed()


async def _call(registry: str, **grpc_env: str) -> tuple[int, str, str]:
    """``meshkit call stopping/Anything {}`` with the caller's ``GRPC_VERBOSITY`` and
    ``GRPC_TRACE`` replaced by ``grpc_env`` and no ``MESHKIT_*``; (status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MESHKIT_") and k not in ("GRPC_VERBOSITY", "GRPC_TRACE")}
    env.update(grpc_env)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshkit.cli", "call", "stopping/Anything", "{}",
        "--registry", registry, "--insecure", "--timeout-s", "8", env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_call_to_a_server_going_away_shows_no_grpc_core_lines(
        goaway_registry: str) -> None:
    """By default the failed call is the command's own line on stderr and status 78
    (64 + UNAVAILABLE), without C-core's INFO line about the GOAWAY."""
    code, out, err = await _call(goaway_registry)
    assert (code, out) == (64 + 14, ""), err
    assert CORE_LINE.findall(err) == [], err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: UNAVAILABLE: "), err


async def test_users_grpc_verbosity_still_shows_grpc_core_lines(goaway_registry: str) -> None:
    """``GRPC_VERBOSITY=INFO`` from the user still brings C-core's INFO lines, the GOAWAY's
    among them, before the command's own line."""
    code, out, err = await _call(goaway_registry, GRPC_VERBOSITY="INFO")
    assert (code, out) == (64 + 14, ""), err
    assert re.search(r"^I\d{4} .*\] .*Got goaway \[2\]", err, re.M), err
    assert err.splitlines()[-1].startswith("ERROR: UNAVAILABLE: "), err


async def test_users_grpc_trace_still_shows_its_lines(goaway_registry: str) -> None:
    """``GRPC_TRACE=http`` alone (no ``GRPC_VERBOSITY``) still prints the tracer's lines:
    the command does not quiet C-core under a user's tracer."""
    code, out, err = await _call(goaway_registry, GRPC_TRACE="http")
    assert (code, out) == (64 + 14, ""), err
    assert re.search(r"^I\d{4} .*chttp2_transport\.cc:\d+\] ", err, re.M), err


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_grpc_verbosity_is_unset(monkeypatch: pytest.MonkeyPatch,
                                          value: str) -> None:
    """An empty ``GRPC_VERBOSITY`` is no setting (C-core ignores it): the default applies,
    when grpc is not loaded yet."""
    from meshkit._cli._common import quiet_grpc_core

    monkeypatch.setenv("GRPC_VERBOSITY", value)
    monkeypatch.delenv("GRPC_TRACE", raising=False)
    monkeypatch.delitem(sys.modules, "grpc")  # this process loaded it; monkeypatch restores
    quiet_grpc_core()
    assert os.environ["GRPC_VERBOSITY"] == "ERROR"


def test_nothing_is_set_once_grpc_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """With grpc loaded (``meshkit.cli.main`` run in a process that uses grpc), C-core
    read its settings already: the environment, which child processes inherit, is left
    as it is."""
    import grpc  # noqa: F401  (loaded)

    from meshkit._cli._common import quiet_grpc_core

    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    monkeypatch.delenv("GRPC_TRACE", raising=False)
    quiet_grpc_core()
    assert "GRPC_VERBOSITY" not in os.environ


# Runs meshkit.cli.main(argv), then prints GRPC_VERBOSITY as the command left it and
# whether grpc loaded.
_PROBE = """
import os, sys
from meshkit.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(repr(os.environ.get("GRPC_VERBOSITY")), "grpc" in sys.modules, file=sys.stderr)
"""


@pytest.mark.parametrize("argv", [
    ("services", "--json"),
    ("prometheus-targets", "--out", "{tmp}/targets.json"),
    ("certs", "init", "--dir", "{tmp}/certs"),
    ("demo", "--help"),
], ids=["services", "prometheus-targets", "certs", "demo"])
async def test_every_command_sets_the_default_before_grpc_loads(
        tmp_path: Path, goaway_registry: str, argv: tuple[str, ...]) -> None:
    """``services``, ``prometheus-targets``, ``certs`` and ``demo`` (and its services, which
    inherit the environment) load grpc too (the registries, ``meshkit.errors``, the
    demo's client): each sets ``GRPC_VERBOSITY=ERROR`` first (set after grpc loaded,
    C-core would not read it, and the helper does not set it then)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MESHKIT_") and k not in ("GRPC_VERBOSITY", "GRPC_TRACE")}
    env["MESHKIT_REGISTRY"] = goaway_registry
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PROBE, *(a.format(tmp=tmp_path) for a in argv), env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert err.decode().splitlines()[-1] == "'ERROR' True", err.decode()
