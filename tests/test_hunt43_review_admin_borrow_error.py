"""A loop borrowing the process's shared ephemeral-port admin server (``_SharedAdmin``)
whose registry the admin server refuses (``add_registry`` raising in the serving loop)
is not left counted as a user: before, its loop's user count and its borrow count
stayed raised for ever (no ``release`` follows a failed ``acquire``), so the admin server
moved into that loop when its own loop ended, serving there for no server, never
stopped."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from meshkit.errors import ConfigError
from meshkit.observability import AdminOptions
from meshkit.server import _SharedAdmin

pytestmark = pytest.mark.timeout(120)


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture
def loops() -> Iterator[list[_Loop]]:
    made = [_Loop() for _ in range(2)]
    yield made
    for one in made:
        one.close()


async def _slot_users() -> int:
    return _SharedAdmin.users()


def test_failed_borrow_is_not_counted(loops: list[_Loop]) -> None:
    a, b = loops
    options = AdminOptions(host="127.0.0.1", port=0, require_server=False)
    served = CollectorRegistry()
    first = a.run(_SharedAdmin.acquire(options, served))
    try:
        with pytest.raises(ConfigError):
            b.run(_SharedAdmin.acquire(options, object()))  # type: ignore[arg-type]
        lent = _SharedAdmin._lent
        assert lent is not None and lent.server is first
        assert b.loop not in lent.borrowers  # before: 1
        assert b.run(_slot_users()) == 0  # before: 1
        assert all(r is served for r in lent.registries)
        # and the next borrow of that loop works, and leaves with its release
        other = CollectorRegistry()
        assert b.run(_SharedAdmin.acquire(options, other)) is first
        assert lent.borrowers.get(b.loop) == 1
        b.run(_SharedAdmin.release(other))
        assert b.loop not in lent.borrowers
    finally:
        a.run(_SharedAdmin.release(served))
    assert _SharedAdmin._lent is None  # nothing to move to
