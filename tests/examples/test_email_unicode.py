"""Emails are one account per address however its Unicode is composed (NFC vs NFD) and
stay within their documented 254 characters once stored (lower-cased)."""

from __future__ import annotations

import unicodedata

import grpc
import pytest

from examples.ecom.proto import user_pb2

from .conftest import Stack
from .test_users import PASSWORD, rpc_error

pytestmark = pytest.mark.timeout(30)

NFC = "jos\u00e9@example.com"  # é precomposed (U+00E9)
NFD = unicodedata.normalize("NFD", NFC)  # e + U+0301 COMBINING ACUTE ACCENT


async def test_composed_and_decomposed_email_are_one_account(stack: Stack) -> None:
    """An email typed with a decomposed accent is the same address as its composed form:
    a second registration gets ALREADY_EXISTS, and either form logs the user in."""
    assert NFC != NFD
    first = await stack.users.CreateUser(
        user_pb2.CreateUserRequest(email=NFC, name="José", password=PASSWORD))
    err = await rpc_error(stack.users.CreateUser(
        user_pb2.CreateUserRequest(email=NFD, name="Mallory", password=PASSWORD)))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (await stack.store.count_rows()).users == 1
    for email in (NFC, NFD, NFD.upper()):
        session = await stack.users.Authenticate(
            user_pb2.AuthenticateRequest(email=email, password=PASSWORD))
        assert session.user_id == first.id


async def test_update_to_decomposed_twin_of_taken_email_already_exists(stack: Stack) -> None:
    """UpdateUser to the decomposed spelling of another user's email is ALREADY_EXISTS."""
    await stack.users.CreateUser(
        user_pb2.CreateUserRequest(email=NFC, name="José", password=PASSWORD))
    eve = await stack.users.CreateUser(
        user_pb2.CreateUserRequest(email="eve@example.com", name="Eve", password=PASSWORD))
    err = await rpc_error(stack.users.UpdateUser(
        user_pb2.UpdateUserRequest(user_id=eve.id, email=NFD)))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_stored_email_never_longer_than_254(stack: Stack) -> None:
    """An email whose lower-case form is longer than 254 characters (U+0130 lower-cases
    to two code points) is INVALID_ARGUMENT, not stored longer than the proto allows."""
    email = "a@" + "\u0130" * 200 + ".com"  # 206 characters, 406 once lower-cased
    err = await rpc_error(stack.users.CreateUser(
        user_pb2.CreateUserRequest(email=email, name="Ada", password=PASSWORD)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "email: must be at most 254 characters" in (err.details() or "")
    assert (await stack.store.count_rows()).users == 0
