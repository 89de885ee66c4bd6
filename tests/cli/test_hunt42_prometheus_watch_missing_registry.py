"""``meshkit prometheus-targets --watch`` on a ``local:`` registry path nobody registered
at (a typo: ``local:///var/lib/mesh`` for ``/var/lib/meshkit``) wrote ``[]`` every
pass and said nothing, for as long as it ran, while the one-shot pass names the missing
registry (test_hunt41_h1_missing_local_registry.py): Prometheus scraped nothing and the
typo stayed hidden. The watch now says so once, when a pass first finds it missing,
creates nothing, and says nothing more once servers register there."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from meshkit.discovery import LocalOptions, LocalRegistry
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


async def test_a_watch_on_a_missing_local_registry_says_so_once(tmp_path: Path) -> None:
    """Several passes over a missing registry: ``[]`` written, one line naming the path,
    nothing created; the registry then made (a server starting) is read, no new line;
    SIGTERM ends it with 0."""
    out = tmp_path / "targets.json"
    reg_path = tmp_path / "later" / "reg"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshkit.cli", "prometheus-targets", "--registry",
        f"local://{reg_path}", "--out", str(out), "--watch", "--interval-s", "0.05",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await until(out.exists, timeout_s=30, what="the watcher's first pass")
        mtime = out.stat().st_mtime_ns
        await asyncio.sleep(0.5)  # about ten more passes
        assert json.loads(out.read_text()) == []
        assert sorted(os.listdir(tmp_path)) == ["targets.json"]  # nothing created
        assert out.stat().st_mtime_ns == mtime  # unchanged content: not rewritten
        registry = LocalRegistry(LocalOptions(path=reg_path))  # a server's registry
        await registry.services()
        await registry.close()
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        stdout, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert (proc.returncode, stdout) == (0, b""), err
    lines = err.decode().splitlines()
    assert len(lines) == 1, lines
    assert "no local registry" in lines[0] and str(reg_path) in lines[0], lines
