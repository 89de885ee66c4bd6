"""``OTEL_TRACES_SAMPLER`` naming a sampler installed under the
``opentelemetry_traces_sampler`` entry point group (how the OpenTelemetry Python SDK's
configurator, i.e. ``opentelemetry-instrument``, takes a custom sampler: its factory
called with ``OTEL_TRACES_SAMPLER_ARG``): meshkit uses it too, instead of refusing to
start a process the SDK's own set-up runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from meshkit.errors import ConfigError
from meshkit.observability import configure_tracing
from meshkit.observability._tracing import tracing_wanted

_MODULE = '''
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
ARGS = []
def factory(arg):
    ARGS.append(arg)
    return TraceIdRatioBased(float(arg))
def broken(arg):
    raise RuntimeError("no sampler today")
def not_a_sampler(arg):
    return object()
'''


@pytest.fixture
def samplers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Installs a distribution (on ``sys.path``) whose entry points name three samplers;
    returns their module's name."""
    mod = f"meshkit_test_samplers_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{mod}.py").write_text(_MODULE)
    info = tmp_path / f"{mod}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {mod}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[opentelemetry_traces_sampler]\n"
        f"meshkit_test_ratio = {mod}:factory\n"
        f"meshkit_test_broken = {mod}:broken\n"
        f"meshkit_test_object = {mod}:not_a_sampler\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for k in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "MESHKIT_TRACE_FILE",
              "OTEL_TRACES_SAMPLER_ARG"):
        monkeypatch.delenv(k, raising=False)
    return mod


def test_installed_sampler_is_used_with_its_arg(samplers: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed sampler's factory builds the provider's sampler, given the raw
    ``OTEL_TRACES_SAMPLER_ARG``; the environment check passes it too."""
    import sys

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "meshkit_test_ratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert tracing_wanted() is False  # "none" asks nothing, and checks nothing
    provider = configure_tracing("orderd", exporters=[], set_global=False)
    try:
        assert isinstance(provider.sampler, TraceIdRatioBased)
        assert provider.sampler.rate == 0.25
        assert sys.modules[samplers].ARGS == ["0.25"]  # type: ignore[attr-defined]
    finally:
        provider.shutdown()


@pytest.mark.parametrize("name", ["meshkit_test_broken", "meshkit_test_object"])
def test_installed_sampler_that_fails_is_a_config_error(
        samplers: str, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """A factory that raises, or returns no SDK sampler, fails the set-up with a
    ConfigError naming the variable and quoting the sampler (not its error's text)."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", name)
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER") as err:
        configure_tracing("orderd", exporters=[], set_global=False)
    assert repr(name) in str(err.value)
    assert "no sampler today" not in str(err.value)


def test_unknown_sampler_is_still_refused(samplers: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A name neither built in nor installed stays a ConfigError quoting it."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "meshkit_test_missing")
    with pytest.raises(ConfigError, match="'meshkit_test_missing'"):
        configure_tracing("orderd", exporters=[], set_global=False)


def test_installed_sampler_does_not_skip_the_numeric_checks(
        samplers: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With an installed sampler the environment check still refuses a bad
    ``OTEL_BSP_*`` value (what ``dial()`` runs, through ``tracing_wanted`` while no SDK
    provider is installed), as with a built-in one."""
    from meshkit.observability._tracing import _tracing_env

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "meshkit_test_ratio")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "-5")
    monkeypatch.setenv("MESHKIT_TRACE_FILE", str(tmp_path / "spans.jsonl"))
    with pytest.raises(ConfigError, match=r"OTEL_BSP_MAX_QUEUE_SIZE.*'-5'"):
        _tracing_env()  # independent of a global provider another test installed
