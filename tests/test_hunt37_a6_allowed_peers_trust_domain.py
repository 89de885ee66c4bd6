"""``TLSOptions(allowed_peers=...)`` patterns of another trust domain are refused when built.

The peer check refuses a peer of any other trust domain than the options' before it reads
``allowed_peers`` (``PERMISSION_DENIED``), so a pattern naming another one — a typo such
as ``spiffe://meshkit.tset/svc/userd`` — matches no peer. It was taken, the server
started, and every call of the workload it was meant to admit failed
``PERMISSION_DENIED`` ("peer ... not allowed"), the mistake seen only in refused calls. It
is now a ``ConfigError`` quoting the pattern, as ``AuthzPolicy`` peer patterns of another
trust domain already are; wildcard trust domains that cover the options' own still work.
"""

from __future__ import annotations

import grpc
import pytest

from meshkit.errors import ConfigError
from tests.auth.conftest import TD, Pki, StartServer, call, pki, rpc_error, start_server  # noqa: F401

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("pattern", [
    "spiffe://meshkit.tset/svc/userd",  # a typo of meshkit.test
    "spiffe://other.example/svc/*",
    "spiffe://*.meshkit.test/svc/userd",  # '*' needs a label more than meshkit.test has
])
def test_a_pattern_of_another_trust_domain_is_refused_when_built(
        pki: Pki, pattern: str) -> None:  # noqa: F811 - fixture
    pki.issue("orderd")
    with pytest.raises(ConfigError, match="allowed_peers") as err:
        pki.options("orderd", allowed_peers=(f"spiffe://{TD}/svc/authd", pattern))
    assert repr(pattern) in str(err.value)
    assert TD in str(err.value)


@pytest.mark.parametrize("pattern", [
    f"spiffe://{TD}/svc/userd", "spiffe://*/svc/userd", "spiffe://*.test/svc/user*", "*",
])
async def test_patterns_covering_the_trust_domain_admit_their_peer(
        pki: Pki, start_server: StartServer, pattern: str) -> None:  # noqa: F811
    """On a real mTLS server: userd is admitted by a pattern of the server's own trust
    domain (exact or wildcard), and another workload (paymentd) is not unless ``*``."""
    pki.issue("orderd")
    server = pki.options("orderd", allowed_peers=(pattern,), reload_interval_s=0.05)
    port = await start_server(server.server_credentials(), [server.peer_interceptor()])
    userd, paymentd = pki.issue("userd"), pki.issue("paymentd")
    opts = server.channel_options("orderd")
    got = await call(port, credentials=userd.channel_credentials(), options=opts)
    assert got == f"spiffe://{TD}/svc/userd|-".encode()
    if pattern != "*":
        err = await rpc_error(call(port, credentials=paymentd.channel_credentials(),
                                   options=opts))
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED
