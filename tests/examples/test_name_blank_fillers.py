"""A display name made only of characters that draw nothing but are letters or marks to
Unicode (Hangul fillers, the blank braille pattern, variation selectors, the combining
grapheme joiner) is blank, as one of whitespace and zero-width characters is."""

from __future__ import annotations

import grpc
import pytest

from examples.ecom.proto import user_pb2

from .conftest import Stack
from .test_users import PASSWORD, rpc_error

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("name", [
    "\u3164",  # HANGUL FILLER (Lo)
    "\u115f\u1160",  # HANGUL CHOSEONG/JUNGSEONG FILLER (Lo)
    "\uffa0 \uffa0",  # HALFWIDTH HANGUL FILLER (Lo)
    "\u2800\u2800",  # BRAILLE PATTERN BLANK (So)
    "\u034f\ufe0f\U000e0100",  # COMBINING GRAPHEME JOINER, VARIATION SELECTORS (Mn)
    "\u200b\u3164\u17b4",  # mixed with a zero-width space and a Khmer inherent vowel
])
async def test_names_of_invisible_letters_are_blank(stack: Stack, name: str) -> None:
    """CreateUser and UpdateUser refuse such a name: INVALID_ARGUMENT 'must not be
    blank'."""
    err = await rpc_error(stack.users.CreateUser(
        user_pb2.CreateUserRequest(email="eve@example.com", name=name, password=PASSWORD)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name: must not be blank" in (err.details() or "")
    user = await stack.users.CreateUser(
        user_pb2.CreateUserRequest(email="eve@example.com", name="Eve", password=PASSWORD))
    err = await rpc_error(stack.users.UpdateUser(
        user_pb2.UpdateUserRequest(user_id=user.id, name=name)))
    assert "name: must not be blank" in (err.details() or "")


async def test_names_using_them_with_visible_text_accepted(stack: Stack) -> None:
    """Visible text with a variation selector (an emoji's presentation) or Hangul is
    accepted unchanged."""
    for n, name in enumerate(("Ada \u2764\ufe0f", "\ud55c\uad6d", "\u2800Ada")):
        user = await stack.users.CreateUser(user_pb2.CreateUserRequest(
            email=f"u{n}@example.com", name=name, password=PASSWORD))
        assert user.name == name
