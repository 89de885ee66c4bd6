"""A password is the same password however its Unicode is composed: a user can log in
from a keyboard or OS that sends the other normalisation form (NIST SP 800-63B 5.1.1.2)."""

from __future__ import annotations

import unicodedata

import grpc
import pytest

from examples.ecom import passwords
from examples.ecom.proto import user_pb2

from .conftest import Stack
from .test_users import rpc_error

pytestmark = pytest.mark.timeout(30)

COMPOSED = "p\u00e4ssw\u00f6rd-\u00c5ngstr\u00f6m"  # ä, ö, Å precomposed
DECOMPOSED = unicodedata.normalize("NFD", COMPOSED)


async def test_login_with_the_other_normalisation_form(stack: Stack) -> None:
    """A password set with precomposed letters logs in when typed decomposed and the
    other way round; a different password still fails."""
    assert COMPOSED != DECOMPOSED
    for n, (set_as, typed) in enumerate(((COMPOSED, DECOMPOSED), (DECOMPOSED, COMPOSED))):
        email = f"u{n}@example.com"
        user = await stack.users.CreateUser(
            user_pb2.CreateUserRequest(email=email, name="U", password=set_as))
        session = await stack.users.Authenticate(
            user_pb2.AuthenticateRequest(email=email, password=typed))
        assert session.user_id == user.id
        err = await rpc_error(stack.users.Authenticate(
            user_pb2.AuthenticateRequest(email=email, password=typed + "x")))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_hash_made_from_the_raw_password_still_verifies() -> None:
    """A hash stored before passwords were normalised (of the raw, decomposed text)
    still verifies with the password typed as it was then."""
    salt = b"0123456789abcdef"
    digest = passwords._kdf(DECOMPOSED, salt, passwords.N, passwords.R, passwords.P, 32)
    legacy = (f"scrypt${passwords.N}${passwords.R}${passwords.P}$"
              f"{passwords._b64(salt)}${passwords._b64(digest)}")
    assert passwords.verify_password(DECOMPOSED, legacy)
    assert not passwords.verify_password("something else", legacy)
