"""UserService on a real in-process grpc.aio server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from examples.ecom import security
from examples.ecom.proto import user_pb2, user_pb2_grpc
from examples.ecom.storage import RowCounts, Store, UserRecord
from examples.ecom.users import BAD_CREDENTIALS, IssuedSession, OpaqueSessionIssuer, UserServicer
from meshkit.auth import (
    AuthOptions,
    JWTVerifier,
    KeySet,
    TLSOptions,
    VerifierOptions,
    init_ca_dir,
    issue_into_dir,
)

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


@pytest.mark.parametrize(
    ("email", "name", "expected"),
    [
        ("eve@example.com", "Eve\x9b2J", "name: must not contain control characters"),
        ("eve@example.com", "Eve\x85Mallory", "name: must not contain control characters"),
        ("eve@example.com", "Eve\x80", "name: must not contain control characters"),
        ("eve\x9f@example.com", "Eve", "email: must be an email address"),
    ],
)
async def test_create_and_update_user_refuse_c1_controls(
    stack: Stack, email: str, name: str, expected: str
) -> None:
    """CreateUser and UpdateUser refuse a name or email holding a C1 control character.

    What was wrong: validation's control-character pattern was ``[\\x00-\\x1f\\x7f]``,
    the C0 controls and DEL only, while Unicode's control characters (category Cc) are
    U+0000..U+001F and U+007F..U+009F.

    What a user saw: a display name such as ``"Eve\\x9b2J"`` (U+009B, the 8-bit CSI
    that starts a terminal escape sequence) was stored and served back by GetUser, to
    end up in consoles and tools that print names; an email the same.

    Now: INVALID_ARGUMENT naming the field, as for ``"A\\x00"``, and nothing stored.
    """
    err = await rpc_error(stack.users.CreateUser(
        user_pb2.CreateUserRequest(email=email, name=name, password=PASSWORD)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (err.details() or "")
    assert await stack.store.count_rows() == RowCounts(0, 0, 0)
    ada = await create(stack)
    err = await rpc_error(update(stack, ada.id, name if name != "Eve" else "", email))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (err.details() or "")
    assert await stack.users.GetUser(user_pb2.GetUserRequest(user_id=ada.id)) == ada


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


async def test_authenticate_email_with_nul_is_bad_credentials(any_stack: Stack) -> None:
    """An email holding U+0000 (which no stored email can: CreateUser refuses control
    characters, PostgreSQL text cannot hold it) is an unknown email, on PostgreSQL too:
    UNAUTHENTICATED, not a store failure."""
    await create(any_stack)
    err = await rpc_error(any_stack.users.Authenticate(
        user_pb2.AuthenticateRequest(email="ada\x00@example.com", password=PASSWORD)))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED, BAD_CREDENTIALS)


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


# ----------------------------------------------------------------------------- UpdateUser


def update(stack: Stack, user_id: str, name: str = "", email: str = "") -> Any:
    """An UpdateUser call (empty fields unchanged)."""
    return stack.users.UpdateUser(
        user_pb2.UpdateUserRequest(user_id=user_id, name=name, email=email))


async def test_update_user_changes_what_get_user_returns(any_stack: Stack) -> None:
    """UpdateUser changes only the fields given and answers the stored user; GetUser and
    Authenticate then see the change (the email normalised like CreateUser's)."""
    ada = await create(any_stack)
    renamed = await update(any_stack, ada.id, name="Ada Lovelace")
    expected = user_pb2.User()
    expected.CopyFrom(ada)
    expected.name = "Ada Lovelace"
    assert renamed == expected
    assert await any_stack.users.GetUser(user_pb2.GetUserRequest(user_id=ada.id)) == expected
    moved = await update(any_stack, ada.id, email="Ada@Lovelace.ORG")
    expected.email = "ada@lovelace.org"
    assert moved == expected
    assert await any_stack.users.GetUser(user_pb2.GetUserRequest(user_id=ada.id)) == expected
    session = await any_stack.users.Authenticate(
        user_pb2.AuthenticateRequest(email="ada@lovelace.org", password=PASSWORD))
    assert session.user_id == ada.id
    # its own email again (any case) is no conflict
    expected.name = "Ada"
    assert await update(any_stack, ada.id, name="Ada", email="ADA@lovelace.org") == expected


async def test_update_user_not_found_and_taken_email(any_stack: Stack) -> None:
    """An unknown id is NOT_FOUND; another user's email (any case) is ALREADY_EXISTS and
    changes nothing, not even the name sent with it."""
    missing = "00000000-0000-4000-8000-000000000000"
    err = await rpc_error(update(any_stack, missing, name="Nobody"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == f"user {missing} not found"
    ada = await create(any_stack)
    await create(any_stack, "grace@example.com")
    err = await rpc_error(update(any_stack, ada.id, name="Not Ada", email="GRACE@example.com"))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert err.details() == "email 'grace@example.com' is taken"
    assert await any_stack.users.GetUser(user_pb2.GetUserRequest(user_id=ada.id)) == ada


@pytest.mark.parametrize(
    ("user_id", "name", "email", "expected"),
    [
        ("", "Ada", "", "user_id: required"),
        ("x'; drop", "Ada", "", "user_id: must be a UUID"),
        (None, "", "", "name, email: at least one is required (empty means unchanged)"),
        (None, "   ", "", "name: must not be blank"),
        (None, "n" * 201, "", "name: must be at most 200 characters, got 201"),
        (None, "A\x00", "", "name: must not contain control characters"),
        (None, "", "not-an-email", "email: must be an email address"),
        (None, "", "a" * 65 + "@x.io", "email: the part before '@' must be at most 64"),
        ("", "   ", "x", "user_id: required; name: must not be blank; email: must be"),
    ],
)
async def test_update_user_invalid(
    stack: Stack, user_id: str | None, name: str, email: str, expected: str
) -> None:
    """Malformed UpdateUser requests get INVALID_ARGUMENT naming every bad field, and
    change nothing."""
    ada = await create(stack)
    err = await rpc_error(update(stack, ada.id if user_id is None else user_id, name, email))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (err.details() or "")
    assert await stack.users.GetUser(user_pb2.GetUserRequest(user_id=ada.id)) == ada


async def test_update_user_only_for_the_edge_workload(sqlite_store: Store,
                                                      tmp_path: Path) -> None:
    """Over mTLS with the user service's real policy (security.userd_policy, USERD_JWT):
    the edge workload may call UpdateUser, the order service and other workloads get
    PERMISSION_DENIED and change nothing."""
    certs = tmp_path / "certs"
    init_ca_dir(certs, trust_domain=security.TRUST_DOMAIN, ttl_days=1)

    def tls(name: str) -> TLSOptions:
        files = issue_into_dir(certs, name, ttl_h=1, dns=("localhost",), ips=("127.0.0.1",))
        return TLSOptions(ca_file=files.ca_file, cert_file=files.cert_file,
                          key_file=files.key_file)

    server_tls = tls("userd")
    keys = KeySet.generate()
    auth = AuthOptions(
        verifier=JWTVerifier(VerifierOptions(issuer=security.ISSUER,
                                             audience=security.AUDIENCE), keys),
        jwt=security.USERD_JWT, policy=security.userd_policy())
    server = grpc.aio.server(interceptors=auth.interceptors(server_tls))
    port = server.add_secure_port("127.0.0.1:0", server_tls.server_credentials())
    user_pb2_grpc.add_UserServiceServicer_to_server(UserServicer(sqlite_store), server)
    await server.start()
    channels: list[grpc.aio.Channel] = []

    def stub(name: str) -> user_pb2_grpc.UserServiceStub:
        client = tls(name)
        ch = grpc.aio.secure_channel(f"127.0.0.1:{port}", client.channel_credentials(),
                                     options=client.channel_options("userd"))
        channels.append(ch)
        return user_pb2_grpc.UserServiceStub(ch)

    try:
        edge, orderd, other = stub(security.EDGE), stub("orderd"), stub("projector")
        ada = await edge.CreateUser(user_pb2.CreateUserRequest(
            email="ada@example.com", name="Ada", password=PASSWORD), timeout=5)
        for caller in (orderd, other):
            err = await rpc_error(caller.UpdateUser(
                user_pb2.UpdateUserRequest(user_id=ada.id, name="Mallory"), timeout=5))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (await sqlite_store.get_user(ada.id)).name == "Ada"  # type: ignore[union-attr]
        renamed = await edge.UpdateUser(
            user_pb2.UpdateUserRequest(user_id=ada.id, name="Ada L."), timeout=5)
        assert renamed.name == "Ada L."
        assert (await orderd.GetUser(user_pb2.GetUserRequest(user_id=ada.id),
                                     timeout=5)).name == "Ada L."
    finally:
        for ch in channels:
            await ch.close()
        await server.stop(None)
