"""A ``local:`` registry path nobody registered at (a typo: ``--registry
local:///var/lib/mesh`` for ``/var/lib/meshkit``) was created by the commands that only
read it: ``meshkit services`` made the directory tree and an empty ``registry.db`` there
and said only ``no instance listed``; ``meshkit prometheus-targets`` wrote an empty
targets file (with ``--watch``, every pass), the typo unsaid; ``meshkit call`` said the
service had no endpoint registered. ``services`` and ``prometheus-targets`` now say
there is no local registry at that path (in the one line each prints) and create
nothing, their output and status as before (none listed: 1; ``[]`` written: 0); ``call``, which can
reach nothing, fails ``UNAVAILABLE`` (78) naming it, before ``dial()`` would create
it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshkit.discovery import LocalOptions, LocalRegistry
from tests.cli.test_ops_commands import meshkit_cli

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("args", [("services",), ("services", "--service", "greeter"),
                                  ("services", "--json")],
                         ids=["all", "one-service", "json"])
async def test_services_on_a_missing_local_registry(tmp_path: Path,
                                                    args: tuple[str, ...]) -> None:
    """Status 1 (none listed), the path named, nothing created."""
    status, out, err = await meshkit_cli(*args, "--registry", f"local://{tmp_path}/typo/reg")
    assert status == 1, (status, out, err)
    assert "no local registry" in err and f"{tmp_path}/typo/reg" in err, err
    assert out.strip() in ("", "[]")
    assert os.listdir(tmp_path) == []


async def test_prometheus_targets_on_a_missing_local_registry(tmp_path: Path) -> None:
    """The pass writes ``[]`` (status 0, as before), says why, creates no registry."""
    status, _, err = await meshkit_cli("prometheus-targets", "--out", f"{tmp_path}/t.json",
                                       "--registry", f"local://{tmp_path}/typo")
    assert status == 0, err
    assert "no local registry" in err and f"{tmp_path}/typo" in err, err
    assert os.listdir(tmp_path) == ["t.json"]


@pytest.mark.parametrize("target", ["greeter/SayHello", "/pkg.Greeter/SayHello"],
                         ids=["service", "full-name"])
async def test_call_on_a_missing_local_registry(tmp_path: Path, target: str) -> None:
    """UNAVAILABLE (78), the registry named as the cause, nothing created."""
    status, out, err = await meshkit_cli("call", target, "{}", "--insecure", "--registry",
                                         f"local://{tmp_path}/typo")
    assert (status, out) == (78, ""), (status, out, err)
    assert "no local registry" in err, err
    assert os.listdir(tmp_path) == []


async def test_an_existing_empty_local_registry_is_read(tmp_path: Path) -> None:
    """A registry file that exists (servers came and went) lists none, as before."""
    registry = LocalRegistry(LocalOptions(path=tmp_path / "reg"))
    await registry.services()
    await registry.close()
    status, out, err = await meshkit_cli("services", "--registry", f"local://{tmp_path}/reg")
    assert (status, out) == (1, ""), (status, out, err)
    assert "no instance listed" in err, err
