"""An email cannot hold invisible format characters (zero-width space, soft hyphen, word
joiner, BOM, bidi marks): with one, an address displays exactly as another user's
while being a separate account."""

from __future__ import annotations

import grpc
import pytest

from examples.ecom.proto import user_pb2

from .conftest import Stack
from .test_users import PASSWORD, rpc_error

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("email", [
    "eve\u200b@example.com",  # ZERO WIDTH SPACE
    "eve\u00ad@example.com",  # SOFT HYPHEN
    "eve@exam\u2060ple.com",  # WORD JOINER
    "\ufeffeve@example.com",  # ZERO WIDTH NO-BREAK SPACE (BOM)
    "eve@example.com\u200f",  # RIGHT-TO-LEFT MARK
    "eve\U000e0041@example.com",  # TAG LATIN CAPITAL LETTER A
])
async def test_invisible_characters_in_emails_refused(stack: Stack, email: str) -> None:
    """CreateUser and UpdateUser refuse an email holding a format character (Unicode
    category Cf) other than the joiners ZWJ/ZWNJ: INVALID_ARGUMENT, nothing stored."""
    user = await stack.users.CreateUser(
        user_pb2.CreateUserRequest(email="eve@example.com", name="Eve", password=PASSWORD))
    err = await rpc_error(stack.users.CreateUser(
        user_pb2.CreateUserRequest(email=email, name="Mallory", password=PASSWORD)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "email: must be an email address" in (err.details() or "")
    err = await rpc_error(stack.users.UpdateUser(
        user_pb2.UpdateUserRequest(user_id=user.id, email=email)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await stack.store.count_rows()).users == 1


async def test_joiners_in_emails_still_accepted(stack: Stack) -> None:
    """An address that needs a zero-width non-joiner (Persian) is accepted."""
    email = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645@example.com"
    user = await stack.users.CreateUser(
        user_pb2.CreateUserRequest(email=email, name="U", password=PASSWORD))
    assert user.email == email
