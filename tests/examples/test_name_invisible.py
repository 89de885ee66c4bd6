"""Display names and emails cannot carry bidirectional-override controls (which make
text display in an order other than it is stored: "Trojan Source", CVE-2021-42574), and
a name of only invisible characters is blank."""

from __future__ import annotations

import grpc
import pytest

from examples.ecom.proto import user_pb2
from examples.ecom.storage import RowCounts

from .conftest import Stack
from .test_users import PASSWORD, rpc_error

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(("email", "name", "expected"), [
    ("eve@example.com", "Eve \u202egnp.exe", "name: must not contain bidirectional controls"),
    ("eve@example.com", "\u2067Eve", "name: must not contain bidirectional controls"),
    ("eve@example.com", "\u200b\u200b", "name: must not be blank"),
    ("eve@example.com", " \u2060\ufeff ", "name: must not be blank"),
    ("eve\u202e@example.com", "Eve", "email: must be an email address"),
])
async def test_bidi_controls_and_invisible_names_refused(
        stack: Stack, email: str, name: str, expected: str) -> None:
    """CreateUser refuses a name or email holding a bidi embedding/override/isolate
    control, and a name made only of whitespace and zero-width characters, with
    INVALID_ARGUMENT naming the field; nothing is stored."""
    err = await rpc_error(stack.users.CreateUser(
        user_pb2.CreateUserRequest(email=email, name=name, password=PASSWORD)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (err.details() or "")
    assert await stack.store.count_rows() == RowCounts(0, 0, 0)


async def test_joiners_and_right_to_left_names_still_accepted(stack: Stack) -> None:
    """Names that need zero-width joiners (emoji sequences, Persian) or are written
    right to left are accepted unchanged."""
    names = ("Ada \U0001f469\u200d\U0001f4bb",  # woman + ZWJ + laptop
             "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian, with ZWNJ
             "\u05e9\u05dc\u05d5\u05dd")  # Hebrew
    for n, name in enumerate(names):
        user = await stack.users.CreateUser(user_pb2.CreateUserRequest(
            email=f"u{n}@example.com", name=name, password=PASSWORD))
        assert user.name == name
