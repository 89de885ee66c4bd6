"""A renewal the server refuses, on a channel to many endpoints: its probes are bounded.

The renewal half of a CA rotation (the client renewed by a CA the server does not trust
yet) on a channel to 100 endpoints (100 instances registered at one loopback mTLS
server): each renewed sub-channel fails to connect and asks the channel's TLS probe why.
Before, all 100 queued for a probe, two at a time, and each warning (and the promotion
behind it) waited for its turn; now at most ``PROBES_AT_ONCE + PROBES_WAITING`` probes are
waiting at once (the explain() calls under way, counted), the other warnings are logged at
once without a reason.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from structlog.testing import capture_logs

import meshkit
from meshkit.auth import TLSOptions, init_ca_dir, issue_into_dir
from meshkit.auth._probe import PROBES_AT_ONCE, PROBES_WAITING
from meshkit.discovery import Instance, LocalRegistry
from tests.auth.conftest import TD, StartServer
from tests.support.wait import until

pytestmark = pytest.mark.timeout(120)

_ENDPOINTS = 100


async def test_a_refused_renewal_of_many_endpoints_queues_a_bounded_number_of_probes(
        tmp_path: Path, registry: LocalRegistry, start_server: StartServer) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    init_ca_dir(old, trust_domain=TD, ttl_days=2)
    init_ca_dir(new, trust_domain=TD, ttl_days=2)
    server = issue_into_dir(old, "whod", ttl_h=1.0, dns=("localhost",), ips=("127.0.0.1",))
    first = issue_into_dir(old, "clientd", ttl_h=1.0)
    renewed = issue_into_dir(new, "clientd", ttl_h=1.0)
    client = tmp_path / "client"
    client.mkdir()
    (client / "ca.pem").write_bytes((old / "ca.pem").read_bytes()
                                    + (new / "ca.pem").read_bytes())
    (client / "clientd.pem").write_bytes(first.cert_file.read_bytes())
    (client / "clientd.key").write_bytes(first.key_file.read_bytes())
    (client / "clientd.key").chmod(0o600)
    tls = TLSOptions(ca_file=client / "ca.pem", cert_file=client / "clientd.pem",
                     key_file=client / "clientd.key", reload_interval_s=0.05)
    port = await start_server(grpc.ssl_server_credentials(
        [(server.key_file.read_bytes(), server.cert_file.read_bytes())],
        root_certificates=(old / "ca.pem").read_bytes(), require_client_auth=True))
    for i in range(_ENDPOINTS):
        await registry.register(Instance(service="whod", instance_id=f"w{i:03d}",
                                         host="127.0.0.1", port=port))
    opts = meshkit.DialOptions(tls=tls, retry=None, outlier=None)
    with capture_logs() as logs:
        async with meshkit.dial("whod", registry=registry, options=opts) as ch:
            diagnosis = ch._pool.diagnosis
            assert diagnosis is not None
            explain = diagnosis.explain
            asking = [0, 0]  # explain() calls under way, their most at once

            async def counted(address: str) -> str | None:
                asking[0] += 1
                asking[1] = max(asking)
                try:
                    return await explain(address)
                finally:
                    asking[0] -= 1

            diagnosis.explain = counted  # type: ignore[method-assign]
            await ch.wait_for_endpoints(_ENDPOINTS, timeout_s=60)
            await until(lambda: all(e.state == "READY" for e in ch.stats().endpoints),
                        timeout_s=60, what="every endpoint READY")
            (client / "clientd.key").write_bytes(renewed.key_file.read_bytes())
            (client / "clientd.pem").write_bytes(renewed.cert_file.read_bytes())

            def warned() -> list[dict[str, object]]:
                return [e for e in logs
                        if e["event"].startswith("renewed sub-channel could not connect")]

            await until(lambda: len(warned()) == _ENDPOINTS, timeout_s=60,
                        what="every renewed sub-channel's warning")
            assert await ch.unary_unary("/test.Auth/Whoami")(b"", timeout=5)
    # at most the bound were waiting for a probe (before: every one of them, queued two
    # at a time); + 1: a call answered None at once is counted while it is answered
    assert any("reason" in e for e in warned())
    assert asking[1] <= PROBES_AT_ONCE + PROBES_WAITING + 1, asking
