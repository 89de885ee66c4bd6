"""``meshkit prometheus-targets`` over etcd when two services have an instance of the same
id (``ServeOptions(instance_id=os.environ["POD_NAME"])`` in a pod serving two mesh
services: etcd keys an instance by ``<service>/<id>``, so both are registered). Each
instance is its own target: one of them dying must keep its own target, ``up == 0``, so
``MeshkitInstanceDown`` fires, whatever the other service's instance of that id does."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry, Instance
from tests.cli.test_ops_commands import meshkit_cli
from tests.support.etcd import EtcdCluster, require_etcd_binary

pytestmark = pytest.mark.timeout(90)


def _instance(service: str, admin_port: int) -> Instance:
    return Instance(service=service, instance_id="pod-1", host="127.0.0.1", port=9,
                    meta={"admin_port": str(admin_port)})


async def test_a_failing_instance_keeps_its_target_beside_a_live_one_of_the_same_id(
        tmp_path: Path) -> None:
    """Service ``billing``'s instance ``pod-1`` died (its lease ended, no deregistration:
    etcd reports it failing) while service ``ledger``'s instance ``pod-1`` lives. The
    targets file must hold both, ``billing``'s with ``__meta_meshkit_health`` ``failing``.
    The command kept failing instances by instance id alone, and dropped a failing one
    whose id a live instance (of any service) has: ``billing``'s target vanished, and
    with it the ``up == 0`` that ``MeshkitInstanceDown`` alerts on."""
    cluster = EtcdCluster(require_etcd_binary(), tmp_path / "etcd", size=1)
    await cluster.start()
    opts = EtcdOptions(endpoints=tuple(cluster.endpoints), ttl_s=1, request_timeout_s=1.0,
                       operation_timeout_s=2.0)
    owner, dying = EtcdRegistry(opts), EtcdRegistry(opts)
    out = tmp_path / "targets.json"
    try:
        await owner.register(_instance("ledger", 9101))
        dead = _instance("billing", 9102)
        await dying.register(dead)
        await dying.close()  # no deregistration: its key goes with its lease
        for _ in range(150):
            if await owner.failing("billing") == {dead}:
                break
            await asyncio.sleep(0.1)
        assert await owner.failing("billing") == {dead}
        endpoints = ",".join(e.split("://", 1)[-1] for e in cluster.endpoints)
        code, stdout, err = await meshkit_cli(
            "prometheus-targets", "--out", str(out), "--registry", f"etcd://{endpoints}",
            "--timeout-s", "10")
    finally:
        await owner.close()
        cluster.close()
    assert (code, stdout) == (0, ""), err
    groups = json.loads(out.read_text())
    assert sorted((g["labels"]["mesh_service"], g["labels"]["mesh_instance"],
                   g["labels"]["__meta_meshkit_health"], g["targets"]) for g in groups) == [
        ("billing", "pod-1", "failing", ["127.0.0.1:9102"]),
        ("ledger", "pod-1", "passing", ["127.0.0.1:9101"])], groups
