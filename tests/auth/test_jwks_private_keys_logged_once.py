"""Keys published with their private members are warned about once per change, not per fetch.

:class:`~meshkit.auth.JWKSClient` ignores a JWK that carries private members (OpenID
Connect Dynamic Client Registration 1.0 §2: "The JWK Set MUST NOT contain private or
symmetric key values") and logs a warning naming its ``kid``. A client fetches every
``refresh_interval_s`` and on unknown ``kid``\\ s, so a warning per fetch would repeat
the same line forever; the documented behaviour is once, and again when the list of such
keys changes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
import structlog
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from meshkit._aio_http import start_app
from meshkit.auth import JWKSClient

pytestmark = pytest.mark.timeout(30)


def _leaked(kid: str) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = dict(jwt.algorithms.ECAlgorithm.to_jwk(key, as_dict=True))
    jwk.pop("key_ops", None)
    jwk.update(kid=kid, alg="ES256", use="sig")
    return jwk


class _Doc:
    """A JWKS document served on 127.0.0.1 that the test may replace."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] = {"keys": []}


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, _Doc]]:
    doc = _Doc()

    async def handle(_request: web.Request) -> web.Response:
        return web.Response(body=json.dumps(doc.doc).encode(),
                            content_type="application/json")

    app = web.Application()
    app.router.add_get("/jwks", handle)
    runner, port = await start_app(app, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}/jwks", doc
    await runner.cleanup()


async def test_leaked_keys_warned_once_then_on_change(served: tuple[str, _Doc]) -> None:
    url, doc = served
    doc.doc = {"keys": [_leaked("a")]}
    async with JWKSClient(url) as client:
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                await client.refresh()
            doc.doc = {"keys": [_leaked("a"), _leaked("b")]}
            await client.refresh()
            await client.refresh()
    warned = [e["kids"] for e in logs if "private" in str(e.get("event", ""))]
    assert warned == [["a"], ["a", "b"]], logs
    assert client.fetches == 5
