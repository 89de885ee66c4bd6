"""A new password's minimum length holds for the form it is hashed in (NFKC): eight
code points that compose to four would set a four-character password, with which the
user then logs in."""

from __future__ import annotations

import grpc
import pytest

from examples.ecom.proto import user_pb2

from .conftest import Stack
from .test_users import rpc_error

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("password", [
    "e\u0301" * 4,  # e + COMBINING ACUTE: 8 code points, NFKC 4 (é)
    "\uff76\uff9e" * 4,  # halfwidth KA + voiced mark: 8 code points, NFKC 4 (ガ)
])
async def test_a_password_short_once_normalised_is_refused(
        stack: Stack, password: str) -> None:
    """CreateUser refuses such a password: INVALID_ARGUMENT naming the length in the
    normalised form; nothing stored."""
    err = await rpc_error(stack.users.CreateUser(
        user_pb2.CreateUserRequest(email="eve@example.com", name="Eve", password=password)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "password: must be 8 to 1024 characters" in (err.details() or "")
    assert password not in (err.details() or "")
    assert (await stack.store.count_rows()).users == 0


async def test_a_password_long_enough_once_normalised_is_accepted(stack: Stack) -> None:
    """Sixteen code points composing to eight characters are enough."""
    user = await stack.users.CreateUser(user_pb2.CreateUserRequest(
        email="eve@example.com", name="Eve", password="e\u0301" * 8))
    session = await stack.users.Authenticate(
        user_pb2.AuthenticateRequest(email="eve@example.com", password="\u00e9" * 8))
    assert session.user_id == user.id
