"""What a ``meshkit`` operator command imports before it parses its arguments.

``meshkit services --help`` (and a usage error) used to import aiohttp, the OpenTelemetry
SDK, limits, grpc and structlog (about 0.4 s of CPU) through ``meshkit._cli._common``
(``meshkit.observability``, ``meshkit.discovery``) and each command's own module-level
imports. Each command now imports them after its arguments parse, where it uses them.
Each test runs the command in a fresh interpreter and reads that interpreter's
``sys.modules`` when the command ends: what loaded is behaviour, the time it takes is not
asserted here (``benchmarks/`` measures).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Runs meshkit.cli.main(argv) as the console script does, then writes the names in
# sys.modules (as a JSON list) to the file named by the first argument.
_PROBE = """
import json, sys
from meshkit.cli import main
out, argv = sys.argv[1], sys.argv[2:]
try:
    code = main(argv)
except SystemExit as exc:
    code = exc.code
with open(out, "w") as f:
    json.dump(sorted(sys.modules), f)
sys.exit(code)
"""

#: Packages no operator command needs to print its help or refuse its arguments.
HEAVY = ("aiohttp", "opentelemetry", "limits", "cryptography", "grpc", "grpc_reflection",
         "grpc_health", "google.protobuf", "structlog", "prometheus_client", "asyncio",
         "yarl", "meshkit.observability", "meshkit.discovery", "meshkit.errors",
         "meshkit.auth", "meshkit.channel", "meshkit.server")

#: The meshkit modules each command's parser is allowed to load.
PARSER_MODULES = {
    "services": {"meshkit._cli.services"},
    "call": {"meshkit._cli.call"},
    "prometheus-targets": {"meshkit._cli.prometheus", "meshkit._cli.services"},
}


def _run(tmp_path: Path, *argv: str) -> tuple[int, str, str, set[str]]:
    """``meshkit ARGV`` in a fresh interpreter, with no ``MESHKIT_*`` from the caller's
    environment: (status, stdout, stderr, the modules loaded when it ended)."""
    mods = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(mods), *argv], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120, check=False)
    loaded = set(json.loads(mods.read_text()))
    return proc.returncode, proc.stdout, proc.stderr, loaded


def _heavy(loaded: set[str], heavy: tuple[str, ...] = HEAVY) -> list[str]:
    """The packages of ``heavy`` found in ``loaded`` (a package or any of its modules)."""
    return sorted(h for h in heavy
                  if any(m == h or m.startswith(h + ".") for m in loaded))


@pytest.mark.parametrize("command", sorted(PARSER_MODULES))
def test_help_imports_nothing_heavy(tmp_path: Path, command: str) -> None:
    """``meshkit COMMAND --help`` prints the help with only the command's parser and the
    standard library loaded: no aiohttp, OpenTelemetry, limits, cryptography, grpc,
    protobuf, structlog or asyncio, and no meshkit package beyond the parser's modules."""
    code, out, err, loaded = _run(tmp_path, command, "--help")
    assert (code, err) == (0, "")
    assert out.startswith(f"usage: meshkit {command} ")
    assert _heavy(loaded) == []
    meshkit_loaded = {m for m in loaded if m == "meshkit" or m.startswith("meshkit.")}
    assert meshkit_loaded <= ({"meshkit", "meshkit.cli", "meshkit._cli", "meshkit._cli._common"}
                              | PARSER_MODULES[command])


@pytest.mark.parametrize("command", sorted(PARSER_MODULES))
def test_usage_error_imports_nothing_heavy(tmp_path: Path, command: str) -> None:
    """A refused option (``--timeout-s 0``) ends with argparse's status 2 and its message
    before anything heavy is imported."""
    extra = {"call": ["svc/Method"], "prometheus-targets": ["--out", "x.json"]}
    code, out, err, loaded = _run(tmp_path, command, *extra.get(command, []),
                                  "--timeout-s", "0")
    assert (code, out) == (2, "")
    assert "--timeout-s: must be a positive finite number of seconds, got '0'" in err
    assert _heavy(loaded) == []


def test_services_run_loads_only_what_it_uses(tmp_path: Path) -> None:
    """A real ``meshkit services --json`` against an empty local registry (status 1,
    ``[]``) loads the registry, but neither aiohttp's client session nor ``meshkit
    call``'s machinery (reflection, protobuf's JSON), nor the mesh client, server or
    certificates. (aiohttp, the OpenTelemetry SDK and limits still load, through
    ``meshkit.observability``'s package import for ``configure_logging``.)"""
    registry = tmp_path / "registry"
    registry.mkdir()
    code, out, err, loaded = _run(tmp_path, "services", "--registry", f"local://{registry}",
                                  "--json")
    assert (code, out) == (1, "[]\n")
    assert err == f"meshkit services: no instance listed in local://{registry}\n"
    assert "meshkit.discovery._local" in loaded
    assert _heavy(loaded, ("meshkit._cli._call", "meshkit._cli.call", "meshkit.auth",
                           "meshkit.channel", "meshkit.server", "cryptography",
                           "google.protobuf.json_format", "grpc_reflection.v1alpha")) == []


def test_env_var_matches_discovery() -> None:
    """The ``--registry`` default's variable, spelled out in ``meshkit._cli._common`` so
    that ``--help`` does not import the registries, is the one the registries read."""
    from meshkit._cli import _common
    from meshkit.discovery import ENV_VAR

    assert _common.ENV_VAR == ENV_VAR
