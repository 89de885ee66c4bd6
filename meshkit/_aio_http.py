"""Starting an aiohttp application on a TCP port: what the JWKS and admin servers share.

A low-level module (it imports only aiohttp), so any meshkit package may use it.
"""

from __future__ import annotations

from aiohttp import web

__all__ = ["start_app"]


async def start_app(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (``port`` 0: a free one), without an access log.

    Returns:
        The runner (``await runner.cleanup()`` stops serving) and the bound port.

    Raises:
        OSError: the address cannot be bound; the runner is cleaned up first.
    """
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    addresses = runner.addresses
    return runner, int(addresses[0][1]) if addresses else port
