"""Fixtures for the messaging tests: the shared NATS (127.0.0.1:4222, JetStream) with a
fresh stream per test, private nats-server processes for tests that kill or restart the
server, workload certificates, and (from the observability tests) an in-memory tracer
and a private Prometheus registry.

The shared NATS is taken from ``NATS_URL`` (default ``nats://127.0.0.1:4222``). When it
is unreachable its tests are skipped, except under ``CI=true``: then they fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from meshkit.auth import create_ca, issue_workload
from meshkit.messaging import ensure_stream
from tests.conftest import IN_CI
from tests.observability.conftest import Tracing, prom, tracing  # noqa: F401 - fixtures
from tests.support.wait import until

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
_problem: list[str | None] = []


async def _quiet(exc: Exception) -> None:
    """nats-py's error callback: the probe's failure is reported by :func:`nats_problem`
    (nats-py's default logs each connect attempt's traceback)."""


async def nats_problem() -> str | None:
    """Why the shared NATS cannot be used (with JetStream), or None (probed once)."""
    if not _problem:
        try:
            # bounded here: nats-py 2.16 reads max_reconnect_attempts=0 as no limit and
            # kept trying a NATS that was down (every test waited for its timeout)
            nc = await asyncio.wait_for(nats.connect(
                NATS_URL, connect_timeout=3, max_reconnect_attempts=1,
                allow_reconnect=False, error_cb=_quiet), 10)
            try:
                await nc.jetstream().account_info()
            finally:
                await nc.close()
            _problem.append(None)
        except Exception as exc:
            _problem.append(f"NATS with JetStream at {NATS_URL} unusable: {exc!r}")
    return _problem[0]


async def require_nats() -> None:
    """Skip the test if the shared NATS is unusable; under CI=true fail it instead."""
    problem = await nats_problem()
    if problem is not None:
        if IN_CI:
            pytest.fail(problem + " (required when CI=true)")
        pytest.skip(problem)


@dataclass
class Bus:
    """A connection to a NATS server and a stream made for one test."""

    nc: Client
    js: JetStreamContext
    stream: str
    subject: str
    dlq: str
    url: str


async def _connect(url: str, **kw: Any) -> Client:
    return await nats.connect(url, connect_timeout=2, reconnect_time_wait=0.1,
                              max_reconnect_attempts=-1, **kw)


async def _stream(nc: Client, url: str) -> Bus:
    js = nc.jetstream(timeout=3)
    tag = uuid.uuid4().hex[:10]
    stream, subject = f"T{tag}", f"t{tag}.orders"
    dlq = f"t{tag}.dlq"
    await ensure_stream(js, stream, [f"t{tag}.>"], duplicate_window_s=60)
    return Bus(nc, js, stream, subject, dlq, url)


@pytest.fixture
async def bus() -> AsyncIterator[Bus]:
    """The shared NATS with a fresh stream ``T<tag>`` over ``t<tag>.>``, deleted after."""
    await require_nats()
    nc = await _connect(NATS_URL)
    b = await _stream(nc, NATS_URL)
    yield b
    try:
        await b.js.delete_stream(b.stream)
    finally:
        await nc.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """A private ``nats-server -js`` on a spare loopback port, its store in ``store_dir``."""

    def __init__(self, store_dir: Path) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.store_dir = store_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        """Start the process."""
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js",
             "-sd", str(self.store_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def start(self) -> None:
        """Start it and wait until it accepts connections."""
        self.spawn()

        def accepting() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        await until(accepting, timeout_s=10, what="nats-server accepting")

    def kill(self) -> None:
        """SIGKILL it and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
async def private_nats(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A private nats-server with JetStream (for tests that kill or restart the server)."""
    if not Path(NATS_SERVER).exists():  # noqa: ASYNC240 - a stat, once per test
        msg = f"nats-server not found at {NATS_SERVER}"
        if IN_CI:
            pytest.fail(msg + " (required when CI=true)")
        pytest.skip(msg)
    server = NatsServer(tmp_path / "nats")
    await server.start()
    yield server
    server.kill()


@pytest.fixture
async def private_bus(private_nats: NatsServer) -> AsyncIterator[Bus]:
    """A connection and a stream on the private server."""
    nc = await _connect(private_nats.url)
    b = await _stream(nc, private_nats.url)
    yield b
    await asyncio.wait_for(nc.close(), 5)


@dataclass
class Workloads:
    """A mesh CA and workload credentials issued by it, plus a foreign CA's."""

    ca_pem: bytes
    orderd: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
    userd: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
    foreign: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


@pytest.fixture(scope="session")
def workloads() -> Workloads:
    """Certificates for ``orderd`` and ``userd`` from one CA, and ``orderd`` from another."""
    from cryptography.hazmat.primitives import serialization

    ca_key, ca_cert = create_ca(trust_domain="meshkit.test")
    other_key, other_cert = create_ca(trust_domain="meshkit.test")
    return Workloads(
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        orderd=issue_workload(ca_key, ca_cert, "orderd")[::-1],  # type: ignore[arg-type]
        userd=issue_workload(ca_key, ca_cert, "userd")[::-1],  # type: ignore[arg-type]
        foreign=issue_workload(other_key, other_cert, "orderd")[::-1],  # type: ignore[arg-type]
    )
