"""Starting an aiohttp application on a TCP port: what the JWKS and admin servers share.

A low-level module (it imports only aiohttp), so any meshkit package may use it.
"""

from __future__ import annotations

from aiohttp import web

__all__ = ["start_app"]

_LINGERING_S = 1.0


async def start_app(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (``port`` 0: a free one), without an access log.

    A request body left unfinished by its client is waited for at most
    ``_LINGERING_S`` seconds after the answer (aiohttp's default, 10 s, held ``cleanup()``
    and so a server's drain that long after such a client).

    Returns:
        The runner (``await runner.cleanup()`` stops serving) and the bound port.

    Raises:
        OSError: the address cannot be bound; the runner is cleaned up first.
    """
    runner = web.AppRunner(app, access_log=None, lingering_time=_LINGERING_S)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    addresses = runner.addresses
    return runner, int(addresses[0][1]) if addresses else port
