"""A JWKS whose key is replaced under the same ``kid`` (an IdP naming its key ``"main"``).

Tokens signed with the new key name a ``kid`` the client already holds, so no unknown-kid
refresh happens: the old key failed their signature, and every new token was refused
``UNAUTHENTICATED`` until the background refresh (``refresh_interval_s``, 300 s by
default). A signature that the cached key does not verify now asks the client for a
refresh (rate-limited as an unknown ``kid``'s, joined when one is in flight) and verifies
again when it brought another key for the ``kid``: as go-oidc's ``RemoteKeySet`` does.
Forged tokens naming a known ``kid`` fetch no more than unknown kids do.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from meshkit._aio_http import start_app
from meshkit.auth import (
    InvalidTokenError,
    JWKSClient,
    JWKSClientOptions,
    JWTVerifier,
    VerifierOptions,
)

ISS, AUD, KID = "https://idp.test", "ecom", "main"


class Tick:
    """A settable monotonic clock for the client's intervals."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Idp:
    """A JWKS endpoint on 127.0.0.1 publishing one ES256 key as ``kid`` ``"main"``."""

    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    url: str = ""
    hits: int = 0

    def document(self) -> bytes:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=KID, alg="ES256", use="sig")
        return json.dumps({"keys": [jwk]}).encode()

    async def handle(self, _request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(body=self.document(), content_type="application/json")

    def token(self, key: ec.EllipticCurvePrivateKey | None = None, sub: str = "u1") -> str:
        now = int(time.time())
        return jwt.encode(
            {"iss": ISS, "aud": AUD, "sub": sub, "iat": now, "exp": now + 600, "jti": sub},
            key or self.key, algorithm="ES256", headers={"kid": KID, "typ": "at+jwt"})


@pytest.fixture
async def idp() -> AsyncIterator[Idp]:
    server = Idp()
    app = web.Application()
    app.router.add_get("/jwks.json", server.handle)
    runner, port = await start_app(app, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{port}/jwks.json"
    try:
        yield server
    finally:
        await runner.cleanup()


def verifier_of(idp: Idp, tick: Tick) -> tuple[JWTVerifier, JWKSClient]:
    client = JWKSClient(idp.url, JWKSClientOptions(
        refresh_interval_s=300.0, min_refresh_interval_s=10.0, clock=tick))
    return JWTVerifier(VerifierOptions(issuer=ISS, audience=AUD), client), client


async def test_key_replaced_under_its_kid_is_fetched_on_a_failed_signature(idp: Idp) -> None:
    tick = Tick()
    verifier, client = verifier_of(idp, tick)
    assert (await verifier.verify(idp.token(sub="before"))).subject == "before"
    assert client.fetches == 1
    idp.key = ec.generate_private_key(ec.SECP256R1())  # rotated, the kid kept
    tick.now += 20.0  # past min_refresh_interval_s, long before refresh_interval_s
    claims = await verifier.verify(idp.token(sub="after"))
    assert claims.subject == "after"
    assert client.fetches == 2
    # the old key is gone from the document: its tokens are refused now
    old = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(InvalidTokenError) as info:
        await verifier.verify(idp.token(old, sub="forged"))
    assert info.value.details() == "token signature or key not accepted"


async def test_forged_signatures_fetch_no_more_than_the_rate_limit(idp: Idp) -> None:
    tick = Tick()
    verifier, client = verifier_of(idp, tick)
    await verifier.verify(idp.token())
    forger = ec.generate_private_key(ec.SECP256R1())
    tick.now += 20.0
    for i in range(5):  # one refresh for all of them (it brings the same key)
        with pytest.raises(InvalidTokenError) as info:
            await verifier.verify(idp.token(forger, sub=f"forged{i}"))
        assert info.value.details() == "token signature or key not accepted"
    assert client.fetches == 2
    assert idp.hits == 2
    tick.now += 5.0  # within min_refresh_interval_s of that refresh: none more
    with pytest.raises(InvalidTokenError):
        await verifier.verify(idp.token(forger, sub="forged-again"))
    assert client.fetches == 2
    assert (await verifier.verify(idp.token(sub="genuine"))).subject == "genuine"
    assert client.fetches == 2


@dataclass
class TwoKeyIdp(Idp):
    """An IdP overlapping a rotation under one ``kid``: the old and the new key published
    together, both ``"main"``, ES256 (RFC 7517 §4.5 asks for distinct kids: SHOULD)."""

    new: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def document(self) -> bytes:
        keys = []
        for k in (self.key, self.new):
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(k.public_key()))
            jwk.update(kid=KID, alg="ES256", use="sig")
            keys.append(jwk)
        return json.dumps({"keys": keys}).encode()


@pytest.fixture
async def two_key_idp() -> AsyncIterator[TwoKeyIdp]:
    server = TwoKeyIdp()
    app = web.Application()
    app.router.add_get("/jwks.json", server.handle)
    runner, port = await start_app(app, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{port}/jwks.json"
    try:
        yield server
    finally:
        await runner.cleanup()


async def test_every_key_published_under_one_kid_verifies(two_key_idp: TwoKeyIdp) -> None:
    idp = two_key_idp
    tick = Tick()
    verifier, client = verifier_of(idp, tick)
    assert (await verifier.verify(idp.token(idp.key, sub="old"))).subject == "old"
    # the second key of the kid: tried after the first fails, with no fetch
    assert (await verifier.verify(idp.token(idp.new, sub="new"))).subject == "new"
    assert (await verifier.verify(idp.token(idp.new, sub="new"))).subject == "new"  # cached
    assert client.fetches == 1
    forger = ec.generate_private_key(ec.SECP256R1())
    tick.now += 20.0
    for i in range(3):  # both keys tried, one rate-limited refresh for all
        with pytest.raises(InvalidTokenError) as info:
            await verifier.verify(idp.token(forger, sub=f"forged{i}"))
        assert info.value.details() == "token signature or key not accepted"
    assert client.fetches == 2
    assert (await verifier.verify(idp.token(idp.new, sub="new2"))).subject == "new2"
    assert client.fetches == 2
