"""A failed login looks the email up as many times whether or not the user exists, so
the store round trips do not tell which addresses are registered (as the dummy hash
keeps the hashing time the same)."""

from __future__ import annotations

import unicodedata
from typing import Any

import grpc
import pytest

from examples.ecom.proto import user_pb2

from .conftest import Stack
from .test_users import PASSWORD, rpc_error

pytestmark = pytest.mark.timeout(30)


async def test_lookups_do_not_depend_on_the_user_existing(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Authenticate with a wrong password makes as many email lookups for a registered
    non-ASCII address (found at the first spelling) as for an unregistered one."""
    known = unicodedata.normalize("NFD", "jos\u00e9@example.com")
    unknown = unicodedata.normalize("NFD", "ren\u00e9@example.com")
    await stack.users.CreateUser(
        user_pb2.CreateUserRequest(email=known, name="José", password=PASSWORD))
    lookups: list[str] = []
    real = stack.store.get_user_by_email

    async def counting(email: str) -> Any:
        lookups.append(email)
        return await real(email)

    monkeypatch.setattr(stack.store, "get_user_by_email", counting)
    counts = []
    for email in (known, unknown):
        lookups.clear()
        err = await rpc_error(stack.users.Authenticate(
            user_pb2.AuthenticateRequest(email=email, password=PASSWORD + "x")))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        counts.append(len(lookups))
    assert counts[0] == counts[1], counts
