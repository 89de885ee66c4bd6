"""A token whose required claim is present but empty is refused like one without it.

pyjwt's ``require`` checks presence only (``payload.get(claim) is None``), so a token
signed by the trusted issuer with ``"sub": ""`` or ``"jti": ""`` got past a verifier
that requires ``sub`` and ``jti`` (the default): the handler saw an authenticated caller
with no subject (``current_claims().subject == ""``; a policy allowing ``"*"`` let it
in), and a token id ``""`` that names no token. Such a token is now refused
``UNAUTHENTICATED`` ("token lacks a required claim"); a claim that is not required may
still be empty.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import jwt
import pytest

from meshkit.auth import AuthOptions, AuthzPolicy, JWTVerifier, KeySet, Rule, VerifierOptions
from tests.auth.conftest import AUDIENCE, ISSUER, SERVICE, StartServer, call, rpc_error

pytestmark = pytest.mark.timeout(60)

_POLICY = AuthzPolicy(rules={f"/{SERVICE}/*": Rule(allow_subjects=("*",))})


def _token(keys: KeySet, **over: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"iss": ISSUER, "sub": "user-1", "aud": AUDIENCE, "iat": now,
                              "nbf": now, "exp": now + 300, "jti": "j1", "scope": ""}
    claims.update(over)
    key = keys.current
    return jwt.encode(claims, key.private_key, algorithm=key.algorithm,
                      headers={"kid": key.kid, "typ": "at+jwt"})


async def _serve(start_server: StartServer, keys: KeySet, **verifier: Any) -> int:
    options = VerifierOptions(issuer=ISSUER, audience=AUDIENCE, **verifier)
    chain = AuthOptions(verifier=JWTVerifier(options, keys), check_peers=False,
                        policy=_POLICY).interceptors(None)
    return await start_server(interceptors=chain)


@pytest.mark.parametrize("claim", ["sub", "jti", "iss"])
async def test_a_required_claim_that_is_empty_is_refused(start_server: StartServer,
                                                         claim: str) -> None:
    """The call is refused UNAUTHENTICATED, as for a token without the claim."""
    keys = KeySet.generate()
    port = await _serve(start_server, keys)
    token = _token(keys, **{claim: ""})
    err = await rpc_error(call(port, credentials=None,
                               metadata=[("authorization", f"Bearer {token}")]))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (err.code(), err.details())


async def test_a_custom_required_claim_that_is_empty_is_refused(
        start_server: StartServer) -> None:
    """``required_claims`` naming a claim of one's own refuses it empty, takes it set."""
    keys = KeySet.generate()
    port = await _serve(start_server, keys,
                        required_claims=("iss", "sub", "aud", "exp", "iat", "jti", "tenant"))
    token = _token(keys, tenant="")
    err = await rpc_error(call(port, credentials=None,
                               metadata=[("authorization", f"Bearer {token}")]))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED,
                                           "token lacks a required claim")
    token = _token(keys, tenant="acme")
    got = await call(port, credentials=None, metadata=[("authorization", f"Bearer {token}")])
    assert got == b"-|user-1"


async def test_an_empty_claim_that_is_not_required_is_taken(
        start_server: StartServer) -> None:
    """A verifier that does not require ``jti`` takes ``"jti": ""``; a full token passes."""
    keys = KeySet.generate()
    port = await _serve(start_server, keys,
                        required_claims=("iss", "sub", "aud", "exp", "iat"))
    md = [("authorization", f"Bearer {_token(keys, jti='')}")]
    assert await call(port, credentials=None, metadata=md) == b"-|user-1"
    md = [("authorization", f"Bearer {_token(keys)}")]
    assert await call(port, credentials=None, metadata=md) == b"-|user-1"
