"""README (Observability, Traces): a span-limit variable the SDK refuses is a
``ConfigError`` naming it, from ``dial()`` as from ``serve()``, and with
``OTEL_SDK_DISABLED=true`` (or no tracing variable at all) no SDK is set up and "the SDK
is then not needed". But importing ``opentelemetry.sdk.trace`` reads
``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`` itself and raises a bare ``ValueError`` for ``x``,
``-1`` or an empty value, so with the SDK installed ``import meshkit.server`` and
``meshkit.channel`` failed with the SDK's traceback, whatever ``OTEL_SDK_DISABLED`` said
(the README's Greeter: ``ValueError: OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT must be a
non-negative integer but got -1``). Each case runs in a fresh interpreter: what is
measured happens at import."""

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

DIAL = """
import asyncio, sys
import meshkit

async def main() -> None:
    try:
        async with meshkit.dial("svc", registry=sys.argv[1],
                                options=meshkit.DialOptions(insecure=True)):
            pass
    except meshkit.ConfigError as exc:
        print("ConfigError:", exc)

asyncio.run(main())
"""


def _python(code: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MESHKIT_"))}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env={**base, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.mark.parametrize(
    ("value", "extra"),
    [
        pytest.param("-1", {"OTEL_SDK_DISABLED": "true"}, id="negative-sdk-disabled"),
        pytest.param("x", {}, id="word-no-tracing"),
        pytest.param("", {}, id="empty-no-tracing"),
    ],
)
def test_meshkit_imports_whatever_the_variable_holds(value: str, extra: dict[str, str]) -> None:
    done = _python(IMPORTS, {"OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": value, **extra})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == repr(value)  # the environment is as it was


def test_configured_tracing_still_refuses_it_by_name(tmp_path: Path) -> None:
    done = _python(
        DIAL,
        {"OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "x", "MESHKIT_TRACE_FILE": str(tmp_path / "t.jsonl")},
        f"local://{tmp_path / 'registry'}",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ConfigError: OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT"), done.stdout
