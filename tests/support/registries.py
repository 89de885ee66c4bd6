"""A registry whose watch answers exactly what a test hands it: the pool's and the
channel's bookkeeping driven answer by answer, with no real registry's timing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from meshkit.discovery import Instance


class QueueRegistry:
    """A registry whose watch answers what the test puts on :attr:`answers` (a queue of
    instance sets, one answer each); ``register``/``deregister``/``close`` do nothing."""

    def __init__(self) -> None:
        self.answers: asyncio.Queue[frozenset[Instance]] = asyncio.Queue()

    async def register(self, instance: Instance) -> None:
        pass

    async def deregister(self, instance: Instance) -> None:
        pass

    async def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        while True:
            yield await self.answers.get()

    async def close(self) -> None:
        pass
