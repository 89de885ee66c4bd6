"""``meshkit call`` to an mTLS endpoint that fails the handshake says why.

An operator ran ``meshkit call whod/Who {}`` with the workload certificates
(``--cert-dir``/``--workload``) against an instance serving an expired certificate (or
another CA's, another workload's, plaintext...) some network distance away and read only
``ERROR: UNAVAILABLE: service 'whod': all 1 endpoints are failing or ejected`` (exit
78): the command quiets grpc core and logging, and its call (and the retries of it)
failed before the channel's TLS probe of the endpoint (``meshkit.auth._probe``, a few
round trips) had answered. Now a call that fails ``UNAVAILABLE`` waits for the probes
under way (bounded: a probe's own 5 s) and prints, on stderr, one line per endpoint that
cannot be connected with the probe's reason; the exit status is the same. Here the
distance is a proxy adding 150 ms to every chunk each way.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from meshkit.auth import init_ca_dir, issue_into_dir
from meshkit.discovery import Instance, LocalRegistry
from tests.cli.test_ops_commands import meshkit_cli, uri

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def expired_server(tmp_path: Path) -> AsyncIterator[tuple[Path, int]]:
    """A plain grpc.aio mTLS server whose certificate (whod's) expired 2 h ago; the CA
    directory (with clientd's certificate) and the port."""
    pki = tmp_path / "pki"
    init_ca_dir(pki, trust_domain="meshkit.test", ttl_days=2)
    issue_into_dir(pki, "clientd", ttl_h=1.0)
    files = issue_into_dir(pki, "whod", ttl_h=1.0, dns=("localhost",), ips=("127.0.0.1",),
                           now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=3))
    server = grpc.aio.server()
    creds = grpc.ssl_server_credentials(
        [(files.key_file.read_bytes(), files.cert_file.read_bytes())],
        root_certificates=files.ca_file.read_bytes(), require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    yield pki, port
    await server.stop(0)


_DELAY_S = 0.15


@contextlib.asynccontextmanager
async def _distant(port: int) -> AsyncIterator[int]:
    """A loopback proxy to ``port`` that delivers every chunk ``_DELAY_S`` late, each way
    in order: a server some round trips away. Yields its port."""
    tasks: set[asyncio.Task[None]] = set()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await asyncio.sleep(_DELAY_S)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        for t in (pump(reader, up_writer), pump(up_reader, writer)):
            task = asyncio.ensure_future(t)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_call_to_an_endpoint_failing_its_handshake_says_why(
        expired_server: tuple[Path, int], registry: LocalRegistry) -> None:
    pki, server_port = expired_server
    async with _distant(server_port) as port:
        await registry.register(Instance(service="whod", instance_id="w1",
                                         host="127.0.0.1", port=port))
        await _check_call(pki, port, registry)


async def _check_call(pki: Path, port: int, registry: LocalRegistry) -> None:
    code, out, err = await meshkit_cli(
        "call", "whod/t.Who/Who", "{}", "--registry", uri(registry), "--cert-dir", str(pki),
        "--workload", "clientd", "--timeout-s", "5")
    assert code == 64 + grpc.StatusCode.UNAVAILABLE.value[0], err
    assert "ERROR: UNAVAILABLE: service 'whod': all 1 endpoints are failing" in err, err
    # the reason, in the status message (the channel waits for its probe, d0b4c446) or,
    # when the message does not say it, on a line of its own
    reason = ("certificate verify failed: certificate has expired; the server's "
              "certificate spiffe://meshkit.test/svc/whod expired at ")
    assert (f"(w1 at 127.0.0.1:{port}: {reason}" in err
            or f"endpoint w1 at 127.0.0.1:{port} cannot be connected: {reason}" in err), err
    assert out == ""
