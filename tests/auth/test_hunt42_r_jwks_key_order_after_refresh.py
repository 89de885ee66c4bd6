"""A refresh that brings several keys under the token's ``kid``, the new one listed first.

An IdP overlapping a rotation under its one ``kid`` ("main") commonly lists the new key
first: ``[new, old]``. A client holding ``[old]`` got a token signed with the new key:
the old key failed its signature, ``get_key_refreshed(kid, alg, old)`` fetched, and then
gave "the key after ``old``" in the new document, of which there is none, so the token
(and every one joining that fetch) was refused ``UNAUTHENTICATED`` although the client
now held the key that signs it. Every key of the pair not yet tried must be tried, in
document order, whatever their order was before the refresh.
"""

from __future__ import annotations

import asyncio
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


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


class Tick:
    """A settable monotonic clock for the client's intervals."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Idp:
    """A JWKS endpoint on 127.0.0.1 publishing ``keys``, every one as ES256 ``"main"``."""

    keys: list[ec.EllipticCurvePrivateKey] = field(default_factory=lambda: [_key()])
    url: str = ""
    hits: int = 0

    async def handle(self, _request: web.Request) -> web.Response:
        self.hits += 1
        out = []
        for k in self.keys:
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(k.public_key()))
            jwk.update(kid=KID, alg="ES256", use="sig")
            out.append(jwk)
        return web.Response(body=json.dumps({"keys": out}).encode(),
                            content_type="application/json")


def token(key: ec.EllipticCurvePrivateKey, sub: str) -> str:
    now = int(time.time())
    return jwt.encode(
        {"iss": ISS, "aud": AUD, "sub": sub, "iat": now, "exp": now + 600, "jti": sub},
        key, algorithm="ES256", headers={"kid": KID, "typ": "at+jwt"})


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


@pytest.mark.parametrize("published", [(1, 0), (1, 2, 0), (2, 0, 1)],
                         ids=["new-old", "new-another-old", "another-old-new"])
async def test_a_key_listed_before_the_one_that_failed_is_tried_after_the_refresh(
        idp: Idp, published: tuple[int, ...]) -> None:
    tick = Tick()
    verifier, client = verifier_of(idp, tick)
    old = idp.keys[0]
    assert (await verifier.verify(token(old, "before"))).subject == "before"
    assert client.fetches == 1
    fresh = [old, _key(), _key()]  # 0: the key held; 1 and 2: new under the same kid
    idp.keys = [fresh[i] for i in published]
    tick.now += 20.0  # past min_refresh_interval_s
    # the token that makes the refresh is verified by what it brought, wherever listed
    for i in (i for i in published if i):
        assert (await verifier.verify(token(fresh[i], f"new{i}"))).subject == f"new{i}"
    assert (await verifier.verify(token(old, "old"))).subject == "old"
    assert client.fetches == 2
    with pytest.raises(InvalidTokenError) as info:
        await verifier.verify(token(_key(), "forged"))
    assert info.value.details() == "token signature or key not accepted"
    assert client.fetches == 2


async def test_tokens_joining_the_refresh_all_verify(idp: Idp) -> None:
    tick = Tick()
    verifier, client = verifier_of(idp, tick)
    old = idp.keys[0]
    await verifier.verify(token(old, "before"))
    new = _key()
    idp.keys = [new, old]
    tick.now += 20.0
    got = await asyncio.gather(*(verifier.verify(token(new, f"c{i}")) for i in range(5)))
    assert [c.subject for c in got] == [f"c{i}" for i in range(5)]
    assert client.fetches == 2
