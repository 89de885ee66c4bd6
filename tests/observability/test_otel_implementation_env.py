"""``implementation="otel"`` (opentelemetry-instrumentation-grpc's interceptors for the
spans) traces to the global provider like meshkit's own interceptors, so it honours the
``OTEL_*`` / ``MESHKIT_TRACE_FILE`` set-up as they do: a server's interceptors name the
service, a process that only dials sets tracing up too (before, nothing read the
environment: the spans went to the API's no-op provider)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).parents[2]

_PROBE = """
import sys
from opentelemetry import trace
from meshkit.observability import TelemetryOptions, attempt_interceptors, server_interceptors
if sys.argv[1] == "server":
    server_interceptors("orderd", implementation="otel")
elif sys.argv[1] == "client":
    attempt_interceptors(implementation="otel")
else:
    attempt_interceptors(TelemetryOptions(tracing=False), implementation="otel")
p = trace.get_tracer_provider()
print(type(p).__name__, getattr(getattr(p, "resource", None), "attributes", {}).get(
    "service.name"))
"""


def _run(side: str, tmp_path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["MESHKIT_TRACE_FILE"] = str(tmp_path / "spans.jsonl")
    out = subprocess.run([sys.executable, "-c", _PROBE, side], cwd=_ROOT, env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(("side", "expected"), [
    ("server", "TracerProvider orderd"),
    ("client", "TracerProvider unknown_service"),
    ("off", "ProxyTracerProvider None"),
])
def test_otel_interceptors_set_tracing_up_from_the_env(tmp_path: Path, side: str,
                                                       expected: str) -> None:
    """Building the otel interceptors of a side with tracing on installs the provider
    the environment asks for (named by the server's service); tracing off leaves the
    global provider alone."""
    got = _run(side, tmp_path)
    assert got.startswith(expected), got
