"""Review of 8d18990f: ``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT=unset`` still failed the import.

8d18990f holds ``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`` out of the environment while the
OpenTelemetry SDK's ``opentelemetry.sdk.trace`` is imported when the SDK would refuse its
value there (a bare ``ValueError`` at import). It took the word ``unset`` for a value the
SDK accepts, but the SDK's "no limit" is the empty value only (``_ENV_VALUE_UNSET = ""``):
``unset`` is ``int("unset")``, a ``ValueError``, so ``import meshkit.server`` still died
with the SDK's traceback for it (``unset`` and ``UNSET`` alike). Each case runs in a fresh
interpreter: what is measured happens at import.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]

IMPORTS = """
import os
import meshkit.channel, meshkit.server
from meshkit.observability import _tracing
assert _tracing.sdk_available(), "the SDK is installed: its import must have worked"
print(repr(os.environ["OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT"]))
"""


@pytest.mark.parametrize("value", ["unset", " UNSET ", "-1", " 7 ", " "])
def test_meshkit_imports_with_any_span_attribute_limit(value: str) -> None:
    pytest.importorskip("opentelemetry.sdk.trace", reason="the SDK's import is what fails")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MESHKIT_"))}
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS],
        cwd=REPO,
        env={**base, "PYTHONPATH": str(REPO), "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": value},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == repr(value)  # the environment is as it was
