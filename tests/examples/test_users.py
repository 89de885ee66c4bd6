"""UserService on a real in-process grpc.aio server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from examples.ecom.proto import user_pb2
from examples.ecom.storage import RowCounts, Store, UserRecord
from examples.ecom.users import BAD_CREDENTIALS, IssuedSession, OpaqueSessionIssuer

from .conftest import Stack, start_stack

pytestmark = pytest.mark.timeout(30)

PASSWORD = "correct horse battery"


async def create(stack: Stack, email: str = "Ada@Example.com") -> user_pb2.User:
    """Create a user named Ada with PASSWORD."""
    return await stack.users.CreateUser(
        user_pb2.CreateUserRequest(email=email, name="Ada", password=PASSWORD)
    )


async def rpc_error(call: object) -> grpc.aio.AioRpcError:
    """Await ``call`` and return the error it must fail with."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


async def test_create_get_authenticate(stack: Stack) -> None:
    """A new user can be fetched and can log in, getting an opaque session token."""
    user = await create(stack)
    assert user.email == "ada@example.com" and user.name == "Ada" and user.id
    assert user.created_at.ToMilliseconds() > 0
    assert await stack.users.GetUser(user_pb2.GetUserRequest(user_id=user.id)) == user
    session = await stack.users.Authenticate(
        user_pb2.AuthenticateRequest(email="ADA@example.com", password=PASSWORD)
    )
    assert session.user_id == user.id
    assert len(session.token) >= 40
    assert session.expires_in_s == OpaqueSessionIssuer().ttl_s


async def test_password_stored_hashed(stack: Stack) -> None:
    """The store holds an scrypt hash with parameters and salt, never the password."""
    user = await create(stack)
    record = await stack.store.get_user(user.id)
    assert record is not None
    assert record.password_hash.startswith("scrypt$16384$8$1$")
    assert PASSWORD not in record.password_hash


async def test_duplicate_email_already_exists(stack: Stack) -> None:
    """Registering an email again, in any letter case, gives ALREADY_EXISTS."""
    await create(stack)
    err = await rpc_error(create(stack, "ADA@EXAMPLE.COM"))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (await stack.store.count_rows()).users == 1


@pytest.mark.parametrize(
    ("email", "name", "password", "expected"),
    [
        ("", "Ada", PASSWORD, "email: required"),
        ("not-an-email", "Ada", PASSWORD, "email: must be an email address"),
        ("a" * 250 + "@x.io", "Ada", PASSWORD, "email: must be at most 254 characters, got 255"),
        ("a" * 65 + "@x.io", "Ada", PASSWORD, "email: the part before '@' must be at most 64"),
        ("ada@example.com", "", PASSWORD, "name: required"),
        ("ada@example.com", "   ", PASSWORD, "name: must not be blank"),
        ("ada@example.com", "n" * 201, PASSWORD, "name: must be at most 200 characters, got 201"),
        ("ada@example.com", "A\x00", PASSWORD, "name: must not contain control characters"),
        ("ada@example.com", "Ada", "short", "password: must be 8 to 1024 characters, got 5"),
        ("ada@example.com", "Ada", "p" * 1025, "password: must be 8 to 1024 characters, got 1025"),
        ("", "", "", "email: required; name: required; password: required"),
    ],
)
async def test_create_user_invalid(
    stack: Stack, email: str, name: str, password: str, expected: str
) -> None:
    """Malformed CreateUser requests get INVALID_ARGUMENT naming the field, and store nothing."""
    err = await rpc_error(
        stack.users.CreateUser(
            user_pb2.CreateUserRequest(email=email, name=name, password=password)
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (err.details() or "")
    assert await stack.store.count_rows() == RowCounts(0, 0, 0)


async def test_get_user_errors(stack: Stack) -> None:
    """GetUser answers NOT_FOUND for an unknown id and INVALID_ARGUMENT for a malformed one."""
    missing = "00000000-0000-4000-8000-000000000000"
    err = await rpc_error(stack.users.GetUser(user_pb2.GetUserRequest(user_id=missing)))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == f"user {missing} not found"
    err = await rpc_error(stack.users.GetUser(user_pb2.GetUserRequest(user_id="x'; drop")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user_id: must be a UUID" in (err.details() or "")


async def test_bad_credentials_look_alike(stack: Stack) -> None:
    """A wrong password and an unknown email both get UNAUTHENTICATED with one message."""
    await create(stack)
    errors = [
        await rpc_error(stack.users.Authenticate(user_pb2.AuthenticateRequest(**req)))
        for req in (
            {"email": "ada@example.com", "password": "wrong password"},
            {"email": "eve@example.com", "password": PASSWORD},
        )
    ]
    assert {e.code() for e in errors} == {grpc.StatusCode.UNAUTHENTICATED}
    assert {e.details() for e in errors} == {BAD_CREDENTIALS}


async def test_authenticate_missing_fields(stack: Stack) -> None:
    """Authenticate without an email or password gets INVALID_ARGUMENT."""
    err = await rpc_error(stack.users.Authenticate(user_pb2.AuthenticateRequest()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "email: required; password: required"


@pytest.fixture
async def custom_stack(sqlite_store: Store) -> AsyncIterator[Stack]:
    """A stack whose UserService issues sessions through a custom issuer."""

    def issue(user: UserRecord) -> IssuedSession:
        return IssuedSession(f"token-for-{user.id}", 42)

    st = await start_stack(sqlite_store, issue_session=issue)
    yield st
    for close in st.closers:
        await close()


async def test_session_issuer_is_pluggable(custom_stack: Stack) -> None:
    """Authenticate returns whatever session the injected issuer makes."""
    user = await create(custom_stack)
    session = await custom_stack.users.Authenticate(
        user_pb2.AuthenticateRequest(email=user.email, password=PASSWORD)
    )
    assert (session.token, session.expires_in_s) == (f"token-for-{user.id}", 42)
