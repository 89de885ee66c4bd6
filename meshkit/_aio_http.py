"""Starting an aiohttp application on a TCP port: what the JWKS and admin servers share.

A low-level module (it imports only aiohttp), so any meshkit package may use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import threading
import time
import weakref
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from meshkit._fork import name_dev_null, reset_in_forked_child
from meshkit._hosts import bare_host, is_unspecified

__all__ = ["start_app"]

_LINGERING_S = 1.0
_SHUTDOWN_S = 1.0
_KEEPALIVE_S = 75.0
#: Tries at binding every address of a name on one free port (another process may take
#: the port on the second family between the binds).
_SAME_PORT_TRIES = 5
#: Bind errors of an address a name lists that this machine does not have (``::1`` in a
#: container with IPv6 disabled): the name is served on its other addresses, as grpc core
#: binds a name's addresses.
_NOT_HERE = frozenset({errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT})
#: Seconds between two warnings of malformed requests (see _ClientErrorsOncePerMinute).
_CLIENT_ERROR_LOG_EVERY_S = 60.0


class _ClientErrorsOncePerMinute(logging.Filter):
    """On the logger aiohttp's request handlers log to: a request aiohttp could not parse
    (an ``HttpProcessingError`` under 500: a bad header line, a header past its limits, a
    bad chunk; answered ``400`` and the connection closed) is the client's fault, which
    aiohttp logs at ``ERROR`` with the whole traceback, one per request, so any peer that
    reaches the port could fill the logs. Such records become one ``WARNING`` per
    ``_CLIENT_ERROR_LOG_EVERY_S`` (the peer and the error's type, no traceback, and how
    many were left out since the last one); every other record passes as aiohttp wrote
    it."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._last = -float("inf")
        self._left_out = 0
        _filters.add(self)  # a lock of its own in a forked child

    def _forget_parent(self) -> None:
        """In a child made by ``os.fork()``: a new lock (one a thread of the parent held
        at the fork would never be released, and the child's first malformed request
        would hang its event loop in the log call)."""
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError) or not 400 <= (exc.code or 0) < 500:
            return True
        now = time.monotonic()
        with self._lock:
            if now - self._last < _CLIENT_ERROR_LOG_EVERY_S:
                self._left_out += 1
                return False
            self._last, left_out, self._left_out = now, self._left_out, 0
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = ("malformed HTTP request from %s (%s, answered %d); the next within "
                      f"{_CLIENT_ERROR_LOG_EVERY_S:.0f} s are not logged (%d left out "
                      "before this one)")
        record.args = (peer, type(exc).__name__, exc.code, left_out)
        record.exc_info = record.exc_text = None
        return True


_filters = reset_in_forked_child(_ClientErrorsOncePerMinute)

#: The logger of the servers' request handlers (aiohttp's ``aiohttp.server`` otherwise).
_HTTP_LOG = logging.getLogger("meshkit.http")
_CLIENT_ERRORS = _ClientErrorsOncePerMinute()
_HTTP_LOG.addFilter(_CLIENT_ERRORS)


#: The listening servers (asyncio's or uvloop's) and the request servers (aiohttp's
#: ``web.Server``, which holds the connections) of the apps started here, weakly (one
#: closed and collected leaves): a child made by ``os.fork()`` makes its copies of their
#: sockets name ``/dev/null``. Their sockets are read at the fork: uvloop's servers give
#: new ``PseudoSocket`` objects at each read (no ``socket.socket`` to keep), and the
#: connections come and go.
_LISTENING: weakref.WeakSet[Any] = weakref.WeakSet()
_HANDLING: weakref.WeakSet[web.Server] = weakref.WeakSet()


def _listeners_forgotten() -> None:
    """In a forked child: the descriptors of the listening sockets and of the connections
    open at the fork name ``/dev/null`` (:func:`meshkit._fork.name_dev_null`). The
    child's copy otherwise kept each port listening after the parent stopped serving it
    (a client connected and waited, unanswered: nothing accepts in the child; the port
    could not be bound again while the child lived), and each connection open: the
    parent's close of it sent no FIN, so a client (a scraper's keep-alive connection)
    sent its next request on it and waited for an answer until its timeout. Never
    raises (a fork hook's error would only be printed)."""
    sockets: list[Any] = []
    for server in list(_LISTENING):
        with contextlib.suppress(Exception):
            sockets.extend(server.sockets or ())
    for handling in list(_HANDLING):
        with contextlib.suppress(Exception):
            for transport in list(handling._connections.values()):
                if (sock := transport.get_extra_info("socket")) is not None:
                    sockets.append(sock)
    with contextlib.suppress(Exception):
        name_dev_null(sockets)


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_listeners_forgotten)


def _remember_listening(runner: web.AppRunner) -> None:
    """Add ``runner``'s listening servers (its sites') to :data:`_LISTENING` and its
    request server to :data:`_HANDLING`."""
    for site in runner.sites:
        server: Any = getattr(site, "_server", None)
        if server is not None:
            _LISTENING.add(server)
    if runner.server is not None:
        _HANDLING.add(runner.server)


