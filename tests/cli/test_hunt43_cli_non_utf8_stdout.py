"""The commands on a stdout that cannot encode every character (a terminal or a pipe in
an ASCII or Latin-1 locale: ``PYTHONIOENCODING=ascii``, ``LANG=en_US.ISO-8859-1``).

stdout kept Python's ``strict`` error handler: ``meshkit services`` listing an instance
whose id is ``zoé-1`` and ``meshkit certs init --dir ./cé`` (after making the CA: its
success line) ended in a ``UnicodeEncodeError`` traceback, status 1. stderr has always
escaped what it cannot encode (``backslashreplace``); stdout now does the same while a
command runs, so such a character reads ``\\xe9`` and the command ends as it would."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshkit.discovery import Instance, LocalOptions, LocalRegistry

pytestmark = pytest.mark.timeout(60)


def _ascii_run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env["PYTHONIOENCODING"] = "ascii"
    return subprocess.run([sys.executable, "-m", "meshkit.cli", *args], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                          check=False, text=True, encoding="utf-8", errors="replace")


async def test_services_lists_a_non_ascii_instance_id(tmp_path: Path) -> None:
    reg = LocalRegistry(LocalOptions(path=str(tmp_path / "reg"), ttl_s=30))
    await reg.register(Instance(service="svc", instance_id="zoé-1", host="127.0.0.1",
                                port=50051))
    try:
        done = await asyncio.to_thread(_ascii_run, "services", "--registry",
                                       f"local://{tmp_path / 'reg'}")
    finally:
        await reg.close()
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    assert "zo\\xe9-1" in done.stdout, done.stdout


def test_certs_init_in_a_non_ascii_directory(tmp_path: Path) -> None:
    target = tmp_path / "cé"
    done = _ascii_run("certs", "init", "--dir", str(target))
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    assert "c\\xe9" in done.stdout and (target / "ca.pem").exists(), done.stdout
