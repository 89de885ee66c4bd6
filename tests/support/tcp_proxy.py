"""A loopback TCP proxy that tests use to take a server down and bring it back.

:class:`TcpProxy` listens on ``127.0.0.1`` and forwards every connection to one
upstream address. Its modes model the ways a database "goes away" for a client:

* forwarding (:meth:`TcpProxy.start`): bytes flow both ways;
* stopped (:meth:`TcpProxy.stop`): the listener is closed (new connections are
  refused) and every proxied connection is reset on the client side and closed
  on the server side, as when the server process dies;
* black hole (:meth:`TcpProxy.blackhole`): connections are still accepted but no
  byte moves in either direction, as in a network partition; existing calls
  hang until a timeout. :meth:`TcpProxy.start` heals it and delivers what was
  held back;
* lost answer (:meth:`TcpProxy.reset_after`): the next client chunk containing
  a byte pattern is delivered to the server, then the client's connection is
  reset and the server's answer dropped: the request took effect, the client
  cannot know.

Example::

    async with TcpProxy("127.0.0.1", 5432) as proxy:
        dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
        ...
        await proxy.stop()   # connection refused / reset
        await proxy.start()  # back, on the same port
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType


class _Link:
    """One proxied connection: the client side, the upstream side and their pumps."""

    __slots__ = ("client", "cut", "tasks", "upstream")

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.cut = False  # the client side was reset by reset_after()


class TcpProxy:
    """A TCP proxy from ``127.0.0.1:<port>`` to ``upstream_host:upstream_port``.

    Args:
        upstream_host: host to forward to (a loopback address in tests).
        upstream_port: port to forward to.
        port: port to listen on; 0 (default) picks a free one at the first
            :meth:`start`, and later starts reuse it.

    Use as ``async with TcpProxy(...) as proxy`` (started on entry, closed on
    exit) or call :meth:`start` and :meth:`close` yourself.
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, port: int = 0) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._port = port
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[object]] = set()
        self._reset_pattern: bytes | None = None
        self.accepted = 0  #: connections accepted so far (all modes)
        self.lost_answers = 0  #: connections reset by :meth:`reset_after` so far

    @property
    def port(self) -> int:
        """The listening port (known after the first :meth:`start`)."""
        if not self._port:
            raise RuntimeError("TcpProxy: start() it first")
        return self._port

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        """How many proxied connections are open now."""
        return len(self._links)

    async def start(self) -> None:
        """Listen (again, on the same port) and forward; also heals a black hole."""
        self._flowing.set()
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self._port, reuse_address=True
            )
            self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and every proxied connection (clients see a reset)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._handlers):
            task.cancel()
        for link in list(self._links):
            self._drop(link)
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if server is not None:
            # after the connections are dropped: from Python 3.12 on wait_closed() waits
            # for every connection the server accepted to close (it hung here before)
            await server.wait_closed()
        self._flowing.set()  # nothing is held back any more

    def blackhole(self) -> None:
        """Keep accepting connections but move no byte either way until :meth:`start`."""
        self._flowing.clear()

    def reset_after(self, pattern: bytes) -> None:
        """Arm a lost answer: forward the next client chunk containing ``pattern``, then
        reset that client connection and drop everything the server sends on it."""
        self._reset_pattern = pattern

    async def close(self) -> None:
        """Stop for good (same as :meth:`stop`)."""
        await self.stop()

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ internals

    def _drop(self, link: _Link, *, reset: bool = True) -> None:
        """Close the client side (with a TCP reset if ``reset``) and the upstream side,
        and stop the pumps."""
        for task in link.tasks:
            task.cancel()
        if reset:
            _abort(link.client)
        else:
            link.client.close()
        if link.upstream is not None:
            link.upstream.close()
        self._links.discard(link)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client connection until either side closes."""
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.accepted += 1
        link = _Link(writer)
        self._links.add(link)
        try:
            await self._flowing.wait()  # a black hole holds new connections here
            try:
                up_reader, up_writer = await asyncio.open_connection(*self._upstream)
            except OSError:
                return
            link.upstream = up_writer
            to_server = asyncio.create_task(self._pump(reader, up_writer, link, outbound=True))
            to_client = asyncio.create_task(self._pump(up_reader, writer, link, outbound=False))
            link.tasks.update((to_server, to_client))
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
            if link.cut:  # let the server answer (and so finish the request) before closing
                await asyncio.wait({to_client}, timeout=5.0)
        except asyncio.CancelledError:  # stop()
            pass
        finally:
            self._drop(link, reset=link.cut or self._server is None)
            self._handlers.discard(task)

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        link: _Link,
        *,
        outbound: bool,
    ) -> None:
        """Copy ``src`` to ``dst`` while flowing; ``outbound`` is client -> server."""
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                await self._flowing.wait()
                data = await src.read(65536)
                if not data:
                    break
                await self._flowing.wait()
                if link.cut:
                    return  # the client is gone; a server answer is dropped
                dst.write(data)
                await dst.drain()
                if outbound and self._reset_pattern is not None and self._reset_pattern in data:
                    self._reset_pattern = None
                    self.lost_answers += 1
                    link.cut = True
                    _abort(link.client)
            if not link.cut and dst.can_write_eof():
                dst.write_eof()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s socket with a TCP reset (no graceful FIN)."""
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()
