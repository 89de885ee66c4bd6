"""``meshkit prometheus-targets --watch`` names a missing ``local:`` registry once
(test_hunt42_prometheus_watch_missing_registry.py, review of 3ec355f1); when the
registry appears and is then removed (a host's cleanup, a tmpfs after a reboot of the
servers' side), the watch says so again, once, writes ``[]`` rather than the removed
registry's last services, and does not create it again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


async def test_a_watched_registry_removed_is_named_again(tmp_path: Path) -> None:
    out = tmp_path / "targets.json"
    reg_dir = tmp_path / "reg"
    reg_path = reg_dir / "reg.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshkit.cli", "prometheus-targets", "--registry",
        f"local://{reg_path}", "--out", str(out), "--watch", "--interval-s", "0.05",
        "--keep-failing-s", "0", env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        await until(out.exists, timeout_s=30, what="the watcher's first pass")
        registry = LocalRegistry(LocalOptions(path=reg_path))  # a server registers
        await registry.register(Instance(service="orders", instance_id="orders-1",
                                         host="127.0.0.1", port=7001,
                                         meta={"admin_port": "9101"}))
        await until(lambda: json.loads(out.read_text()) != [], timeout_s=30,
                    what="the registered target written")
        await registry.close()  # the server gone, its instance left registered
        await asyncio.sleep(0.3)
        assert json.loads(out.read_text()) != [], "close() deregistered: no test"
        for name in os.listdir(reg_dir):  # the registry removed
            (reg_dir / name).unlink()
        await until(lambda: json.loads(out.read_text()) == [], timeout_s=30,
                    what="[] written once the registry is gone")
        await asyncio.sleep(0.5)  # about ten more passes
        assert not reg_path.exists()  # not created again
        proc.send_signal(signal.SIGTERM)
        stdout, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert (proc.returncode, stdout) == (0, b""), err
    lines = err.decode().splitlines()
    assert len(lines) == 2, lines
    assert all("no local registry" in line and str(reg_path) in line for line in lines), lines
