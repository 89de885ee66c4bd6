"""A renewal landing while a TLS server starts is followed by its certificate gauges.

``serve()``'s certificate follower (``MeshServer._follow_certificate``) keeps the
certificate gauges (``meshkit_certificate_expiry_timestamp_seconds``, read by
``MeshkitCertificateExpiringSoon``) on the files on disk. It took the files' ``stat`` as
the state already followed when it started, after ``start()`` had built the credentials
from the files and awaited the rest of the start: a renewal written in between (a pod
starting while cert-manager renews its Secret) read as "no change" ever after, so the
gauges stayed on the old notAfter (the alert fired though the renewal had happened) until
the next renewal or a client's new handshake. The same stat-after-read race 8609c5c fixed
in the TLS reloader. Real files, a real serve() over TLS on loopback; the renewal is
written while start() sets the health statuses (after the credentials read the files,
before the follower starts).
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.auth import describe_certificate, load_certificate
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.observability import TelemetryOptions
from tests.auth.conftest import Pki, auth_handler
from tests.support.wait import until


async def test_a_renewal_written_while_the_server_starts_reaches_the_gauges(
        pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHKIT_ADMIN_PORT", raising=False)
    tls = dataclasses.replace(pki.issue("gauged", ttl_h=2), reload_interval_s=0.05)
    served = describe_certificate(load_certificate(tls.cert_file))

    class RenewWhileStarting(health.aio.HealthServicer):
        renewed = False

        async def set(self, service: str, status: Any) -> None:
            if not self.renewed:
                self.renewed = True
                pki.issue("gauged", ttl_h=30, overwrite=True)  # a usable renewal
            await super().set(service, status)

    reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=3.0, poll_interval_s=0.05))
    own_health = RenewWhileStarting()

    def add(_s: object, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((auth_handler(),))

    own = CollectorRegistry()
    servicers: list[Any] = [(add, None),
                            (health_pb2_grpc.add_HealthServicer_to_server, own_health)]
    srv = meshkit.MeshServer("gauged", servicers, registry=reg, options=meshkit.ServeOptions(
        tls=tls, drain_delay_s=0, grace_s=0.5, telemetry=TelemetryOptions(registry=own)))
    await asyncio.wait_for(srv.start(), 10)
    try:
        assert own_health.renewed
        renewed = describe_certificate(load_certificate(tls.cert_file)).not_after.timestamp()
        assert renewed != served.not_after.timestamp()

        def expiry() -> float | None:
            return own.get_sample_value("meshkit_certificate_expiry_timestamp_seconds",
                                        {"service": "gauged"})

        # no client connects (no handshake): the follower alone can see the renewal
        await until(lambda: expiry() == renewed, timeout_s=5, interval_s=0.05,
                    what="the gauges on the renewal written during start()")
    finally:
        await asyncio.wait_for(srv.drain(), 10)
        await reg.close()
