"""The DNS-rebinding Host check of an admin server follows the addresses it actually
bound, not the spelling of its host option."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from meshkit.observability import AdminOptions, AdminServer
from tests.support.skips import asyncio_loop_only

_NAMES_ON_ASYNCIO = asyncio_loop_only(
    "uvloop's create_server resolves names in libuv, not through the patched "
    "loop.getaddrinfo")

#: a host name that resolves to 127.0.0.1 only (the loop's resolver is taught it), as a
#: machine's own name does on Debian (``/etc/hosts``: ``127.0.1.1 <hostname>``)
_NAME = "admin-box.test"


def _teach(monkeypatch: pytest.MonkeyPatch, name: str, address: str) -> None:
    """Make the running loop's resolver answer ``address`` for ``name``."""
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == name:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port or 0))]
        return await real(host, port, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)


async def _status(port: int, host: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET /debug/mesh HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                     .encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    return int(data.split(b" ", 2)[1])


@_NAMES_ON_ASYNCIO
async def test_a_host_name_bound_on_loopback_refuses_a_rebound_host_header(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An admin server given a host name that resolves to loopback listens on loopback
    only, so it refuses a foreign Host header (DNS rebinding) 403 as one given
    ``127.0.0.1`` does, while its own name, ``localhost`` and addresses keep working."""
    _teach(monkeypatch, _NAME, "127.0.0.1")
    admin = AdminServer(AdminOptions(host=_NAME, registry=CollectorRegistry(),
                                     require_server=False))
    port = await admin.start()
    try:
        for good in (f"{_NAME}:{port}", _NAME.upper(), f"127.0.0.1:{port}",
                     f"localhost:{port}"):
            assert await _status(port, good) == 200, good
        for bad in (f"attacker.example:{port}", f"{_NAME}.evil.com:{port}"):
            assert await _status(port, bad) == 403, bad
    finally:
        await admin.stop()


@_NAMES_ON_ASYNCIO
async def test_a_host_name_bound_off_loopback_answers_any_host(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A host name that resolves to the wildcard address listens on every interface, like
    ``0.0.0.0``: the Host header is not checked (a Prometheus scrapes it by any name)."""
    _teach(monkeypatch, _NAME, "0.0.0.0")
    admin = AdminServer(AdminOptions(host=_NAME, registry=CollectorRegistry(),
                                     require_server=False))
    port = await admin.start()
    try:
        assert await _status(port, f"orders-7.pods.example:{port}") == 200
    finally:
        await admin.stop()
