"""``configure_tracing(set_global=...)`` takes ``True`` or ``False`` only, as meshkit's
other flags: before, ``set_global="false"`` (a string from a config file) was truthy and
installed the provider as the process's global one, for good (the API sets it once)."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace

from meshkit.errors import ConfigError
from meshkit.observability._tracing import configure_tracing


@pytest.mark.parametrize("flag", ["false", "0", 0, None])
def test_a_set_global_that_is_not_a_bool_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                    flag: Any) -> None:
    for k in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "MESHKIT_TRACE_FILE"):
        monkeypatch.delenv(k, raising=False)
    installed: list[Any] = []
    monkeypatch.setattr(trace, "set_tracer_provider", installed.append)
    with pytest.raises(ConfigError, match="set_global must be True or False"):
        configure_tracing("orderd", exporters=[], set_global=flag)
    assert installed == []
