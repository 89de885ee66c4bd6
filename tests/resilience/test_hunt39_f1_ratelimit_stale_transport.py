"""A Redis connection's closed transport no longer cuts the one that replaced it.

coredis drops a connection on an error reply (until meshkit kept it on ``NOSCRIPT``,
the first hit on a Redis just started or restarted: what the CI run hit, and then on
any other but those saying the server cannot count, such as ``READONLY``: q4), or when
it stays silent after a timed-out hit (q4), and reconnects
it at the next command, the same ``Connection`` object being the protocol of the old
transport and the new one. Over TLS the old transport ends only once the server has
answered its ``close_notify``: when that end came after the new transport was up (a
loaded host: a clean-clone CI run of ``test_hunt37_a12_ratelimit_rediss_hostname``),
the old transport's ``eof_received``/``connection_lost`` disconnected the new one,
failing the hit in flight on it ("connection lost", an ``AssertionError`` mid-connect,
or the next transport's "application data after close notify"): storage failures,
``UNAVAILABLE`` under ``on_storage_error="deny"``, the breaker opened. meshkit's Redis
connections now take the callbacks of their current transport only.

Here Redis made a replica answers a hit ``READONLY`` (the connection dropped), and a proxy
holds back the server's end of that first TLS connection (its answer to the client's
``close_notify``) until a hit is in flight on the second, as the loaded host's
scheduling did.
"""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter
from tests.resilience.test_hunt37_a12_ratelimit_rediss_hostname import _tls_redis, _write_pki
from tests.support.scripted_proxy import ScriptedProxy
from tests.support.skips import asyncio_loop_only

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS Redis whose certificate names 127.0.0.1; its port and CA."""
    _write_pki(tmp_path, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    for port in _tls_redis(tmp_path):
        yield port, tmp_path / "ca.pem"


def _redis_cli(port: int, ca: Path, *args: str) -> None:
    subprocess.run(["redis-cli", "-p", str(port), "--tls", "--cacert", str(ca),
                    "--sni", "localhost", *args], capture_output=True, check=True)


class _SlowFirstClose(ScriptedProxy):
    """A TCP proxy to ``upstream``. After :meth:`hold_first`, the server's next bytes on
    the first connection (the answer the client was waiting for) pass, and what it
    sends after them (its end of that TLS session) is held back; after :meth:`arm`, the
    next client bytes on the second connection release it, and the server's answer to
    them is forwarded only once the first's end has been delivered and the loop has run
    on (0.2 s)."""

    def __init__(self, upstream: int) -> None:
        super().__init__(upstream)
        self.accepted = 0
        self._holding = False
        self._passed = False
        self._armed = False
        self._release = asyncio.Event()
        self._first_ended = asyncio.Event()

    def hold_first(self) -> None:
        self._holding = True

    def arm(self) -> None:
        self._armed = True

    async def _handle(self, creader: asyncio.StreamReader,
                      cwriter: asyncio.StreamWriter) -> None:
        index = self.accepted
        self.accepted += 1
        sreader, swriter = await asyncio.open_connection("127.0.0.1", self._upstream)
        self._writers += [cwriter, swriter]
        for pump in (self._to_server(index, creader, swriter),
                     self._to_client(index, sreader, cwriter)):
            task = asyncio.ensure_future(pump)
            self._tasks.add(task)

    async def _to_server(self, index: int, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if index == 1 and self._armed:
                self._release.set()
            writer.write(data)
            await writer.drain()
        writer.close()

    async def _to_client(self, index: int, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        held = False
        while True:
            data = await reader.read(65536)
            if index == 0 and self._holding:
                if self._passed or not data:
                    held = True
                    await self._release.wait()  # the first connection's end, held back
                self._passed = True
            if index == 1 and self._release.is_set():
                await self._first_ended.wait()  # the hit's answer after that end
            if not data:
                break
            writer.write(data)
            await writer.drain()
        writer.close()
        if held:
            await asyncio.sleep(0.2)  # the client's loop reads that end meanwhile
            self._first_ended.set()


@asyncio_loop_only("a second loop's rediss:// connection hangs after an earlier loop's "
                   "was closed (test_hunt37_a12_ratelimit_rediss_hostname)")
async def test_a_reconnected_tls_connection_survives_the_old_ones_late_end(
        tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis
    async with _SlowFirstClose(port) as proxy:
        limiter = StorageLimiter(RateLimitOptions(
            default_rule="1/minute", on_storage_error="deny", storage_timeout_s=5.0,
            storage_uri=f"async+rediss://127.0.0.1:{proxy.port}?ssl_ca_certs={ca}"))
        try:
            assert await limiter.check("/a.B/C", "first") is None
            # an error reply (Redis demoted to a replica: READONLY) drops the connection;
            # the next hit reconnects, on a second TLS connection (the first's end held
            # back)
            _redis_cli(port, ca, "replicaof", "127.0.0.1", "1")  # no master there
            proxy.hold_first()  # its answer passes, its end (after the drop) is held
            readonly = await limiter.check("/a.B/C", "readonly")
            assert readonly is not None and readonly.code.name == "UNAVAILABLE", readonly
            _redis_cli(port, ca, "replicaof", "no", "one")
            assert await limiter.check("/a.B/C", "third") is None
            assert proxy.accepted == 2, proxy.accepted
            proxy.arm()  # the next hit in flight on the second connection: end the first
            got = await limiter.check("/a.B/C", "second")
            assert got is None, (got, limiter.storage_errors)
            refused = await limiter.check("/a.B/C", "second")
            assert refused is not None and refused.code.name == "RESOURCE_EXHAUSTED", refused
            assert limiter.storage_errors == 1  # the READONLY
        finally:
            await limiter.aclose()
