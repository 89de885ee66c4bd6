"""``OTEL_PROPAGATORS`` naming a propagator that is not installed (``b3``, ``b3multi``
without opentelemetry-propagator-b3, a misspelling) or in another case: meshkit warns and
ignores that entry, as the OpenTelemetry environment variable specification requires of
an enum value it does not recognise, instead of failing every import of meshkit's
observability (the OpenTelemetry API raises ``ValueError`` while importing
``opentelemetry.propagate``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).parents[2]

_PROBE = """
import json, logging, sys
records = []
class H(logging.Handler):
    def emit(self, r): records.append(r.getMessage())
logging.getLogger().addHandler(H())
from structlog.testing import capture_logs
with capture_logs() as logs:
    import meshkit.observability._tracing as t
from opentelemetry import propagate
names = [type(p).__name__ for p in getattr(propagate.get_global_textmap(), "_propagators")]
print(json.dumps({"names": names, "fast": t.fast_propagation(),
                  "logs": [dict(e, event=str(e["event"])) for e in logs],
                  "env": __import__("os").environ.get("OTEL_PROPAGATORS")}, default=str))
"""


def _probe(value: str, path: Path | None = None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_PROPAGATORS"] = value
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=_ROOT, env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr[-2000:]
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("value", ["b3", "b3multi", "tracecontext,b3,baggage"])
def test_unloadable_propagator_is_warned_about_and_ignored(value: str) -> None:
    """A propagator that is not installed is dropped with one warning naming it and the
    variable; the process keeps the others (the W3C default when none is left)."""
    got = _probe(value)
    assert got["names"] == ["TraceContextTextMapPropagator", "W3CBaggagePropagator"]
    assert got["fast"] is True
    warnings = [e for e in got["logs"] if e.get("log_level") == "warning"]  # type: ignore[union-attr]
    assert len(warnings) == 1, got["logs"]
    text = json.dumps(warnings[0])
    assert "OTEL_PROPAGATORS" in text and "b3" in text
    assert got["env"] == value  # the process's environment is left as it was


def test_propagator_names_case_and_duplicates() -> None:
    """Propagator names are read case-insensitively and a repeated one is used once."""
    got = _probe(" TraceContext , baggage,tracecontext ")
    assert got["names"] == ["TraceContextTextMapPropagator", "W3CBaggagePropagator"]
    assert not [e for e in got["logs"] if e.get("log_level") == "warning"]  # type: ignore[union-attr]


def test_none_still_means_no_propagator() -> None:
    """``none`` keeps meaning no propagator at all, without a warning."""
    got = _probe("none")
    assert got["names"] == []
    assert not [e for e in got["logs"] if e.get("log_level") == "warning"]  # type: ignore[union-attr]


def test_installed_propagator_with_capitals_is_kept(tmp_path: Path) -> None:
    """An installed propagator whose entry point name has capitals is loaded by that
    name, not lower-cased away."""
    (tmp_path / "meshkit_test_prop.py").write_text(
        "from opentelemetry.trace.propagation.tracecontext import "
        "TraceContextTextMapPropagator\n"
        "class MeshkitTestProp(TraceContextTextMapPropagator):\n    pass\n")
    info = tmp_path / "meshkit_test_prop-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: meshkit-test-prop\n"
                                   "Version: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[opentelemetry_propagator]\nMeshkitProp = meshkit_test_prop:MeshkitTestProp\n")
    got = _probe("MeshkitProp,baggage", tmp_path)
    assert got["names"] == ["MeshkitTestProp", "W3CBaggagePropagator"]
    assert not [e for e in got["logs"] if e.get("log_level") == "warning"]  # type: ignore[union-attr]



def test_variable_is_restored_when_the_warning_fails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A set-up that fails in its warning (the application's structlog processor raising)
    leaves ``OTEL_PROPAGATORS`` as it was (before: removed from the environment)."""
    from meshkit.observability import _tracing

    class Broken:
        def warning(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("a broken processor")

    monkeypatch.setenv("OTEL_PROPAGATORS", "b3")
    monkeypatch.delitem(sys.modules, "opentelemetry.propagate")
    monkeypatch.setattr(_tracing, "_log", Broken())
    guard = _tracing._PropagatorsEnv()
    with pytest.raises(RuntimeError, match="broken processor"):
        guard.__enter__()
    assert os.environ.get("OTEL_PROPAGATORS") == "b3"
