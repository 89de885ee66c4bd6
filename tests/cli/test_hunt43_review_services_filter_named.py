"""``meshkit services --service NAME`` listing nothing names the filter.

It said "no instance listed in local://..." whether the registry was empty or only
the asked service had no instance: a user who mistyped the name read that the registry
was empty."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshkit.discovery import Instance, LocalOptions, LocalRegistry

pytestmark = pytest.mark.timeout(60)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    return subprocess.run([sys.executable, "-m", "meshkit.cli", "services", *args], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                          check=False, text=True)


async def test_an_unmatched_service_filter_is_named(tmp_path: Path) -> None:
    import asyncio

    reg = LocalRegistry(LocalOptions(path=str(tmp_path / "reg"), ttl_s=30))
    await reg.register(Instance(service="svc", instance_id="svc-1", host="127.0.0.1",
                                port=50051))
    uri = f"local://{tmp_path / 'reg'}"
    try:
        one = await asyncio.to_thread(_run, "--registry", uri, "--service", "nosuch")
        two = await asyncio.to_thread(_run, "--registry", uri, "--service", "nosuch",
                                      "--service", "other")
        all_ = await asyncio.to_thread(_run, "--registry", uri)
    finally:
        await reg.close()
    assert one.returncode == 1, one.stderr
    assert "'nosuch'" in one.stderr and uri in one.stderr, one.stderr
    assert two.returncode == 1 and "'nosuch'" in two.stderr and "'other'" in two.stderr, \
        two.stderr
    assert all_.returncode == 0 and "svc-1" in all_.stdout, all_.stderr
