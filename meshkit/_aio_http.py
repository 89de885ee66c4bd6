"""Starting an aiohttp application on a TCP port: what the JWKS and admin servers share.

A low-level module (it imports only aiohttp), so any meshkit package may use it.
"""

from __future__ import annotations

import socket

from aiohttp import web

from meshkit._hosts import bare_host, is_unspecified

__all__ = ["start_app"]

_LINGERING_S = 1.0
_SHUTDOWN_S = 1.0
_KEEPALIVE_S = 75.0


async def start_app(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (``port`` 0: a free one), without an access log.

    ``host`` may be a bracketed IPv6 literal (``"[::1]"``). The IPv6 unspecified address
    (``"::"``) listens dual-stack, IPv4 clients included, as grpc servers and Linux's
    default do (asyncio sets ``IPV6_V6ONLY`` on every IPv6 listening socket).

    A request body left unfinished by its client is waited for at most
    ``_LINGERING_S`` seconds after the answer (aiohttp's default, 10 s, held ``cleanup()``
    and so a server's drain that long after such a client); ``cleanup()`` waits for
    handlers still running (one writing an answer its client does not read) at most
    ``_SHUTDOWN_S`` seconds (aiohttp's default, 60 s, held a server's drain that long
    after a scraper that stopped reading). A connection idle between requests is closed
    after ``_KEEPALIVE_S`` seconds (``web.run_app``'s default; the runner's own, 3630 s,
    let clients that send nothing hold file descriptors for an hour).

    Returns:
        The runner (``await runner.cleanup()`` stops serving) and the bound port.

    Raises:
        OSError: the address cannot be bound; the runner is cleaned up first.
    """
    runner = web.AppRunner(app, access_log=None, lingering_time=_LINGERING_S,
                           shutdown_timeout=_SHUTDOWN_S, keepalive_timeout=_KEEPALIVE_S)
    await runner.setup()
    host = bare_host(host)
    try:
        site: web.BaseSite
        if ":" in host and is_unspecified(host) and socket.has_dualstack_ipv6():
            sock = socket.create_server((host, port), family=socket.AF_INET6,
                                        dualstack_ipv6=True)
            site = web.SockSite(runner, sock)
        else:
            site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    addresses = runner.addresses
    return runner, int(addresses[0][1]) if addresses else port
