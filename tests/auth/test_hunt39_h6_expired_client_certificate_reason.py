"""An mTLS endpoint refusing the client's own expired certificate: the reason says so.

The channel's TLS probe (:mod:`meshkit.auth._probe`) of an endpoint whose server closed
the connection after the handshake said ``it refused this client's certificate
spiffe://.../clientd (is it of a CA the server trusts?)`` also when that certificate had
simply expired (a renewal job that stopped): the hint sent the operator to the CAs. Now
the client's own certificate is read when the server refuses it, and an expired (or not
yet valid) one is named with its date, in ``connect_error``, the call's status and the
warning alike.
"""

from __future__ import annotations

import datetime as dt

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.auth.conftest import TD, Pki, StartServer
from tests.support.wait import until

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("shift_h", [-3.0, 3.0], ids=["expired", "not_valid_yet"])
async def test_a_refused_client_certificate_out_of_its_validity_is_named(
        pki: Pki, registry: LocalRegistry, start_server: StartServer, shift_h: float,
) -> None:
    server = pki.issue("whod")
    client = pki.issue("clientd", now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=shift_h))
    port = await start_server(server.server_credentials())
    await registry.register(Instance(service="whod", instance_id="w1", host="127.0.0.1",
                                     port=port))
    opts = meshkit.DialOptions(tls=client, retry=None, outlier=None)
    async with meshkit.dial("whod", registry=registry, options=opts) as ch:
        with pytest.raises(grpc.aio.AioRpcError):
            await ch.unary_unary("/test.Auth/Whoami")(b"", timeout=5)
        await until(lambda: ch.stats().endpoints[0].connect_error is not None,
                    timeout_s=30, what="the endpoint's connect_error")
        why = ch.stats().endpoints[0].connect_error
    assert why is not None
    assert why.startswith("the server closed the connection after the handshake: it "
                          f"refused this client's certificate spiffe://{TD}/svc/clientd"), why
    if shift_h < 0:
        assert "which expired at " in why, why
    else:
        assert "which is not valid until " in why, why
    assert "is it of a CA the server trusts" not in why, why
