"""``OTEL_PROPAGATORS`` holding only blanks (``" "``: a template's empty value with a
space, a stray blank in an ``.env`` file) made every import of meshkit's observability
fail (so ``dial()``, ``serve()`` and ``meshkit call``) with the OpenTelemetry API's bare
``ValueError: Propagator  not found``: meshkit read a blank value as unset for itself but
left it to ``opentelemetry.propagate``, which looked the empty name up. A blank value is
now unset there too (the OpenTelemetry specification: an empty value is unset), as
``",,"`` already was: the W3C default, the variable left as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).parents[1]

_PROBE = """
import json, os
import meshkit.observability._tracing as t
from opentelemetry import propagate
names = [type(p).__name__ for p in getattr(propagate.get_global_textmap(), "_propagators")]
print(json.dumps({"names": names, "fast": t.fast_propagation(),
                  "env": os.environ.get("OTEL_PROPAGATORS")}))
"""


@pytest.mark.parametrize("value", [" ", "\t", "  \n"], ids=["space", "tab", "newline"])
def test_a_blank_otel_propagators_is_unset(value: str) -> None:
    """The import succeeds with W3C trace context and baggage; the variable is kept."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_PROPAGATORS"] = value
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=_ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"names": ["TraceContextTextMapPropagator", "W3CBaggagePropagator"],
                   "fast": True, "env": value}
