"""What a ``meshkit`` operator command imports before it parses its arguments.

``meshkit services --help`` (and a usage error) used to import aiohttp, the OpenTelemetry
SDK, limits, grpc and structlog (about 0.4 s of CPU) through ``meshkit._cli._common``
(``meshkit.observability``, ``meshkit.discovery``) and each command's own module-level
imports. Each command now imports them after its arguments parse, where it uses them.
Each test runs the command in a fresh interpreter and reads that interpreter's
``sys.modules`` when the command ends: what loaded is behaviour, the time it takes is not
asserted here (``benchmarks/`` measures).

``meshkit.observability`` and ``meshkit.auth`` import their names on first read (PEP 562),
as ``meshkit`` does: a real ``services`` run used to load aiohttp, limits and the
OpenTelemetry SDK through ``meshkit.observability``'s package import (for
``configure_logging``), and ``meshkit certs --help`` cryptography, grpc, aiohttp and PyJWT
through ``meshkit.auth``'s and ``meshkit/auth/cli.py``'s module-level imports.
"""

from __future__ import annotations

import asyncio
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

#: The meshkit modules every command loads before it parses (meshkit._lazy: the package's
#: first-read lock, the standard library only).
BASE_MODULES = {"meshkit", "meshkit._lazy", "meshkit.cli", "meshkit._cli", "meshkit._cli._common"}

