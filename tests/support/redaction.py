"""Checks shared by the redaction tests: a value redacted alike in every kind of string
field, and an adversarial value redacted in linear time (CPU seconds, so that a loaded
box's waiting does not count)."""

from __future__ import annotations

import time
from typing import Any

from meshkit._log import redact_text
from meshkit.observability import redact_secrets

N = 100_000
"""The length (characters) of an adversarial string: 100 KB."""

CPU_LIMIT_S = 1.0
"""CPU seconds an adversarial string may take: a quadratic shape of length :data:`N`
takes seconds."""


def assert_redacted_in_fields(value: str, shown: str, *, in_list: bool = False) -> None:
    """``redact_secrets`` turns ``value`` into ``shown`` in the event, a string field and a
    bytes field (``shown`` encoded), and when ``in_list`` in a list's item as well."""
    event: dict[str, Any] = {"event": value, "v": value, "b": value.encode()}
    if in_list:
        event["l"] = [value]
    out = redact_secrets(None, "info", event)
    assert out["event"] == shown
    assert out["v"] == shown
    assert out["b"] == shown.encode()
    if in_list:
        assert out["l"] == [shown]


def assert_linear(*values: str, text: bool = False, fields: bool = True) -> None:
    """Redacting every one of ``values`` takes under :data:`CPU_LIMIT_S` CPU seconds in
    all (``time.process_time``): with ``redact_text`` when ``text``, and with
    ``redact_secrets`` as a string and a bytes field when ``fields``."""
    start = time.process_time()
    for value in values:
        if text:
            redact_text(value)
        if fields:
            redact_secrets(None, "info", {"event": "e", "v": value, "b": value.encode()})
    assert time.process_time() - start < CPU_LIMIT_S
