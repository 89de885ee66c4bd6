"""``meshkit prometheus-targets`` writes one target per admin address.

The servers of one process share one admin server (one ``/metrics`` for the process), so
two mesh services served by one process announce the same ``admin_host:admin_port``. The
command wrote one target group per instance: two groups with the same address and other
labels, which Prometheus scrapes as two targets, so every series of that process was
stored twice (once under each ``mesh_service``): ``sum(rate(grpc_server_handled_total))``
counted each call twice, and the recording rules put ``ledger``'s methods under
``mesh_service="billing"`` too. Likewise after a crash and restart on a fixed admin port:
the dead instance (reported failing, kept ``--keep-failing-s``) and the new one shared
the address, and the new process was scraped twice for minutes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import meshkit
from meshkit._cli.prometheus import target_groups
from meshkit.discovery import Instance, LocalRegistry
from tests.cli.test_ops_commands import Echoer, Greeter, meshkit_cli, services, uri

pytestmark = pytest.mark.timeout(60)


def _inst(service: str, instance_id: str, admin_port: int = 9100,
          host: str = "10.0.0.5") -> Instance:
    return Instance(service=service, instance_id=instance_id, host=host, port=7000,
                    meta={"admin_port": str(admin_port)})


async def test_two_services_of_one_process_are_one_target(registry: LocalRegistry,
                                                          tmp_path: Path) -> None:
    """Two MeshServers of one process (one admin server): one target, both named."""
    servers = [meshkit.MeshServer(name, [(add, servicer)], registry=registry,
                                  options=meshkit.ServeOptions(insecure=True,
                                                               instance_id=f"{name}-1",
                                                               drain_delay_s=0, grace_s=1))
               for name, add, servicer in (
                   ("billing", services.add_GreeterServicer_to_server, Greeter()),
                   ("ledger", services.add_EchoerServicer_to_server, Echoer()))]
    for s in servers:
        await s.start()
    try:
        assert servers[0].admin is servers[1].admin  # the process's one admin server
        out = tmp_path / "targets.json"
        code, _, err = await meshkit_cli("prometheus-targets", "--registry", uri(registry),
                                         "--out", str(out))
        assert code == 0, err
        groups = json.loads(out.read_text())
        address = f"127.0.0.1:{servers[0].admin.port}"  # type: ignore[union-attr]
        assert [g["targets"] for g in groups] == [[address]], groups
        assert groups[0]["labels"] == {"mesh_service": "billing,ledger",
                                       "mesh_instance": "billing-1,ledger-1",
                                       "__meta_meshkit_health": "passing"}
    finally:
        for s in servers:
            await s.drain()


def test_a_live_instance_hides_a_failing_one_at_its_address() -> None:
    """Restarted on a fixed admin port: the live instance is the target, alone."""
    groups = target_groups([_inst("orderd", "new")], [_inst("orderd", "old")])
    assert groups == [{"targets": ["10.0.0.5:9100"],
                       "labels": {"mesh_service": "orderd", "mesh_instance": "new",
                                  "__meta_meshkit_health": "passing"}}]


def test_each_address_is_one_target_and_others_are_as_before() -> None:
    """Instances at other addresses keep a group each, sorted, labelled as before; failing
    instances alone at one address are one failing target."""
    live = [_inst("userd", "u1", 9101), _inst("orderd", "o1", 9100),
            _inst("billing", "b1", 9100), _inst("userd", "u2", 9100, host="10.0.0.6")]
    failing = [_inst("cartd", "c1", 9200), _inst("cartd", "c2", 9200)]
    assert target_groups(live, failing) == [
        {"targets": ["10.0.0.5:9100"],
         "labels": {"mesh_service": "billing,orderd", "mesh_instance": "b1,o1",
                    "__meta_meshkit_health": "passing"}},
        {"targets": ["10.0.0.5:9200"],
         "labels": {"mesh_service": "cartd", "mesh_instance": "c1,c2",
                    "__meta_meshkit_health": "failing"}},
        {"targets": ["10.0.0.5:9101"],
         "labels": {"mesh_service": "userd", "mesh_instance": "u1",
                    "__meta_meshkit_health": "passing"}},
        {"targets": ["10.0.0.6:9100"],
         "labels": {"mesh_service": "userd", "mesh_instance": "u2",
                    "__meta_meshkit_health": "passing"}},
    ]
