"""mTLS through dial()/serve(): identities on the wire, and a client certificate renewed
under a live channel."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from cryptography import x509

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.auth.conftest import TD, Pki
from tests.support.wait import until


def peer_serial_service() -> tuple[Any, None]:
    """A service answering the serial number of the caller's client certificate."""

    async def who(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        pem = context.auth_context()["x509_pem_cert"][0]
        if request:
            await asyncio.sleep(float(request))
        return str(x509.load_pem_x509_certificate(pem).serial_number).encode()

    def add(_s: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "t.Who", {"Who": grpc.unary_unary_rpc_method_handler(who)}),))

    return add, None


async def test_renewed_client_certificate_is_used_without_failing_calls(
    pki: Pki, registry: LocalRegistry
) -> None:
    """After the client's certificate file is renewed, new calls present the new certificate
    and a call in flight during the switch still succeeds."""
    server_tls = pki.issue("whod")
    client_tls = pki.issue("clientd")
    srv = meshkit.MeshServer("whod", [peer_serial_service()], registry=registry,
                             options=meshkit.ServeOptions(tls=server_tls, drain_delay_s=0))
    await srv.start()
    try:
        opts = meshkit.DialOptions(tls=client_tls, retry=None)
        async with meshkit.dial("whod", registry=registry, options=opts) as ch:
            who = ch.unary_unary("/t.Who/Who")
            first = await who(b"", timeout=5)
            slow = asyncio.ensure_future(who(b"0.5", timeout=5))
            await asyncio.sleep(0.1)
            key = ch.endpoints()[0].key
            old_channel = ch._pool.conns[key].channel  # the endpoint's sub-channel
            pki.issue("clientd", overwrite=True)
            await until(lambda: ch._pool.conns[key].channel is not old_channel, timeout_s=5,
                        what="sub-channel rebuilt")
            second = await who(b"", timeout=5)
            assert second != first
            assert await slow == first  # finished on the old connection
            assert ch.stats().policies["tls"] is True
    finally:
        await srv.drain()


async def test_plaintext_dial_to_mtls_server_fails_and_tls_options_are_exclusive(
    pki: Pki, registry: LocalRegistry
) -> None:
    """A plaintext channel cannot talk to an mTLS serve(); tls with credentials is refused."""
    srv = meshkit.MeshServer("whod", [peer_serial_service()], registry=registry,
                             options=meshkit.ServeOptions(tls=pki.issue("whod"),
                                                          drain_delay_s=0))
    await srv.start()
    try:
        opts = meshkit.DialOptions(insecure=True, retry=None, outlier=None)
        async with meshkit.dial("whod", registry=registry, options=opts) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ch.unary_unary("/t.Who/Who")(b"", timeout=2)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        await srv.drain()
    with pytest.raises(meshkit.ConfigError, match="not both"):
        meshkit.DialOptions(tls=pki.options("whod"),
                            credentials=grpc.local_channel_credentials())
    with pytest.raises(meshkit.ConfigError, match="contradicts"):
        meshkit.ServeOptions(tls=pki.options("whod"), insecure=True)


async def test_plaintext_must_be_asked_for_and_env_certificates_are_used(
    pki: Pki, registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without tls, credentials or insecure=True, dial() and serve() refuse; with
    MESHKIT_CERT_DIR (and MESHKIT_WORKLOAD for clients) they use those certificates."""
    monkeypatch.delenv("MESHKIT_CERT_DIR", raising=False)
    monkeypatch.delenv("MESHKIT_WORKLOAD", raising=False)
    with pytest.raises(meshkit.ConfigError, match="insecure=True"):
        meshkit.dial("whod", registry=registry)
    with pytest.raises(meshkit.ConfigError, match="insecure=True"):
        meshkit.MeshServer("whod", [peer_serial_service()], registry=registry)
    pki.issue("whod")
    pki.issue("clientd")
    monkeypatch.setenv("MESHKIT_CERT_DIR", str(pki.dir))
    monkeypatch.setenv("MESHKIT_WORKLOAD", "clientd")
    srv = meshkit.MeshServer("whod", [peer_serial_service()], registry=registry,
                             options=meshkit.ServeOptions(drain_delay_s=0))
    await srv.start()
    try:
        async with meshkit.dial("whod", registry=registry) as ch:
            assert ch.stats().policies["tls"] is True
            assert await ch.unary_unary("/t.Who/Who")(b"", timeout=5)
        assert srv.stats().tls is True
    finally:
        await srv.drain()


@pytest.mark.parametrize("name", ["grpc.ssl_target_name_override",
                                  b"grpc.ssl_target_name_override"], ids=["str", "bytes"])
async def test_channel_options_cannot_override_the_dialed_identity_with_tls(
    pki: Pki, registry: LocalRegistry, name: str | bytes,
) -> None:
    """A user dialed ``"whod"`` over mTLS passing ``("grpc.ssl_target_name_override",
    "otherd.svc.meshkit.test")`` in ``channel_options`` (as plain-grpc configurations
    commonly do): an endpoint listed under ``whod`` that was really ``otherd`` answered,
    since meshkit put its own override (the identity check of the dialed service) after
    the user's and grpc keeps the first value of a repeated channel argument. Now the
    override is refused with ``tls`` (ConfigError quoting it; also as a ``bytes`` name, as
    grpc takes them), and meshkit's own arguments come first: the endpoint holding
    otherd's certificate fails the handshake."""
    client_tls = pki.issue("clientd")
    override = ((name, f"otherd.svc.{TD}"),)
    with pytest.raises(meshkit.ConfigError, match="ssl_target_name_override") as info:
        meshkit.DialOptions(tls=client_tls, channel_options=override)
    assert "otherd.svc." in str(info.value)
    # without tls (other credentials, or plaintext) the argument is the caller's to give
    meshkit.DialOptions(credentials=grpc.local_channel_credentials(),
                        channel_options=override)

    srv = meshkit.MeshServer("otherd", [peer_serial_service()], registry=registry,
                             options=meshkit.ServeOptions(tls=pki.issue("otherd"),
                                                          instance_id="o1", drain_delay_s=0))
    inst = await srv.start()
    try:
        # an endpoint listed under "whod" that is in fact otherd (a stale or forged record)
        await registry.register(Instance(service="whod", instance_id="w1", host="127.0.0.1",
                                         port=inst.port))
        opts = meshkit.DialOptions(tls=client_tls, retry=None, outlier=None,
                                   channel_options=(("grpc.primary_user_agent", "t"),))
        async with meshkit.dial("whod", registry=registry, options=opts) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as call:
                await ch.unary_unary("/t.Who/Who")(b"", timeout=5)
            assert call.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        await srv.drain()