async def start_app(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (``port`` 0: a free one), without an access log.

    ``host`` may be a bracketed IPv6 literal (``"[::1]"``). The IPv6 unspecified address
    (``"::"``) listens dual-stack, IPv4 clients included, as grpc servers and Linux's
    default do (asyncio sets ``IPV6_V6ONLY`` on every IPv6 listening socket).

    A host *name* that resolves to several addresses (``localhost``: ``127.0.0.1`` and
    ``::1`` on most systems) is bound on each of them on one port, as grpc core binds a
    name (an address not on this machine, EADDRNOTAVAIL, e.g. ``::1`` with IPv6 disabled,
    is skipped when another binds): asyncio's own bind gave each address a free port of
    its own when ``port`` is 0, and only the first was returned, so a client reaching the
    name over the other family found nothing there.

    A request body left unfinished by its client is waited for at most
    ``_LINGERING_S`` seconds after the answer (aiohttp's default, 10 s, held ``cleanup()``
    and so a server's drain that long after such a client); ``cleanup()`` waits for
    handlers still running (one writing an answer its client does not read) at most
    ``_SHUTDOWN_S`` seconds (aiohttp's default, 60 s, held a server's drain that long
    after a scraper that stopped reading). A connection idle between requests is closed
    after ``_KEEPALIVE_S`` seconds (``web.run_app``'s default; the runner's own, 3630 s,
    let clients that send nothing hold file descriptors for an hour). A child made by
    ``os.fork()`` does not keep the listening sockets nor the connections open at the
    fork (its copies name ``/dev/null``; on asyncio's and uvloop's loops): once the
    parent stops serving, the port refuses connections and can be bound again, and a
    connection the parent closes is closed for its client.
    A request aiohttp
    cannot parse (the client's fault, answered ``400``) is logged on ``meshkit.http`` as
    one warning a minute without a traceback, not at ``ERROR`` with one each (any peer
    reaching the port could fill the logs); the handlers' other records go there as
    aiohttp writes them.

    Returns:
        The runner (``await runner.cleanup()`` stops serving) and the bound port.

    Raises:
        OSError: the address cannot be bound; the runner is cleaned up first.
    """
    runner = web.AppRunner(app, access_log=None, lingering_time=_LINGERING_S,
                           shutdown_timeout=_SHUTDOWN_S, keepalive_timeout=_KEEPALIVE_S,
                           logger=_HTTP_LOG)
    await runner.setup()
    host = bare_host(host)
    try:
        site: web.BaseSite
        if ":" in host and is_unspecified(host) and socket.has_dualstack_ipv6():
            sock = socket.create_server((host, port), family=socket.AF_INET6,
                                        dualstack_ipv6=True)
            site = web.SockSite(runner, sock)
        else:
            # bound here, not by asyncio's create_server: since Python 3.12.? / 3.13 that
            # skips an address not on this machine (EADDRNOTAVAIL) and, when none is
            # left, raises an OSError with no errno ("could not bind on any address")
            addresses = [(int(socket.AF_INET6 if ":" in host else socket.AF_INET), host)] \
                if _is_ip(host) else await _addresses(host, port)
            if addresses:
                pending = _bind_on_one_port(addresses, port)
                try:
                    while pending:
                        await web.SockSite(runner, pending[0]).start()
                        pending.pop(0)
                except BaseException:
                    for left in pending:  # the one that failed, and those not tried
                        left.close()
                    raise
                _remember_listening(runner)
                return runner, int(runner.addresses[0][1])
            site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    _remember_listening(runner)
    addresses = runner.addresses
    return runner, int(addresses[0][1]) if addresses else port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return True


async def _addresses(host: str, port: int) -> list[tuple[int, str]]:
    """The distinct ``(family, address)`` pairs ``host`` resolves to for a listening
    socket (``AI_PASSIVE``), in the resolver's order."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    out: list[tuple[int, str]] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            pair = (int(family), str(sockaddr[0]))
            if pair not in out:
                out.append(pair)
    return out


def _bind_on_one_port(addresses: list[tuple[int, str]], port: int) -> list[socket.socket]:
    """Listening sockets on every one of ``addresses``, all on one port: ``port``, or (0)
    the free port the first bind got, tried again when another process took it on a
    later address meanwhile (at most ``_SAME_PORT_TRIES`` times).

    An address this machine does not have (``_NOT_HERE``) is skipped when another binds.

    Raises:
        OSError: an address cannot be bound, or none of them is on this machine (nothing
            is left open).
    """
    for attempt in range(_SAME_PORT_TRIES):
        socks: list[socket.socket] = []
        try:
            chosen = port
            missing: OSError | None = None
            for family, address in addresses:
                try:
                    sock = socket.create_server((address, chosen), family=family)
                except OSError as exc:
                    if exc.errno not in _NOT_HERE:
                        raise
                    missing = exc  # on no interface here, or its family disabled
                    continue
                socks.append(sock)
                chosen = sock.getsockname()[1]
            if not socks and missing is not None:
                raise missing
            return socks
        except OSError as exc:
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.close()
            if port != 0 or exc.errno != errno.EADDRINUSE or attempt + 1 == _SAME_PORT_TRIES:
                raise
    raise AssertionError("unreachable")  # pragma: no cover
