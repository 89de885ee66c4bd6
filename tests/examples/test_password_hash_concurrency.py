"""UserService bounds how many password hashings (scrypt, 16 MiB each) run at once.

Each scrypt run of ``passwords`` (N=2^14, r=8) takes 16 MiB. The servicer ran them with
``asyncio.to_thread``, whose pool has ``min(32, os.cpu_count() + 4)`` threads, and in a
pod ``os.cpu_count()`` is the node's CPUs, not the pod's limit: a burst of logins ran up
to 32 at once (512 MiB) in a userd whose deploy/k8s memory limit is 256 MiB, so it was
OOM-killed, and ran more hashings at once than the pod's one CPU can make progress on.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import cast

import grpc
import pytest

from examples.ecom import passwords
from examples.ecom.proto import user_pb2
from examples.ecom.storage import Store
from examples.ecom.users import MAX_CONCURRENT_HASHES, UserServicer
from tests.examples.conftest import Stack, start_stack

pytestmark = pytest.mark.timeout(60)


class _Peak:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


@pytest.fixture
def peak(monkeypatch: pytest.MonkeyPatch) -> _Peak:
    """Counts the scrypt runs in progress at once (scrypt itself still runs)."""
    seen = _Peak()
    real = passwords._kdf

    def counting(password: str, *args: object) -> bytes:
        seen.enter()
        try:
            return real(password, *args)  # type: ignore[arg-type]
        finally:
            seen.leave()

    monkeypatch.setattr(passwords, "_kdf", counting)
    return seen


@pytest.fixture
async def users(sqlite_store: Store) -> AsyncIterator[Stack]:
    st = await start_stack(sqlite_store)
    yield st
    for close in st.closers:
        await close()


async def test_a_burst_of_logins_runs_a_bounded_number_of_hashings(
        users: Stack, peak: _Peak) -> None:
    """Eight logins at once (a known user with the right and a wrong password, unknown
    emails) run at most MAX_CONCURRENT_HASHES scrypts at a time (before: as many as the
    thread pool has threads, at least 5) and each still gets its answer."""
    assert 1 <= MAX_CONCURRENT_HASHES <= 4  # 64 MiB at most, well inside 256 MiB
    await users.users.CreateUser(user_pb2.CreateUserRequest(
        email="burst@example.com", name="Burst", password="correct horse"), timeout=30)
    peak.peak = 0

    async def login(i: int) -> grpc.StatusCode:
        email = "burst@example.com" if i % 3 else f"nobody{i}@example.com"
        password = "correct horse" if i % 2 else "wrong horse"
        try:
            await users.users.Authenticate(
                user_pb2.AuthenticateRequest(email=email, password=password), timeout=30)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    codes = await asyncio.gather(*(login(i) for i in range(8)))
    assert codes == [grpc.StatusCode.OK if i % 3 and i % 2 else grpc.StatusCode.UNAUTHENTICATED
                     for i in range(8)]
    assert 1 <= peak.peak <= MAX_CONCURRENT_HASHES, peak.peak


def test_the_bound_holds_in_each_event_loop_a_servicer_serves() -> None:
    """A servicer whose calls waited for a hashing slot in one event loop serves calls that
    wait in another (one asyncio.Semaphore, bound to the first loop by its waiters, would
    raise RuntimeError there)."""

    async def burst(servicer: UserServicer) -> None:
        await asyncio.gather(*(servicer._hashing(time.sleep, 0.02)
                               for _ in range(MAX_CONCURRENT_HASHES + 2)))

    servicer = UserServicer(cast(Store, None))  # the store is not used by _hashing
    asyncio.run(burst(servicer))
    asyncio.run(burst(servicer))
