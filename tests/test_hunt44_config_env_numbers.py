"""MESHKIT_* numeric environment variables take a number as a person writes one:
digits, an optional fraction and exponent, surrounding blanks ignored; Python-only
spellings that float() takes (``1_0``, non-ASCII digits, ``infinity``) are refused with a
ConfigError that names the variable and quotes the value."""

from __future__ import annotations

import pytest
import structlog

from meshkit._env import decimal_number
from meshkit.errors import ConfigError
from meshkit.observability import configure_logging
from meshkit.observability._logging import _AccessLog


@pytest.mark.parametrize("text", ["1_0", "0_.5", "\uff11", "\u0661", "infinity", "nan",
                                  "1e", ".", "+", "0x10", "1 0", ""],
                         ids=["underscore", "underscore-fraction", "fullwidth-digit",
                              "arabic-digit", "infinity", "nan", "bare-exponent", "dot",
                              "sign", "hex", "inner-blank", "empty"])
def test_decimal_number_refuses_what_is_no_plain_number(text: str) -> None:
    """What float() takes beyond a plain decimal number is no number here (None)."""
    assert decimal_number(text) is None


@pytest.mark.parametrize(("text", "value"), [
    ("10", 10.0), (" 0.5\n", 0.5), (".25", 0.25), ("2.", 2.0), ("1e1", 10.0),
    ("+3", 3.0), ("-1", -1.0), ("1E-1", 0.1)],
    ids=["int", "padded", "leading-dot", "trailing-dot", "exponent", "plus", "minus",
         "upper-exponent"])
def test_decimal_number_reads_plain_numbers(text: str, value: float) -> None:
    """Plain decimal numbers read as float() reads them, blanks around them ignored."""
    assert decimal_number(text) == value


@pytest.mark.parametrize("value", ["1_0", "0_1", "\uff11"],
                         ids=["underscore", "underscore-2", "fullwidth-digit"])
def test_access_log_flush_refuses_python_only_spellings(
        monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """``MESHKIT_ACCESS_LOG_FLUSH_S=1_0`` is refused, the variable named and the value
    quoted; it used to be read as 10 seconds (Python's float() takes underscores)."""
    monkeypatch.setattr(_AccessLog, "logger", _AccessLog.logger)
    for k in ("MESHKIT_LOG_LEVEL", "MESHKIT_LOG_FORMAT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MESHKIT_ACCESS_LOG_FLUSH_S", value)
    before = structlog.get_config()
    with pytest.raises(ConfigError) as info:
        configure_logging(json=True)
    assert "MESHKIT_ACCESS_LOG_FLUSH_S" in str(info.value)
    assert repr(value) in str(info.value)
    assert structlog.get_config() == before
