"""``meshkit call`` with a request that is not a JSON object names the message type
without a wrong article: it said "request must be a JSON object (a
ecom.v1.CreateUserRequest)"."""

from __future__ import annotations

import pytest

from examples.ecom.proto import user_pb2
from meshkit._cli._call import CallError, _load_json


def test_a_non_object_request_names_its_type_plainly() -> None:
    descriptor = user_pb2.CreateUserRequest.DESCRIPTOR
    with pytest.raises(CallError) as info:
        _load_json("[1]", descriptor)
    text = str(info.value)
    assert "a ecom" not in text, text
    assert "ecom.v1.CreateUserRequest" in text and "got list" in text, text
