"""A client certificate renewal does not connect the endpoints a server closed as idle.

The channel rebuilds every endpoint's sub-channel with the renewed credentials
(:meth:`meshkit._pool.EndpointPool.rebuild`); the new sub-channel's state tracker asked
it to connect at once, also for an endpoint left IDLE because its server closed the
unused connection (``ServerLimits.max_connection_idle_s``). So every renewal (with SPIRE,
every half an SVID's life) made an idle client open a TLS connection to every endpoint
of every service it dials, each closed again as idle by its server: what the pool's
"left IDLE until a call needs it" rule is there to prevent. The rebuilt sub-channel of an
endpoint left IDLE now stays IDLE until a call asks, and the next call connects it (with
the renewed certificate) and is served.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from cryptography import x509

import meshkit
from meshkit.discovery import LocalRegistry
from tests.auth.conftest import Pki
from tests.support.wait import until

_IDLE = grpc.ChannelConnectivity.IDLE


def _serial_service() -> tuple[Any, None]:
    async def who(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        pem = context.auth_context()["x509_pem_cert"][0]
        return str(x509.load_pem_x509_certificate(pem).serial_number).encode()

    def add(_s: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "t.Who", {"Who": grpc.unary_unary_rpc_method_handler(who)}),))

    return add, None


async def test_a_renewal_leaves_an_endpoint_closed_as_idle_idle(
        pki: Pki, registry: LocalRegistry) -> None:
    server_tls = pki.issue("whod")
    client_tls = pki.issue("clientd")  # reload_interval_s=0.05
    srv = meshkit.MeshServer("whod", [_serial_service()], registry=registry,
                             options=meshkit.ServeOptions(
                                 tls=server_tls, drain_delay_s=0, grace_s=0.5,
                                 limits=meshkit.ServerLimits(max_connection_idle_s=0.2)))
    await srv.start()
    try:
        opts = meshkit.DialOptions(tls=client_tls, retry=None)
        async with meshkit.dial("whod", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1, timeout_s=5.0)
            key = ch.endpoints()[0].key
            pool = ch._pool
            # no call: the server closes the connection as idle, the endpoint is left IDLE
            await until(lambda: key in pool.left_idle, timeout_s=10, what="left IDLE")
            old = pool.conns[key].channel
            handshakes = srv.stats().tls_handshakes
            pki.issue("clientd", overwrite=True)
            renewed = str(x509.load_pem_x509_certificate(
                client_tls.cert_file.read_bytes()).serial_number).encode()
            await until(lambda: pool.conns[key].channel is not old, timeout_s=5,
                        what="sub-channel rebuilt")
            await asyncio.sleep(0.3)  # a connection asked for would be made by now
            assert srv.stats().tls_handshakes == handshakes, \
                "the renewal connected an endpoint left idle"
            assert pool.conns[key].channel.get_state() is _IDLE
            assert key in pool.left_idle
            # the next call connects it, with the renewed certificate
            assert await ch.unary_unary("/t.Who/Who")(b"", timeout=5) == renewed
    finally:
        await srv.drain()
