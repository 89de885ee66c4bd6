"""``meshkit services`` and ``prometheus-targets`` take an instance's ``admin_port`` meta
only when it is a TCP port (1 to 65535), as their docstrings say ("None without a valid
port"): a Consul service's meta is anyone's text."""

from __future__ import annotations

import pytest

from meshkit._cli.prometheus import target_groups
from meshkit._cli.services import admin_address, admin_url, readiness_url
from meshkit.discovery import Instance


def _instance(admin_port: str) -> Instance:
    return Instance(service="orderd", instance_id="orderd-1", host="10.0.0.7", port=50051,
                    meta={"admin_port": admin_port})


@pytest.mark.parametrize("port", ["0", "65536", "99999", "1" + "0" * 30, "-1", "+80", ""])
def test_a_port_out_of_range_is_no_admin_server(port: str) -> None:
    """'99999' and '0' were taken: a Prometheus target 10.0.0.7:99999 that no scrape can
    reach (up == 0 and MeshkitInstanceDown for a live instance), and ``services``
    probing it and showing the instance 'unreachable'."""
    inst = _instance(port)
    assert (admin_address(inst), admin_url(inst), readiness_url(inst)) == (None, None, None)
    assert target_groups([inst], []) == []


@pytest.mark.parametrize(("port", "shown"), [("1", "1"), ("9100", "9100"),
                                             ("65535", "65535"), ("09100", "9100")])
def test_a_port_in_range_is_taken_written_plainly(port: str, shown: str) -> None:
    inst = _instance(port)
    assert admin_address(inst) == f"10.0.0.7:{shown}"
    assert admin_url(inst) == f"http://10.0.0.7:{shown}"
