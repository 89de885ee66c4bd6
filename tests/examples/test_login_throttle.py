"""Authenticate limits failed logins per email (NIST SP 800-63B 5.2.2).

There was no limit: a password could be guessed online at the pace userd hashes, for as
long as one liked. Past ``MAX_FAILED_LOGINS`` failures of one email within
``LOGIN_WINDOW_S``, further attempts are RESOURCE_EXHAUSTED (with ``retry-after``) before
any lookup or hashing, for a registered email and an unknown one alike (no enumeration);
other emails are untouched and a success clears the count."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from examples.ecom import users as users_module
from examples.ecom.proto import user_pb2, user_pb2_grpc
from examples.ecom.storage import Store, StoreUnavailable
from tests.examples.conftest import Stack, start_stack

pytestmark = pytest.mark.timeout(60)

PASSWORD = "correct horse battery"


@pytest.fixture
async def throttled(sqlite_store: Store, monkeypatch: pytest.MonkeyPatch
                    ) -> AsyncIterator[Stack]:
    """The stack with a limit of 2 failed logins per email (the default is read when the
    servicer is made)."""
    monkeypatch.setattr(users_module, "MAX_FAILED_LOGINS", 2, raising=False)
    st = await start_stack(sqlite_store)
    yield st
    for close in st.closers:
        await close()


async def _login(stack: Stack, email: str, password: str) -> grpc.aio.AioRpcError | None:
    try:
        await stack.users.Authenticate(
            user_pb2.AuthenticateRequest(email=email, password=password), timeout=30)
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


async def test_failed_logins_of_an_email_are_limited(throttled: Stack) -> None:
    await throttled.users.CreateUser(user_pb2.CreateUserRequest(
        email="ada@example.com", name="Ada", password=PASSWORD), timeout=30)
    await throttled.users.CreateUser(user_pb2.CreateUserRequest(
        email="bob@example.com", name="Bob", password=PASSWORD), timeout=30)
    for email in ("ADA@example.com", "nobody@example.com"):  # known or not: the same
        for _ in range(2):
            err = await _login(throttled, email, "wrong password")
            assert err is not None and err.code() == grpc.StatusCode.UNAUTHENTICATED
        err = await _login(throttled, email, PASSWORD)  # before: the right one got in
        assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
        assert "too many failed logins" in (err.details() or "")
        retry_after = dict(err.trailing_metadata() or ())["retry-after"]
        assert 1 <= int(retry_after) <= 300
    assert await _login(throttled, "bob@example.com", PASSWORD) is None  # another email
    assert await _login(throttled, "bob@example.com", "wrong password") is not None
    assert await _login(throttled, "bob@example.com", PASSWORD) is None  # clears the count
    assert await _login(throttled, "bob@example.com", "wrong password") is not None
    assert await _login(throttled, "bob@example.com", PASSWORD) is None


def test_the_window_slides_and_the_tracked_emails_are_bounded() -> None:
    now = [1000.0]
    throttle = users_module.LoginThrottle(2, 60.0, max_emails=3, clock=lambda: now[0])
    throttle.failed("a@example.com")
    now[0] += 30
    throttle.failed("A@EXAMPLE.COM")  # one address
    assert throttle.retry_after_s("a@example.com") == pytest.approx(30.0)
    now[0] += 30.5  # the first failure left the window
    assert throttle.retry_after_s("a@example.com") is None
    for i in range(5):  # a spray of addresses: only the last 3 kept
        throttle.failed(f"x{i}@example.com")
        throttle.failed(f"x{i}@example.com")
    assert throttle.retry_after_s("x0@example.com") is None
    assert throttle.retry_after_s("x4@example.com") is not None


async def test_logins_in_flight_count_against_the_limit(throttled: Stack) -> None:
    """Attempts sent at once all passed the check before any had failed (the check came
    before the lookup and the hashing, the count after them), so a guesser sending them
    in bursts had as many guesses as it liked, whatever the limit: attempts in flight
    now count against it too."""
    await throttled.users.CreateUser(user_pb2.CreateUserRequest(
        email="ada@example.com", name="Ada", password=PASSWORD), timeout=30)
    errs = await asyncio.gather(*(_login(throttled, "ada@example.com", f"guess {i}")
                                  for i in range(6)))
    codes = sorted(e.code().name for e in errs if e is not None)
    assert codes.count("UNAUTHENTICATED") == 2, codes  # before: 6, every guess hashed
    assert codes.count("RESOURCE_EXHAUSTED") == 4, codes


async def test_an_attempt_the_store_failed_is_not_counted(
        throttled: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """An attempt that could not be judged (the store unavailable) counts only while in
    flight: a user retrying through an outage is not locked out."""
    await throttled.users.CreateUser(user_pb2.CreateUserRequest(
        email="ada@example.com", name="Ada", password=PASSWORD), timeout=30)

    async def unavailable(email: str) -> None:
        raise StoreUnavailable("injected outage")

    with monkeypatch.context() as patch:
        patch.setattr(throttled.store, "get_user_by_email", unavailable)
        for _ in range(3):
            err = await _login(throttled, "ada@example.com", PASSWORD)
            assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE, err
    assert await _login(throttled, "ada@example.com", PASSWORD) is None


async def test_attempts_never_judged_do_not_flush_an_address_out(
        sqlite_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The table of addresses is bounded (least recently failed forgotten first); an
    attempt enters it only once judged. Counting attempts as failed from their check on
    and taking back those never judged (83544e9) let attempts at other addresses that
    were never judged (cancelled while queued for a hashing slot, or refused by a store
    failing meanwhile) flush a locked address out for nothing: its guesses began again."""
    throttle = users_module.LoginThrottle(2, 300.0, max_emails=3)
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    user_pb2_grpc.add_UserServiceServicer_to_server(
        users_module.UserServicer(sqlite_store, login_throttle=throttle), server)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = user_pb2_grpc.UserServiceStub(channel)

    async def login(email: str, password: str) -> grpc.StatusCode:
        try:
            await stub.Authenticate(user_pb2.AuthenticateRequest(email=email,
                                                                 password=password),
                                    timeout=30)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    async def unavailable(email: str) -> None:
        raise StoreUnavailable("injected outage")

    try:
        await stub.CreateUser(user_pb2.CreateUserRequest(
            email="ada@example.com", name="Ada", password=PASSWORD), timeout=30)
        for i in range(2):
            assert await login("ada@example.com", f"guess {i}") \
                == grpc.StatusCode.UNAUTHENTICATED
        assert await login("ada@example.com", "guess 2") == grpc.StatusCode.RESOURCE_EXHAUSTED
        with monkeypatch.context() as patch:
            patch.setattr(sqlite_store, "get_user_by_email", unavailable)
            for i in range(5):  # more addresses than the table holds
                assert await login(f"x{i}@example.com", "whatever") \
                    == grpc.StatusCode.UNAVAILABLE
        # before: ada's failures were flushed out, the guess was judged (UNAUTHENTICATED)
        assert await login("ada@example.com", "guess 3") == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await channel.close()
        await server.stop(None)
