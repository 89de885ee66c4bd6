"""JWKSServer.start(host, port) refuses an address it cannot mean, ConfigError quoting it
(as AdminOptions does for the admin server's): ``port=-1`` or ``65536`` raised a bare
``OverflowError`` from bind(), ``port="8080"`` (a variable's text) a bare ``TypeError``,
and ``port=True`` bound port 1; ``host="127.1"`` (which resolvers read as 127.0.0.1) was
taken, ``""`` or ``"127.0.0.1:8080"`` failed in the name lookup (``socket.gaierror``),
``None`` with an ``AttributeError``. Nothing is bound then, and a later start() with a
good address works."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from meshkit.auth import JWKSServer, KeySet
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

_PORTS = {"negative": -1, "past-65535": 65536, "a-string": "8080", "true": True,
          "a-float": 1.5, "none": None}
_HOSTS = {"empty": "", "short-ipv4": "127.1", "none": None, "with-space": "local host",
          "with-port": "127.0.0.1:8080"}


@pytest.mark.parametrize("port", sorted(_PORTS))
def test_a_bad_port_is_a_config_error_and_binds_nothing(port: str) -> None:
    async def main() -> None:
        server = JWKSServer(KeySet.generate())
        with pytest.raises(ConfigError) as caught:
            await server.start("127.0.0.1", _PORTS[port])  # type: ignore[arg-type]
        assert "port" in str(caught.value) and repr(_PORTS[port]) in str(caught.value)
        assert server.port == 0
        bound = await server.start("127.0.0.1", 0)  # not "already started"
        try:
            assert bound > 0
        finally:
            await server.stop()

    asyncio.run(main())


@pytest.mark.parametrize("host", sorted(_HOSTS))
def test_a_bad_host_is_a_config_error(host: str) -> None:
    async def main() -> None:
        server = JWKSServer(KeySet.generate())
        with pytest.raises(ConfigError) as caught:
            await server.start(_HOSTS[host], 0)  # type: ignore[arg-type]
        assert "host" in str(caught.value) and repr(_HOSTS[host]) in str(caught.value)

    asyncio.run(main())


def test_a_good_address_still_serves_the_keys() -> None:
    async def main() -> None:
        keys = KeySet.generate()
        server = JWKSServer(keys)
        await server.start("127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as session, session.get(server.url) as resp:
                assert resp.status == 200
                assert [k["kid"] for k in (await resp.json())["keys"]] == \
                    [k["kid"] for k in keys.jwks()["keys"]]
        finally:
            await server.stop()

    asyncio.run(main())
