"""An ``authorization`` header of another scheme (``Basic``) on a public method."""

from __future__ import annotations

import grpc
import pytest

from meshkit.auth import AuthOptions, JWTAuthOptions, JWTVerifier, KeySet, VerifierOptions
from tests.auth.conftest import AUDIENCE, ISSUER, StartServer, call, method, rpc_error

BASIC = ("authorization", "Basic Y2xpZW50OnNlY3JldA==")  # client:secret


def _chain() -> tuple[object, ...]:
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE),
                           KeySet.generate("ES256"))
    return AuthOptions(verifier=verifier, check_peers=False, jwt=JWTAuthOptions(
        public_methods=(method("Public"),))).interceptors(None)


async def test_a_public_method_takes_a_call_with_basic_credentials(
        start_server: StartServer) -> None:
    """A public method is callable without a token, and ``Basic`` credentials are no
    bearer token (RFC 6750 §3.1: another scheme is a request lacking authentication
    information; Envoy's jwt_authn takes it for a missing token): a token endpoint
    taking ``client_secret_basic`` (RFC 6749 §2.3.1) was refused UNAUTHENTICATED "authorization
    scheme must be Bearer" before its handler ran; now it is served, without claims."""
    port = await start_server(interceptors=_chain())
    assert await call(port, "Public", credentials=None, metadata=[BASIC]) == b"-|-"


@pytest.mark.parametrize(("name", "metadata", "details"), [
    ("Read", [BASIC], "authorization scheme must be Bearer"),
    ("Public", [("authorization", "Bearer not.a.token")], None),
    ("Public", [("authorization", "Bearer a.b.c"), BASIC], "malformed authorization metadata"),
    ("Public", [("authorization", "Bearer")], "malformed authorization metadata"),
], ids=["basic-on-a-private-method", "bad-bearer-on-public", "bearer-and-basic", "bare-bearer"])
async def test_bearer_and_private_methods_are_still_checked(
        start_server: StartServer, name: str, metadata: list[tuple[str, str]],
        details: str | None) -> None:
    port = await start_server(interceptors=_chain())
    err = await rpc_error(call(port, name, credentials=None, metadata=metadata))
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    if details is not None:
        assert err.details() == details
