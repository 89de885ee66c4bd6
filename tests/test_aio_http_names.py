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

import errno
import socket
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from meshkit._aio_http import start_app
from tests.support.skips import asyncio_loop_only

pytestmark = asyncio_loop_only(
    "uvloop resolves names in libuv, not through the patched socket.getaddrinfo")

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


_PARTLY = "partly.meshkit.test"
_NOWHERE = "nowhere.meshkit.test"
#: TEST-NET-1 (RFC 5737): on no interface of this machine, so binding it fails with
#: EADDRNOTAVAIL, as ``::1`` does where a container lists it in /etc/hosts with IPv6 off.
_NOT_HERE = "192.0.2.1"


@pytest.fixture
def partly_bindable(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_PARTLY`` resolves to ``_NOT_HERE`` then ``127.0.0.1``; ``_NOWHERE`` to
    ``_NOT_HERE`` only."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, family: int = 0, type: int = 0,
                    proto: int = 0, flags: int = 0) -> list[Any]:
        names = {_PARTLY: (_NOT_HERE, "127.0.0.1"), _NOWHERE: (_NOT_HERE,)}
        if host not in names:
            return real(host, port, family, type, proto, flags)
        out = []
        for addr in names[host]:
            out.extend(real(addr, port, socket.AF_INET, type or socket.SOCK_STREAM,
                            proto, flags | socket.AI_NUMERICHOST))
        return out

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


async def test_an_address_of_a_name_not_on_this_machine_is_skipped(
        partly_bindable: None) -> None:
    """A name one of whose addresses is on no interface here (EADDRNOTAVAIL) is served on
    the others, as grpc core binds a name: the admin server on ``localhost`` starts in a
    container whose /etc/hosts lists ``::1`` with IPv6 disabled."""
    app = web.Application()
    app.router.add_get("/", _hello)
    runner, port = await start_app(app, _PARTLY, 0)
    try:
        assert [a[0] for a in runner.addresses] == ["127.0.0.1"], runner.addresses
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{port}/") as resp:
            assert await resp.text() == "hi"
    finally:
        await runner.cleanup()


async def test_a_name_none_of_whose_addresses_binds_fails(partly_bindable: None) -> None:
    """A name with no address on this machine still fails to start, with the bind's error."""
    app = web.Application()
    app.router.add_get("/", _hello)
    with pytest.raises(OSError) as err:
        await start_app(app, _NOWHERE, 0)
    assert err.value.errno == errno.EADDRNOTAVAIL, err.value
