"""configure_logging() and BufferedLineWriter refuse arguments of the wrong type, naming
them, and take the standard library's level numbers.

``configure_logging(logging.DEBUG)`` (what ``logging.basicConfig(level=...)`` takes) died
with ``AttributeError: 'int' object has no attribute 'strip'``; ``json="false"`` (a value
read from a config file) was truthy and gave JSON lines; a flush interval given as a
string raised a bare ``TypeError`` and ``True`` was taken as one second.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from meshkit.errors import ConfigError
from meshkit.observability import BufferedLineWriter, configure_logging


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """Each test leaves logging as it found it: structlog's configuration, the access
    logger configure_logging() builds (at ``CRITICAL`` it would drop a later test's access
    lines until it flushes, which it never does with nothing captured) and the standard
    library's last resort it bridges. (The tests run in the suite's own process.)"""
    from meshkit.observability._logging import _AccessLog

    saved = structlog.get_config()
    access = (_AccessLog.logger, _AccessLog.built)
    last_resort = logging.lastResort
    yield
    structlog.configure(**saved)
    _AccessLog.logger, _AccessLog.built = access
    logging.lastResort = last_resort


@pytest.mark.parametrize(("level", "name"), [
    (logging.DEBUG, "debug"), (logging.INFO, "info"), (logging.WARNING, "warning"),
    (logging.ERROR, "error"), (logging.CRITICAL, "critical")])
def test_a_standard_library_level_number_is_taken(level: int, name: str) -> None:
    """``configure_logging(logging.DEBUG)`` sets the level as ``"DEBUG"`` does."""
    configure_logging(level, json=True)
    wrapper: Any = structlog.get_config()["wrapper_class"]
    assert wrapper.__name__.lower().endswith(name), wrapper.__name__


@pytest.mark.parametrize("kwargs", [
    {"level": 15}, {"level": True}, {"level": 2.5}, {"level": b"INFO"},
    {"json": "false"}, {"json": "true"}, {"json": 1},
    {"access_log_flush_interval_s": "0.5"}, {"access_log_flush_interval_s": True},
])
def test_configure_logging_refuses_a_wrong_type(kwargs: dict[str, Any]) -> None:
    """A ConfigError naming the argument and quoting the value; nothing changed."""
    before = structlog.get_config()["processors"]
    [(name, value)] = kwargs.items()
    with pytest.raises(ConfigError) as caught:
        configure_logging(**kwargs)
    assert name in str(caught.value) and repr(value) in str(caught.value)
    assert structlog.get_config()["processors"] is before


@pytest.mark.parametrize("kwargs", [
    {"flush_interval_s": "0.5"}, {"flush_interval_s": True},
    {"max_buffer_bytes": "64k"}, {"max_buffer_bytes": 1.5}, {"max_buffer_bytes": True},
])
def test_buffered_line_writer_refuses_a_wrong_type(kwargs: dict[str, Any]) -> None:
    """A ConfigError naming the argument and quoting the value."""
    [(name, value)] = kwargs.items()
    with pytest.raises(ConfigError) as caught:
        BufferedLineWriter(**kwargs)
    assert name in str(caught.value) and repr(value) in str(caught.value)
