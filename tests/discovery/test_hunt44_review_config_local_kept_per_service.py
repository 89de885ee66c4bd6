"""LocalRegistry.status(service).kept_endpoints counts the endpoints that service's own
watches keep through a fault, as Consul's and etcd's do since f7d4d32d (review): it was
every watch's, so a channel of a service nothing was kept for reported (/debug/mesh,
``meshkit_registry_kept_endpoints``) another service's kept endpoints as its own.
status() still counts every watch's. A real process that cannot write the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.discovery.test_local_faults import Child
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


async def _status(child: Child, service: str = "") -> dict[str, object]:
    reply = await child.command(f"status {service}".strip())
    assert "error" not in reply, reply["error"]
    return dict(reply["status"])


async def test_status_of_a_service_counts_its_own_watches_kept_endpoints(
        tmp_path: Path) -> None:
    """svc's watch keeps a and b once their entries expire unrenewed; other's watch keeps
    nothing: status('other') says 0, status('svc') 2, status() 2."""
    child = await Child.start(tmp_path, "--ttl-s", "0.6", "--poll-s", "0.05",
                              "--register", "a", "b", "--watch", "svc")
    try:
        await child.wait_for(lambda e: e.get("ids") == ["a", "b"], "a and b discovered")
        await child.command("watch other")
        await child.command("fault")

        async def kept() -> bool:
            return (await _status(child, "svc"))["kept_endpoints"] == 2

        await until(kept, timeout_s=15, what="svc's watch to keep a and b")
        assert (await _status(child))["kept_endpoints"] == 2
        assert (await _status(child, "other"))["kept_endpoints"] == 0
    finally:
        await child.stop()
