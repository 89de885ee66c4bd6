"""The convergence scenario stops the etcd it started, also when etcd fails to start."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Any

import pytest

from benchmarks import stacks
from benchmarks.procs import Supervisor
from benchmarks.scenarios import convergence
from benchmarks.scenarios._common import PLANS, Ctx
from tests.support.etcd import EtcdCluster, require_etcd_binary


@pytest.mark.timeout(60)
async def test_an_etcd_that_never_got_healthy_is_killed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the scenario's etcd did not become healthy, EtcdCluster.start raised before
    the scenario held the cluster: its finally had no etcd to close, and the etcd
    process outlived the run (an orphan per failed try, on its loopback ports)."""
    require_etcd_binary()  # skipped without one, failed under CI=true
    started: list[subprocess.Popen[bytes]] = []
    real_start = EtcdCluster.start_member

    def start_member(self: EtcdCluster, i: int) -> None:
        real_start(self, i)
        assert self.members[i].proc is not None
        started.append(self.members[i].proc)

    def never_healthy(self: EtcdCluster, *a: Any, **kw: Any) -> None:
        raise RuntimeError("etcd not healthy within 0s")

    monkeypatch.setattr(EtcdCluster, "start_member", start_member)
    monkeypatch.setattr(EtcdCluster, "wait_healthy_blocking", never_healthy)
    plan = dataclasses.replace(PLANS["smoke"], convergence_contenders=("etcd-p2c",),
                               overlap_stops=False)
    sup = Supervisor(tmp_path, tmp_path / "secrets")
    ctx = Ctx(plan=plan, sup=sup, secrets=stacks.Secrets(tmp_path / "secrets"),
              workdir=tmp_path)
    try:
        with pytest.raises(RuntimeError, match="not healthy"):
            await convergence.run(ctx)
        await ctx.stopped()
        assert started
        alive = [p.pid for p in started if p.poll() is None]
        assert alive == []
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
                p.wait()
        await sup.close()
