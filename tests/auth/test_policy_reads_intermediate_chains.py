"""The authorization policy's own read of the peer (a method exempt from the peer check,
or ``check_peers=False``) on a mesh whose workloads present an intermediate CA (SPIRE)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.auth import AuthOptions, AuthzPolicy, Rule
from tests.auth.chains import foreign_ca, key_pem, pem, secret_dir, secret_tls, svid
from tests.auth.conftest import TD, StartServer, call, method


@pytest.mark.parametrize("exempt", [True, False], ids=["exempt-method", "check_peers=False"])
async def test_policy_reads_the_identity_of_a_peer_behind_an_intermediate(
        tmp_path: Path, start_server: StartServer, exempt: bool) -> None:
    """A SPIRE workload (leaf + signing CA under an upstream root) allowed by the policy
    got ``UNAUTHENTICATED`` where the policy read the peer itself: it used the bundle-less
    default verifier, which refuses every chain with an intermediate, instead of the
    server's ``TLSOptions`` verifier that the peer check uses."""
    root = foreign_ca("upstream root", path_length=None)
    inter = foreign_ca("spire signing CA", issuer=root, path_length=0)
    skey, scert = svid(inter, "userd")
    ckey, ccert = svid(inter, "orderd")
    server_tls = secret_tls(secret_dir(tmp_path, "userd", ca=pem(root[1]),
                                       crt=pem(scert, inter[1]), key=key_pem(skey)))
    client_tls = secret_tls(secret_dir(tmp_path, "orderd", ca=pem(root[1]),
                                       crt=pem(ccert, inter[1]), key=key_pem(ckey)))
    orderd = f"spiffe://{TD}/svc/orderd"
    policy = AuthzPolicy(rules={method("Public"): Rule(allow_peers=(orderd,))})
    auth = (AuthOptions(policy=policy, exempt_methods=(method("Public"),)) if exempt
            else AuthOptions(policy=policy, check_peers=False))
    port = await start_server(server_tls.server_credentials(), auth.interceptors(server_tls))
    got = await call(port, "Public", credentials=client_tls.channel_credentials(),
                     options=client_tls.channel_options("userd"))
    assert got == f"{orderd}|-".encode()
