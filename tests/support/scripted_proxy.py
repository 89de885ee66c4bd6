"""The lifecycle of a loopback TCP proxy whose forwarding a test scripts byte by byte
(holding back a reply, passing it a line at a time): listen, and on exit close every
connection and cancel every pump. A subclass writes ``_handle``."""

from __future__ import annotations

import asyncio
from typing import Any


class ScriptedProxy:
    """Listens on ``127.0.0.1`` (``port`` once entered) for a subclass's ``_handle``,
    which connects to ``upstream`` itself and records the writers it opens in
    ``_writers`` and the pump tasks it starts in ``_tasks``; leaving the ``async with``
    closes the listener and those writers and cancels and awaits those tasks."""

    def __init__(self, upstream: int) -> None:
        self._upstream = upstream
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def _handle(self, creader: asyncio.StreamReader,
                      cwriter: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Any:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
