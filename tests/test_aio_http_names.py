"""start_app on a host *name* that resolves to several addresses (``localhost`` is
``127.0.0.1`` and ``::1`` on most Linux distributions' /etc/hosts, and on macOS).

asyncio binds each address a name resolves to with the port asked for; with port 0 each
socket got a free port of its own, and the admin server (``AdminOptions(host="localhost")``,
``MESHKIT_ADMIN_HOST=localhost``) announced only the first: a scraper or browser reaching
``localhost:<port>`` over the other family found nothing there, or another program. Every
address is now bound on one port, as grpc core binds a name's addresses. The name is
resolved by a patched ``socket.getaddrinfo`` (this machine's ``localhost`` is IPv4 only);
the sockets are real.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from meshkit._aio_http import start_app

_NAME = "dual.meshkit.test"


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
def dual_name(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``_NAME`` resolves to ``::1`` and ``127.0.0.1``, in that order (glibc's order for
    ``localhost`` with both in /etc/hosts)."""
    if not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, family: int = 0, type: int = 0,
                    proto: int = 0, flags: int = 0) -> list[Any]:
        if host != _NAME:
            return real(host, port, family, type, proto, flags)
        out = []
        for fam, addr in ((socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1")):
            if family in (0, fam):
                out.extend(real(addr, port, fam, type or socket.SOCK_STREAM, proto,
                                flags | socket.AI_NUMERICHOST))
        return out

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield _NAME


async def _hello(_request: web.Request) -> web.Response:
    return web.Response(text="hi")


async def test_every_address_of_a_name_is_bound_on_the_port_returned(dual_name: str) -> None:
    app = web.Application()
    app.router.add_get("/", _hello)
    runner, port = await start_app(app, dual_name, 0)
    try:
        ports = sorted({int(a[1]) for a in runner.addresses})
        assert ports == [port], (runner.addresses, port)
        async with aiohttp.ClientSession() as session:
            for url in (f"http://127.0.0.1:{port}/", f"http://[::1]:{port}/"):
                async with session.get(url) as resp:
                    assert await resp.text() == "hi", url
    finally:
        await runner.cleanup()
