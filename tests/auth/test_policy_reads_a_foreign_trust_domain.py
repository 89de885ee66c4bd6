"""The authorization policy's own read of the peer (a method exempt from the peer check,
or ``check_peers=False``) on a server whose CA bundle holds another trust domain too."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from meshkit.auth import AuthOptions, AuthzPolicy, Rule
from tests.auth.chains import foreign_ca, key_pem, pem, secret_dir, secret_tls, svid
from tests.auth.conftest import TD, StartServer, call, method, rpc_error

OTHER_TD = "partner.example"


@pytest.mark.parametrize("auth", ["exempt-method", "check_peers=False", "peer-check"])
async def test_policy_refuses_a_peer_of_a_foreign_trust_domain(
        tmp_path: Path, start_server: StartServer, auth: str) -> None:
    """A workload of another trust domain the bundle holds was let in by
    ``allow_peers=("*",)`` where the policy read the peer itself, while the peer check
    refuses it ``PERMISSION_DENIED``: the policy's own read now refuses it so too."""
    ours, theirs = foreign_ca("mesh root"), foreign_ca("partner root", spiffe_td=OTHER_TD)
    bundle = pem(ours[1], theirs[1])
    skey, scert = svid(ours, "userd")
    ckey, ccert = svid(theirs, "orderd", td=OTHER_TD)
    server_tls = secret_tls(secret_dir(tmp_path, "userd", ca=bundle, crt=pem(scert),
                                       key=key_pem(skey)), trust_domain=TD)
    client_tls = secret_tls(secret_dir(tmp_path, "orderd", ca=bundle, crt=pem(ccert),
                                       key=key_pem(ckey)), trust_domain=OTHER_TD)
    policy = AuthzPolicy(rules={method("Public"): Rule(allow_peers=("*",))})
    options = {"exempt-method": AuthOptions(policy=policy, exempt_methods=(method("Public"),)),
               "check_peers=False": AuthOptions(policy=policy, check_peers=False),
               "peer-check": AuthOptions(policy=policy)}[auth]
    port = await start_server(server_tls.server_credentials(), options.interceptors(server_tls))
    err = await rpc_error(call(port, "Public", credentials=client_tls.channel_credentials(),
                               options=(("grpc.ssl_target_name_override",
                                         f"userd.svc.{TD}"),)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err
    assert err.details() == f"caller is not allowed to call {method('Public')}"
