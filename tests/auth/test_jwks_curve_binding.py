"""An EC JWK whose ``alg`` names another curve's algorithm is ignored, not kept.

RFC 7518 §3.4: ES256 is ECDSA with P-256, ES384 with P-384, ES512 with P-521; RFC 8725
§3.1: a key is used with exactly one algorithm. A P-384 key declaring ``alg: ES256``
verifies nothing (pyjwt refuses the curve at verification, reported as a "malformed
token"), yet it was kept, and took the ``(kid, ES256)`` slot: a good P-256 key sharing
its ``kid`` (RFC 7517 §4.5 allows shared kids) after it in the document was dropped, so
every valid token of the good key was refused. One unusable key must not drop good ones
(RFC 7517 §5).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from meshkit._aio_http import start_app
from meshkit.auth import JWKSClient, JWTVerifier, VerifierOptions, parse_jwks
from tests.auth.conftest import AUDIENCE, ISSUER

pytestmark = pytest.mark.timeout(60)


def _jwk(key: ec.EllipticCurvePrivateKey, kid: str, alg: str) -> dict[str, str]:
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**{k: str(v) for k, v in jwk.items()}, "kid": kid, "alg": alg, "use": "sig"}


@pytest.mark.parametrize(("curve", "alg"), [
    (ec.SECP384R1(), "ES256"), (ec.SECP256R1(), "ES384"), (ec.SECP256R1(), "ES512"),
    (ec.SECP521R1(), "ES384"),
], ids=["P384-as-ES256", "P256-as-ES384", "P256-as-ES512", "P521-as-ES384"])
def test_ec_key_of_another_curve_than_its_alg_is_ignored(
        curve: ec.EllipticCurve, alg: str) -> None:
    """Declared alg and curve disagree: the key is ignored."""
    doc = {"keys": [_jwk(ec.generate_private_key(curve), "k", alg)]}
    assert parse_jwks(doc) == {}


@pytest.mark.parametrize(("curve", "alg"), [
    (ec.SECP256R1(), "ES256"), (ec.SECP384R1(), "ES384"), (ec.SECP521R1(), "ES512"),
])
def test_ec_key_of_its_alg_curve_is_kept(curve: ec.EllipticCurve, alg: str) -> None:
    """The matching pairs stay usable."""
    doc = {"keys": [_jwk(ec.generate_private_key(curve), "k", alg)]}
    assert parse_jwks(doc)["k"].algorithm == alg


@pytest.fixture
async def jwks_url() -> AsyncIterator[tuple[str, ec.EllipticCurvePrivateKey]]:
    """A JWKS on 127.0.0.1 whose kid "k" names a mislabelled P-384 key first, then the
    good P-256 ES256 key; yields its URL and the good private key."""
    good = ec.generate_private_key(ec.SECP256R1())
    doc = {"keys": [_jwk(ec.generate_private_key(ec.SECP384R1()), "k", "ES256"),
                    _jwk(good, "k", "ES256")]}
    body = json.dumps(doc).encode()

    async def handle(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/jwks", handle)
    runner, port = await start_app(app, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}/jwks", good
    await runner.cleanup()


async def test_mislabelled_key_does_not_hide_the_good_key_sharing_its_kid(
        jwks_url: tuple[str, ec.EllipticCurvePrivateKey]) -> None:
    """A token of the good key verifies, though a mislabelled key with its kid comes
    first in the document."""
    url, good = jwks_url
    now = int(time.time())
    token = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "iat": now,
                        "exp": now + 300, "jti": "j"}, good, algorithm="ES256",
                       headers={"kid": "k", "typ": "at+jwt"})
    async with JWKSClient(url) as client:
        verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), client)
        assert (await verifier.verify(token)).subject == "u"