#: The meshkit modules each command's parser is allowed to load.
PARSER_MODULES = {
    "services": {"meshkit._cli.services"},
    "call": {"meshkit._cli.call", "meshkit._env"},  # _env: os only
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
    assert meshkit_loaded <= (BASE_MODULES | PARSER_MODULES[command])


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


async def _empty_registry(directory: Path) -> None:
    """A local registry's file in ``directory``, no instance in it."""
    from meshkit.discovery import LocalOptions, LocalRegistry

    registry = LocalRegistry(LocalOptions(path=directory))
    try:
        await registry.services()
    finally:
        await registry.close()


def test_services_run_loads_only_what_it_uses(tmp_path: Path) -> None:
    """A real ``meshkit services --json`` against an empty local registry (status 1,
    ``[]``) loads the registry and ``configure_logging``, but not aiohttp (no instance has
    an admin port to probe, so no client session), limits, the OpenTelemetry SDK, the
    admin server or the interceptors, nor ``meshkit call``'s machinery (reflection,
    protobuf's JSON), nor the mesh client, server or certificates."""
    registry = tmp_path / "registry"
    registry.mkdir()
    asyncio.run(_empty_registry(registry))  # a missing one is not opened (nor created)
    code, out, err, loaded = _run(tmp_path, "services", "--registry", f"local://{registry}",
                                  "--json")
    assert (code, out) == (1, "[]\n")
    assert err == f"meshkit services: no instance listed in local://{registry}\n"
    assert "meshkit.discovery._local" in loaded
    assert "meshkit.observability._logging" in loaded
    assert _heavy(loaded, ("meshkit._cli._call", "meshkit._cli.call", "meshkit.auth",
                           "meshkit.channel", "meshkit.server", "cryptography",
                           "google.protobuf.json_format", "grpc_reflection.v1alpha",
                           "aiohttp", "yarl", "limits", "opentelemetry.sdk",
                           "meshkit.observability._admin", "meshkit.observability._tracing",
                           "meshkit.observability._setup", "meshkit.resilience")) == []


#: What ``meshkit certs`` needs for no command: PyJWT, the JWKS server's aiohttp, the
#: interceptors' grpc, telemetry.
CERTS_NEVER = ("aiohttp", "yarl", "jwt", "opentelemetry", "limits", "prometheus_client",
               "meshkit.observability", "meshkit.channel", "meshkit.server",
               "meshkit.auth._jwt", "meshkit.auth._jwks", "meshkit.auth._tls",
               "meshkit.auth._server")


@pytest.mark.parametrize("argv", [("certs", "--help"), ("certs", "init", "--help"),
                                  ("certs", "inspect", "--help"),
                                  ("certs", "init", "--ttl-days", "x")],
                         ids=["certs", "init", "inspect", "usage-error"])
def test_certs_parser_imports_no_crypto(tmp_path: Path, argv: tuple[str, ...]) -> None:
    """``meshkit certs --help`` (a subcommand's, a usage error) prints what argparse
    prints without cryptography, grpc, aiohttp or PyJWT: ``meshkit/auth/cli.py``
    imports the certificate machinery once its arguments parse."""
    code, out, err, loaded = _run(tmp_path, *argv)
    if argv[-1] == "--help":
        assert (code, err) == (0, "")
        assert out.startswith(f"usage: meshkit {' '.join(argv[:-1])} ")
    else:
        assert (code, out) == (2, "")
        assert "argument --ttl-days: must be a positive finite number of days, got 'x'" \
            in err
    assert _heavy(loaded, ("cryptography", "grpc", "google.protobuf", *CERTS_NEVER)) == []
    assert not {m for m in loaded if m.startswith("meshkit.auth._")}


def test_certs_init_and_inspect_load_no_grpc_stack(tmp_path: Path) -> None:
    """``meshkit certs init`` (default trust domain) then ``certs inspect`` of its CA
    certificate: they load cryptography and ``meshkit.auth``'s certificate modules, but no
    aiohttp, PyJWT, OpenTelemetry, limits or the TLS/interceptor modules. (grpc itself
    still loads, through ``meshkit._config`` and ``meshkit.errors``, whose ``MeshRpcError``
    is a ``grpc.aio.AioRpcError``.)"""
    certs = tmp_path / "certs"
    code, out, err, loaded = _run(tmp_path, "certs", "init", "--dir", str(certs))
    assert (code, err) == (0, "")
    assert out.startswith("CA for trust domain meshkit.local: ")
    assert _heavy(loaded, CERTS_NEVER) == []
    code, out, err, loaded = _run(tmp_path, "certs", "inspect", str(certs / "ca.pem"))
    assert (code, err) == (0, "")
    assert "spiffe id:     spiffe://meshkit.local\n" in out
    assert "meshkit.auth._certs" in loaded
    assert _heavy(loaded, CERTS_NEVER) == []


@pytest.mark.parametrize("package", ["meshkit.observability", "meshkit.auth"])
def test_package_import_loads_none_of_its_modules(package: str) -> None:
    """``import meshkit.observability`` / ``import meshkit.auth`` load the quiet logging
    default (``meshkit._log``) and none of their modules, nor what those import."""
    code = ("import json, sys, importlib; importlib.import_module(sys.argv[1]); "
            "print(json.dumps(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code, package], capture_output=True,
                          text=True, timeout=120, check=True)
    loaded = set(json.loads(proc.stdout))
    assert "meshkit._log" in loaded
    assert not {m for m in loaded if m.startswith(package + ".")}
    assert _heavy(loaded, ("aiohttp", "opentelemetry", "limits", "cryptography", "grpc",
                           "jwt", "prometheus_client")) == []


_SUBMODULES = sorted(
    f"{pkg}.{p.stem}" for pkg in ("meshkit.observability", "meshkit.auth")
    for p in Path(__file__).parents[2].joinpath(*pkg.split(".")).glob("*.py")
    if p.stem != "__init__")


@pytest.mark.parametrize("module", _SUBMODULES)
def test_each_submodule_imports_first(module: str) -> None:
    """Each module of the two lazy packages imports first in a fresh interpreter (no
    package import runs the others ahead of it any more, so a cycle would show here), with
    the quiet logging default in place."""
    code = ("import sys, importlib; importlib.import_module(sys.argv[1]); "
            "print('meshkit._log' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, module], capture_output=True,
                          text=True, timeout=120, check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "True\n", "")


def test_certs_default_trust_domain_matches_auth() -> None:
    """``meshkit/auth/cli.py`` spells the ``--trust-domain`` default out (so that its
    parser imports no cryptography); it is ``meshkit.auth.DEFAULT_TRUST_DOMAIN``."""
    from meshkit.auth import DEFAULT_TRUST_DOMAIN, cli

    assert cli.DEFAULT_TRUST_DOMAIN == DEFAULT_TRUST_DOMAIN


def test_env_var_matches_discovery() -> None:
    """The ``--registry`` default's variable, spelled out in ``meshkit._cli._common`` so
    that ``--help`` does not import the registries, is the one the registries read."""
    from meshkit._cli import _common
    from meshkit.discovery import ENV_VAR

    assert _common.ENV_VAR == ENV_VAR
