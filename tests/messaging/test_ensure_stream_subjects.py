"""``ensure_stream``'s ``subjects`` is a collection of subjects: one string given for it
must not be taken character by character (a stream capturing ``o``, ``r``, ``d``...)."""

from __future__ import annotations

import contextlib
import uuid

import nats.js.errors
import pytest

from meshkit.errors import ConfigError
from meshkit.messaging import ensure_stream
from tests.messaging.conftest import Bus

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("subjects", ["ship", "orders", "orders.>", b"orders", ["orders", 7]])
async def test_subjects_that_are_not_a_collection_of_strings_are_refused(
        bus: Bus, subjects: object) -> None:
    """``ensure_stream(js, name, "ship")`` (or bytes, or a list holding a non-string)
    is a ConfigError quoting the value, and no stream is made."""
    name = f"S{uuid.uuid4().hex[:10]}"
    try:
        with pytest.raises(ConfigError, match="subjects"):
            await ensure_stream(bus.js, name, subjects)  # type: ignore[arg-type]
        with pytest.raises(nats.js.errors.NotFoundError):
            await bus.js.stream_info(name)
    finally:  # before the fix "ship" made a stream capturing s, h, i and p
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await bus.js.delete_stream(name)
