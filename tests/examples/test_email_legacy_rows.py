"""Users stored before emails were NFC-normalised (their email kept as typed, only
lower-cased, so possibly decomposed) still log in and still own their address."""

from __future__ import annotations

import unicodedata

import grpc
import pytest

from examples.ecom import passwords
from examples.ecom.proto import user_pb2

from .conftest import Stack
from .test_users import PASSWORD, rpc_error

pytestmark = pytest.mark.timeout(30)

NFC = "jos\u00e9@example.com"  # é precomposed (U+00E9)
NFD = unicodedata.normalize("NFD", NFC)  # e + U+0301, as an older row may hold it


async def _legacy_user(stack: Stack) -> str:
    """Store a user the way CreateUser did before normalisation (``email.lower()`` of a
    decomposed email); return its id."""
    user = await stack.store.create_user(NFD, "José", passwords.hash_password(PASSWORD))
    return user.id


async def test_a_decomposed_legacy_email_still_logs_in(any_stack: Stack) -> None:
    """A user whose stored email is decomposed logs in typing it either way."""
    user_id = await _legacy_user(any_stack)
    for typed in (NFD, NFC, NFC.upper()):
        session = await any_stack.users.Authenticate(
            user_pb2.AuthenticateRequest(email=typed, password=PASSWORD))
        assert session.user_id == user_id
    err = await rpc_error(any_stack.users.Authenticate(
        user_pb2.AuthenticateRequest(email=NFC, password=PASSWORD + "x")))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_decomposed_legacy_email_is_still_taken(any_stack: Stack) -> None:
    """CreateUser, and UpdateUser of another user, to the composed spelling of a stored
    decomposed email are ALREADY_EXISTS; its owner may re-spell it (stored composed)."""
    user_id = await _legacy_user(any_stack)
    err = await rpc_error(any_stack.users.CreateUser(
        user_pb2.CreateUserRequest(email=NFC, name="Mallory", password=PASSWORD)))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    eve = await any_stack.users.CreateUser(
        user_pb2.CreateUserRequest(email="eve@example.com", name="Eve", password=PASSWORD))
    err = await rpc_error(any_stack.users.UpdateUser(
        user_pb2.UpdateUserRequest(user_id=eve.id, email=NFC)))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (await any_stack.store.count_rows()).users == 2
    own = await any_stack.users.UpdateUser(
        user_pb2.UpdateUserRequest(user_id=user_id, email=NFC))
    assert own.email == NFC
    session = await any_stack.users.Authenticate(
        user_pb2.AuthenticateRequest(email=NFD, password=PASSWORD))
    assert session.user_id == user_id
