"""``OTEL_SDK_DISABLED`` set to something other than ``true``/``false`` (``1``, ``yes``):
read as false, as the specification requires, with a warning naming the variable and
the value (the specification's SHOULD: "a warning SHOULD be logged to inform users
about the fallback to false"), once per value."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from meshkit.observability import _tracing
from meshkit.observability._tracing import sdk_disabled


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_tracing, "_warned_disabled", set())


@pytest.mark.parametrize("value", ["1", "yes", "on"])
def test_other_value_is_false_with_one_warning(monkeypatch: pytest.MonkeyPatch,
                                               value: str) -> None:
    """Not ``true``: false, and one warning quoting it however often it is read."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", value)
    with capture_logs() as logs:
        assert sdk_disabled() is False
        assert sdk_disabled() is False
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1, logs
    assert warnings[0].get("variable") == "OTEL_SDK_DISABLED"
    assert warnings[0].get("value") == value


@pytest.mark.parametrize(("value", "expected"), [("true", True), (" TRUE ", True),
                                                 ("false", False), ("False", False),
                                                 ("", False)])
def test_true_false_and_empty_are_quiet(monkeypatch: pytest.MonkeyPatch, value: str,
                                        expected: bool) -> None:
    """``true`` (any case), ``false`` and empty are read without a warning."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", value)
    with capture_logs() as logs:
        assert sdk_disabled() is expected
    assert not logs
