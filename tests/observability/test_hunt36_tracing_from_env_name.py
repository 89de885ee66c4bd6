"""``tracing_from_env`` checks its ``service_name`` as ``configure_tracing`` does, also
when a provider is installed already: before, with the provider it had set up for a
process that named no service, ``tracing_from_env("")`` (or ``5``) renamed that provider's
resource to ``service.name=""`` (``"5"``) without a word, every span exported from then
on under no service, while the same call without a provider raised ``ConfigError``."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from meshkit.errors import ConfigError
from meshkit.observability import _tracing


@pytest.mark.parametrize("bad", ["", 5, b"orderd"])
def test_a_bad_service_name_is_refused_not_given_to_the_provider(
        monkeypatch: pytest.MonkeyPatch, bad: object) -> None:
    provider = TracerProvider(resource=Resource.create({}))  # named by no one yet
    before = provider.resource.attributes["service.name"]
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    monkeypatch.setattr(_tracing, "_unnamed", [provider])
    with pytest.raises(ConfigError, match="service_name must be a non-empty string"):
        _tracing.tracing_from_env(bad)  # type: ignore[arg-type]
    assert provider.resource.attributes["service.name"] == before
    assert _tracing._unnamed == [provider]  # a later good name still names it
    _tracing.tracing_from_env("orderd")
    assert provider.resource.attributes["service.name"] == "orderd"
    assert _tracing._unnamed == []
