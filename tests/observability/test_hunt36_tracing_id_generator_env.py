"""``OTEL_PYTHON_ID_GENERATOR`` (the OpenTelemetry Python SDK's configurator's variable,
``opentelemetry-instrument``'s too: the name of an ``opentelemetry_id_generator`` entry
point, ``random`` by default; AWS X-Ray's ``xray`` makes time-stamped trace ids) is
honoured by ``configure_tracing``, so by ``serve()`` and a dialing process: before, it
was ignored without a word and every trace got random ids; an unknown name now fails as
an unknown sampler does (at ``dial()`` too), the variable named."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanKind

from meshkit.errors import ConfigError
from meshkit.observability import configure_tracing
from meshkit.observability._tracing import SpanStarter, tracing_wanted

_MODULE = '''
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

class Stamped(IdGenerator):
    """Trace ids starting with 0x5f5e1000 (a time stamp, as X-Ray's)."""

    def generate_span_id(self):
        return RandomIdGenerator().generate_span_id()

    def generate_trace_id(self):
        return (0x5F5E1000 << 96) | RandomIdGenerator().generate_trace_id() >> 32

class NotOne:
    pass
'''


@pytest.fixture(autouse=True)
def generators(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution on ``sys.path`` whose entry points name two id generators."""
    mod = f"meshkit_test_ids_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{mod}.py").write_text(_MODULE)
    info = tmp_path / f"{mod}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {mod}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[opentelemetry_id_generator]\n"
        f"meshkit_test_stamped = {mod}:Stamped\n"
        f"meshkit_test_not_one = {mod}:NotOne\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for k in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "MESHKIT_TRACE_FILE",
              "OTEL_TRACES_SAMPLER", "OTEL_SDK_DISABLED", "OTEL_PYTHON_ID_GENERATOR"):
        monkeypatch.delenv(k, raising=False)


@pytest.mark.parametrize("name", ["meshkit_test_stamped", " meshkit_test_stamped "])
def test_the_named_id_generator_makes_the_ids(monkeypatch: pytest.MonkeyPatch,
                                              name: str) -> None:
    monkeypatch.setenv("OTEL_PYTHON_ID_GENERATOR", name)
    provider = configure_tracing("orderd", exporters=[], set_global=False)
    try:
        assert type(provider.id_generator).__name__ == "Stamped"
        for kind in (SpanKind.SERVER, SpanKind.CLIENT):
            span = SpanStarter(provider, kind).start("p.S/M", None, None, {})
            assert span is not None
            assert span.get_span_context().trace_id >> 96 == 0x5F5E1000
            span.end()
    finally:
        provider.shutdown()


@pytest.mark.parametrize("name", ["", "random", " Random "])
def test_random_or_unset_is_the_sdks_random_generator(monkeypatch: pytest.MonkeyPatch,
                                                      name: str) -> None:
    monkeypatch.setenv("OTEL_PYTHON_ID_GENERATOR", name)
    provider = configure_tracing("orderd", exporters=[], set_global=False)
    assert type(provider.id_generator) is RandomIdGenerator
    provider.shutdown()


def test_an_unknown_generator_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PYTHON_ID_GENERATOR", "xray")  # not installed here
    with pytest.raises(ConfigError, match=r"OTEL_PYTHON_ID_GENERATOR.*'xray'"):
        configure_tracing("orderd", exporters=[], set_global=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")  # dial() checks it too
    with pytest.raises(ConfigError, match="OTEL_PYTHON_ID_GENERATOR"):
        tracing_wanted()


def test_an_entry_point_that_is_no_id_generator_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PYTHON_ID_GENERATOR", "meshkit_test_not_one")
    with pytest.raises(ConfigError, match=r"OTEL_PYTHON_ID_GENERATOR.*no IdGenerator"):
        configure_tracing("orderd", exporters=[], set_global=False)
