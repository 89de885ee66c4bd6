"""Authenticate takes the other Unicode spelling of a valid email or password at its
longest: the length limits are CreateUser's on the stored forms, and a decomposed
spelling of them is longer."""

from __future__ import annotations

import unicodedata

import grpc
import pytest

from examples.ecom import passwords, validation
from examples.ecom.proto import user_pb2

from .conftest import Stack
from .test_users import PASSWORD, rpc_error

pytestmark = pytest.mark.timeout(30)

#: 254 characters once composed (the most an email may have), 254 + 246 decomposed
EMAIL = "jos\u00e9@" + "\u00e9" * 245 + ".com"
#: 1,024 characters once composed (the most a password may have), twice that decomposed
PASSWORD_COMPOSED = "\u00e4" * passwords.MAX_LENGTH


async def test_decomposed_spellings_of_the_longest_values_log_in(stack: Stack) -> None:
    """A user with a 254-character email and a 1,024-character password, both with
    precomposed letters, logs in typing both decomposed (longer than the limits)."""
    assert len(EMAIL) == validation.MAX_EMAIL
    user = await stack.users.CreateUser(user_pb2.CreateUserRequest(
        email=EMAIL, name="José", password=PASSWORD_COMPOSED))
    email_nfd = unicodedata.normalize("NFD", EMAIL)
    password_nfd = unicodedata.normalize("NFD", PASSWORD_COMPOSED)
    session = await stack.users.Authenticate(
        user_pb2.AuthenticateRequest(email=email_nfd, password=password_nfd))
    assert session.user_id == user.id


async def test_a_value_no_spelling_of_a_valid_one_can_be_is_invalid(stack: Stack) -> None:
    """An email or password longer than any spelling of a valid one could be is still
    INVALID_ARGUMENT, checked before any lookup or hashing."""
    for email, password, field in (
        ("a" * (4 * validation.MAX_EMAIL) + "@x.io", PASSWORD, "email"),
        ("ada@example.com", "p" * (4 * passwords.MAX_LENGTH + 1), "password"),
    ):
        err = await rpc_error(stack.users.Authenticate(
            user_pb2.AuthenticateRequest(email=email, password=password)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"{field}: must be at most" in (err.details() or "")
