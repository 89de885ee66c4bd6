"""A JWKS document that publishes private key material (``d``, RSA's CRT members).

OpenID Connect Dynamic Client Registration 1.0 §2 (``jwks_uri``): "The JWK Set MUST NOT
contain private or symmetric key values". A key whose private half is published can be
used by anyone who reads the document to mint tokens: such a key must verify no token.
Before the fix, an EC/OKP private JWK verified tokens as if it were the public key, and
an RSA private JWK (without ``key_ops``) made every RS* token crash the verifier with an
``AttributeError`` (an RSA private key object has no ``verify``), which the server
answered with ``UNKNOWN`` instead of ``UNAUTHENTICATED``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import jwt
import pytest
import structlog
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from meshkit._aio_http import start_app
from meshkit.auth import (
    InvalidTokenError,
    JWKSClient,
    JWKSClientOptions,
    JWTAuthInterceptor,
    JWTAuthOptions,
    JWTVerifier,
    VerifierOptions,
    parse_jwks,
)
from meshkit.auth._jwt import VerificationKey
from tests.auth.conftest import AUDIENCE, ISSUER, StartServer, call, rpc_error

pytestmark = pytest.mark.timeout(60)

ServeDoc = Callable[[dict[str, Any]], Awaitable[str]]


@pytest.fixture
async def serve_doc() -> AsyncIterator[ServeDoc]:
    """Serve a fixed JWKS document on a free 127.0.0.1 port; returns its URL."""
    runners: list[web.AppRunner] = []

    async def start(doc: dict[str, Any]) -> str:
        body = json.dumps(doc).encode()

        async def handle(_request: web.Request) -> web.Response:
            return web.Response(body=body, content_type="application/json")

        app = web.Application()
        app.router.add_get("/jwks", handle)
        runner, port = await start_app(app, "127.0.0.1", 0)
        runners.append(runner)
        return f"http://127.0.0.1:{port}/jwks"

    yield start
    for r in runners:
        await r.cleanup()


def _private_jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    """The JWK of private ``key`` as a careless issuer publishes it: private members
    included, no ``key_ops`` (pyjwt adds ``["sign"]``; many tools do not)."""
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key, as_dict=True)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(key, as_dict=True)
    else:
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(key, as_dict=True)
    jwk.pop("key_ops", None)
    assert "d" in jwk
    jwk.update(kid=kid, alg=alg, use="sig")
    return dict(jwk)


def _token(key: Any, kid: str, alg: str) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "iat": now,
                       "exp": now + 300, "jti": "j1"}, key, algorithm=alg,
                      headers={"kid": kid, "typ": "at+jwt"})


_CASES = [
    ("RS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ("ES256", lambda: ec.generate_private_key(ec.SECP256R1())),
    ("EdDSA", ed25519.Ed25519PrivateKey.generate),
]


@pytest.mark.parametrize(("alg", "make"), _CASES, ids=[c[0] for c in _CASES])
def test_parse_jwks_ignores_keys_with_private_members(alg: str, make: Callable[[], Any]) -> None:
    """A JWK carrying private members is ignored (not fatal: the document's other keys
    stay usable, RFC 7517 §5)."""
    good = ec.generate_private_key(ec.SECP256R1())
    good_jwk = dict(jwt.algorithms.ECAlgorithm.to_jwk(good.public_key(), as_dict=True),
                    kid="good", alg="ES256", use="sig")
    doc = {"keys": [_private_jwk(make(), "leaked", alg), good_jwk]}
    assert set(parse_jwks(doc)) == {"good"}


@pytest.mark.parametrize(("alg", "make"), _CASES, ids=[c[0] for c in _CASES])
async def test_token_signed_with_a_published_private_key_is_unauthenticated(
        alg: str, make: Callable[[], Any], serve_doc: ServeDoc,
        start_server: StartServer) -> None:
    """A token whose kid names a key published with its private half is refused with
    UNAUTHENTICATED on a real server (never UNKNOWN, never accepted); the leaked key is
    logged by kid, its material never."""
    key = make()
    jwk = _private_jwk(key, "leaked", alg)
    url = await serve_doc({"keys": [jwk]})
    client = JWKSClient(url, JWKSClientOptions(fetch_timeout_s=5))
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE,
                                           algorithms=(alg,)), client)
    port = await start_server(interceptors=(JWTAuthInterceptor(verifier, JWTAuthOptions()),))
    try:
        with structlog.testing.capture_logs() as logs:
            err = await rpc_error(call(port, credentials=None, metadata=[
                ("authorization", f"Bearer {_token(key, 'leaked', alg)}")], timeout_s=10))
    finally:
        await client.close()
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED, (err.code(), err.details())
    leaked = [e for e in logs if "private" in str(e.get("event", ""))]
    assert leaked and leaked[0]["log_level"] == "warning", logs
    assert leaked[0]["kids"] == ["leaked"]
    assert jwk["d"] not in repr(logs)


class _PrivateSource:
    """A KeySource that (wrongly) hands out the private key object itself."""

    def __init__(self, key: Any, alg: str) -> None:
        self.key = VerificationKey("k1", alg, key)

    async def get_key(self, kid: str) -> VerificationKey | None:
        return self.key if kid == "k1" else None


@pytest.mark.parametrize(("alg", "make"), _CASES, ids=[c[0] for c in _CASES])
async def test_private_key_object_from_a_key_source_is_refused_not_a_crash(
        alg: str, make: Callable[[], Any]) -> None:
    """Whatever the key source, a private key object verifies no token: InvalidTokenError
    (UNAUTHENTICATED), not pyjwt's AttributeError for RSA."""
    key = make()
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE,
                                           algorithms=(alg,)), _PrivateSource(key, alg))
    with pytest.raises(InvalidTokenError) as err:
        await verifier.verify(_token(key, "k1", alg))
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
