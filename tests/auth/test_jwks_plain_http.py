"""``JWKSClient`` fetches a JWKS over plain HTTP only from a loopback host, unless told.

It fetched any ``http://`` URL, e.g. one a URL provider built from an address the service
registry announces: whoever could answer on that path (a spoofed or poisoned registry
entry, anyone on the network between) served keys of their own, and the verifier then
accepted tokens they signed for any subject and scope. ``http`` is now refused for a host
other than loopback (``127.0.0.0/8``, ``::1``, ``localhost``) unless
``JWKSClientOptions(allow_http=True)``: a fetch fails (``JWKSError``, cached keys kept) and
a plain URL string is a ``ConfigError`` at construction.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver

from meshkit.auth import JWKSClient, JWKSClientOptions, JWKSError, JWKSServer, KeySet
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


class _ToLoopback(AbstractResolver):
    """Resolves every name to 127.0.0.1: a registry-announced host, served on loopback."""

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[dict[str, Any]]:
        return [{"hostname": host, "host": "127.0.0.1", "port": port,
                 "family": socket.AF_INET, "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        pass


@pytest.fixture
async def served() -> AsyncIterator[tuple[KeySet, int, aiohttp.ClientSession]]:
    keys = KeySet.generate()
    server = JWKSServer(keys)
    port = await server.start("127.0.0.1", 0)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=_ToLoopback()))
    try:
        yield keys, port, session
    finally:
        await session.close()
        await server.stop()


async def test_plain_http_to_an_announced_host_is_refused(
    served: tuple[KeySet, int, aiohttp.ClientSession],
) -> None:
    keys, port, session = served
    url = f"http://userd.mesh.test:{port}/.well-known/jwks.json"
    client = JWKSClient(lambda: url, JWKSClientOptions(fetch_timeout_s=5), session=session)
    with pytest.raises(JWKSError, match="https") as err:
        await client.refresh()
    assert "userd.mesh.test" in str(err.value)
    assert await client.get_key(keys.current.kid) is None


async def test_allow_http_fetches_it(served: tuple[KeySet, int, aiohttp.ClientSession]) -> None:
    keys, port, session = served
    url = f"http://userd.mesh.test:{port}/.well-known/jwks.json"
    client = JWKSClient(lambda: url, JWKSClientOptions(allow_http=True), session=session)
    assert await client.get_key(keys.current.kid) is not None


async def test_loopback_http_is_fetched(served: tuple[KeySet, int, aiohttp.ClientSession]) -> None:
    keys, port, _session = served
    for host in ("127.0.0.1", "localhost"):
        client = JWKSClient(f"http://{host}:{port}/.well-known/jwks.json")
        assert await client.get_key(keys.current.kid) is not None


@pytest.mark.parametrize("url", ["http://10.0.0.7:8081/.well-known/jwks.json",
                                 "ftp://127.0.0.1/jwks.json", "jwks.json"])
def test_a_plain_url_string_is_checked_at_construction(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        JWKSClient(url)
    assert "jwks" in str(err.value).lower()


def test_allow_http_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match="allow_http"):
        JWKSClientOptions(allow_http="yes")  # type: ignore[arg-type]
