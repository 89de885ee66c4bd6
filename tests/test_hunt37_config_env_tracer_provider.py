"""``OTEL_PYTHON_TRACER_PROVIDER`` (the tracer provider the OpenTelemetry API loads by
entry-point name) set blank or to a name nothing installs:

* blank (``" "``, a template's empty value) is unset, as meshkit reads its other
  variables: a server starts and calls are traced as without it. Before, the API looked
  the name ``" "`` up: ``MeshServer.start()`` failed with ``RuntimeError: coroutine raised
  StopIteration`` and a client logged "telemetry span start failed" (with the API's
  traceback) on every call;
* a name no installed package provides fails ``start()`` and ``dial()`` with a
  ConfigError naming the variable and quoting the value, not that RuntimeError, and not a
  warning per call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).parents[1]

_PROBE = """
import asyncio, json, sys, tempfile
sys.path.insert(0, sys.argv[1])
import meshkit
from structlog.testing import capture_logs
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.errors import ConfigError
from tests.cli.test_ops_commands import Greeter, protos, services

async def main():
    out = {}
    reg = LocalRegistry(LocalOptions(path=tempfile.mkdtemp(), ttl_s=15.0))
    server = meshkit.MeshServer("tp", [(services.add_GreeterServicer_to_server, Greeter())],
                                registry=reg, options=meshkit.ServeOptions(
                                    insecure=True, drain_delay_s=0, grace_s=1))
    try:
        await server.start()
        out["start"] = "ok"
    except BaseException as exc:
        out["start"] = f"{type(exc).__name__}: {exc}"
        server = None
    with capture_logs() as logs:
        try:
            async with meshkit.dial("tp", registry=reg,
                                    options=meshkit.DialOptions(insecure=True)) as ch:
                stub = services.GreeterStub(ch)
                for _ in range(3):
                    await stub.SayHello(protos.HelloRequest(name="x"), timeout=5)
            out["dial"] = "ok"
        except BaseException as exc:
            out["dial"] = f"{type(exc).__name__}: {exc}"
    out["warnings"] = [str(e["event"]) for e in logs if e.get("log_level") == "warning"]
    if server is not None:
        await server.drain()
    await reg.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def _probe(value: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "MESHKIT_"))}
    env["OTEL_PYTHON_TRACER_PROVIDER"] = value
    out = subprocess.run([sys.executable, "-c", _PROBE, str(_ROOT)], cwd=_ROOT, env=env,
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.timeout(120)
@pytest.mark.parametrize("value", [" ", "\t"], ids=["space", "tab"])
def test_a_blank_tracer_provider_variable_is_unset(value: str) -> None:
    """The server starts and three calls run with no telemetry warning."""
    assert _probe(value) == {"start": "ok", "dial": "ok", "warnings": []}


@pytest.mark.timeout(120)
def test_an_unknown_tracer_provider_is_a_config_error() -> None:
    """start() and dial() each fail with a ConfigError naming the variable."""
    got = _probe("no_such_provider")
    for where in ("start", "dial"):
        text = str(got[where])
        assert text.startswith("ConfigError: "), got
        assert "OTEL_PYTHON_TRACER_PROVIDER" in text and "'no_such_provider'" in text, got
