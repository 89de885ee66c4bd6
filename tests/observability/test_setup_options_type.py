"""server_interceptors/client_interceptors/attempt_interceptors refuse ``options`` that
are not a TelemetryOptions, naming the argument.

A dict of options (``{"tracing": False}``), ``True`` or the class itself failed with an
``AttributeError`` on one of their fields ("'dict' object has no attribute
'tracer_provider'"), or, for the class, was read as options with every flag on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from meshkit.errors import ConfigError
from meshkit.observability import (
    TelemetryOptions,
    attempt_interceptors,
    client_interceptors,
    server_interceptors,
)

_BUILDERS: list[Callable[[Any], Any]] = [
    lambda o: server_interceptors("svc", o),
    lambda o: client_interceptors(o),
    lambda o: attempt_interceptors(o),
]


@pytest.mark.parametrize("build", _BUILDERS, ids=["server", "client", "attempt"])
@pytest.mark.parametrize("options", [{"tracing": False}, True, TelemetryOptions, "off"])
def test_options_that_are_not_telemetry_options_are_refused(
        build: Callable[[Any], Any], options: Any) -> None:
    """A ConfigError naming ``options`` and quoting the value."""
    with pytest.raises(ConfigError, match="options must be a TelemetryOptions") as caught:
        build(options)
    assert repr(options) in str(caught.value)


@pytest.mark.parametrize("build", _BUILDERS, ids=["server", "client", "attempt"])
def test_telemetry_options_and_none_are_taken(build: Callable[[Any], Any]) -> None:
    """The options, or None for the defaults, build a tuple of interceptors."""
    assert isinstance(build(None), tuple)
    assert isinstance(build(TelemetryOptions(tracing=False)), tuple)
