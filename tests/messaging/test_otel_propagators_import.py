"""``meshkit.messaging`` loads with ``OTEL_PROPAGATORS`` naming a propagator that is not
installed (``b3`` without opentelemetry-propagator-b3), as ``meshkit.observability`` does
(5b63e5a): its modules imported ``opentelemetry.propagate`` first, whose import raises
``ValueError`` then, so the publisher and consumer could not even be imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("module", ["meshkit.messaging._telemetry",
                                    "meshkit.messaging._publisher"])
def test_messaging_imports_with_a_propagator_that_is_not_installed(module: str) -> None:
    """Importing each messaging module that propagates trace context works."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_PROPAGATORS"] = "b3"
    done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=_ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
