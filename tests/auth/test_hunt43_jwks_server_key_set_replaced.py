"""``JWKSServer`` serves the key set it holds now, also after ``server.keys`` is replaced.

The served document was cached by ``KeySet.version`` alone. Every key set starts at
version 1, so replacing the server's key set (``server.keys = KeySet.from_directory(d)``
after a key directory was re-read, as ``TokenIssuer.keys`` and ``JWTVerifier.keys`` are
replaced) kept the old key set's document published: verifiers never learned the new
``kid`` and refused every token signed with it, ``UNAUTHENTICATED``.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from meshkit.auth import JWKSServer, KeySet

pytestmark = pytest.mark.timeout(60)


async def _kids(server: JWKSServer) -> list[str]:
    async with asyncio.timeout(10), aiohttp.ClientSession() as s, s.get(server.url) as resp:
        assert resp.status == 200
        return [k["kid"] for k in (await resp.json())["keys"]]


async def test_a_replaced_key_set_is_served() -> None:
    first = KeySet.generate()
    server = JWKSServer(first)
    await server.start("127.0.0.1", 0)
    try:
        assert await _kids(server) == [first.current.kid]
        second = KeySet.generate()
        assert second.version == first.version  # both fresh: the old cache key matched
        server.keys = second
        assert await _kids(server) == [second.current.kid]
        second.rotate()  # and its rotations after that
        assert await _kids(server) == [k.kid for k in second.keys]
    finally:
        await server.stop()


def test_a_replacement_that_is_no_key_set_is_refused() -> None:
    """Assigned later as at construction (every request would answer HTTP 500)."""
    from meshkit.errors import ConfigError

    keys = KeySet.generate()
    server = JWKSServer(keys)
    with pytest.raises(ConfigError, match="KeySet"):
        server.keys = keys.jwks()  # type: ignore[assignment]
    assert server.keys is keys
