"""The certificate gauges show the certificate the server serves, not one it skipped.

``serve()`` keeps ``meshkit_certificate_expiry_timestamp_seconds`` (notAfter) and
``meshkit_certificate_not_before_timestamp_seconds`` on the files on disk within
``reload_interval_s`` of a renewal, so that clients keeping their connections do not leave
``MeshkitCertificateExpiringSoon`` firing after a renewal. The TLS reloader skips a
renewal it cannot serve (expired or not valid yet, another workload's SPIFFE ID): the
gauges must then stay on the certificate still served, or they would show a notAfter
(hours ahead, for a foreign Secret) no handshake presents, and hide the alert that the
served certificate is running out. Real files, a real serve() over TLS on loopback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.auth import describe_certificate, init_ca_dir, load_certificate
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.observability import TelemetryOptions
from tests.auth.conftest import TD, Pki, auth_handler
from tests.support.wait import until


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A fresh mesh CA for trust domain ``meshkit.test``."""
    init_ca_dir(tmp_path / "pki", trust_domain=TD, ttl_days=2)
    return Pki(tmp_path / "pki")


def _expired(pki: Pki) -> None:
    pki.issue("gauged", ttl_h=1, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=3),
              overwrite=True)


def _not_yet_valid(pki: Pki) -> None:
    pki.issue("gauged", ttl_h=1, now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=2),
              overwrite=True)


def _another_workload(pki: Pki) -> None:
    # a wrong Secret: another service's valid pair under this service's file names
    pki.issue("otherd", ttl_h=30)
    shutil.copyfile(pki.dir / "otherd.key", pki.dir / "gauged.key")
    shutil.copyfile(pki.dir / "otherd.pem", pki.dir / "gauged.pem")


@pytest.mark.parametrize("renew", [_expired, _not_yet_valid, _another_workload],
                         ids=["expired", "not-yet-valid", "another-workload"])
async def test_gauges_stay_on_the_served_certificate_over_a_skipped_renewal(
        pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        renew: Callable[[Pki], None]) -> None:
    monkeypatch.delenv("MESHKIT_ADMIN_PORT", raising=False)
    tls = dataclasses.replace(pki.issue("gauged", ttl_h=2), reload_interval_s=0.1)
    reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=3.0, poll_interval_s=0.05))

    def add(_s: object, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((auth_handler(),))

    own = CollectorRegistry()
    srv = meshkit.MeshServer("gauged", [(add, None)], registry=reg, options=meshkit.ServeOptions(
        tls=tls, drain_delay_s=0, grace_s=0.5, telemetry=TelemetryOptions(registry=own)))
    await asyncio.wait_for(srv.start(), 10)

    def gauges() -> tuple[float | None, float | None]:
        return (own.get_sample_value("meshkit_certificate_not_before_timestamp_seconds",
                                     {"service": "gauged"}),
                own.get_sample_value("meshkit_certificate_expiry_timestamp_seconds",
                                     {"service": "gauged"}))

    def on_disk() -> tuple[float, float]:
        info = describe_certificate(load_certificate(tls.cert_file))
        return info.not_before.timestamp(), info.not_after.timestamp()

    try:
        served = on_disk()
        assert gauges() == served
        renew(pki)
        skipped = on_disk()
        assert skipped != served
        # ten reload intervals and more: the follower has read the new files by now
        for _ in range(15):
            await asyncio.sleep(0.1)
            assert gauges() == served, (gauges(), "the skipped renewal", skipped)
        # a usable renewal is then followed as before (the follower did run)
        pki.issue("gauged", ttl_h=30, overwrite=True,
                  now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2))
        renewed = on_disk()
        assert renewed not in (served, skipped)

        async def follows() -> bool:
            return gauges() == renewed

        await until(follows, timeout_s=10, interval_s=0.1,
                    what=f"the gauges on the usable renewal {renewed}, not {gauges()}")
    finally:
        await asyncio.wait_for(srv.drain(), 10)
        await reg.close()


async def test_gauges_start_on_the_certificate_the_credentials_serve(
        pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The files change to another workload's while start() sets the health statuses
    (after the server credentials read them, before the gauges were published): the
    gauges start on the certificate the credentials serve, not on the files read again,
    which the reloader will never serve (and which the follower, seeing no change after
    start, kept for good)."""
    from grpc_health.v1 import health, health_pb2_grpc

    monkeypatch.delenv("MESHKIT_ADMIN_PORT", raising=False)
    tls = dataclasses.replace(pki.issue("gauged", ttl_h=2), reload_interval_s=60.0)
    served = describe_certificate(load_certificate(tls.cert_file))

    class SwapWhileStarting(health.aio.HealthServicer):
        swapped = False

        async def set(self, service: str, status: Any) -> None:
            if not self.swapped:
                self.swapped = True
                _another_workload(pki)
            await super().set(service, status)

    reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=3.0, poll_interval_s=0.05))
    own_health = SwapWhileStarting()

    def add(_s: object, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((auth_handler(),))

    own = CollectorRegistry()
    servicers: list[Any] = [(add, None),
                            (health_pb2_grpc.add_HealthServicer_to_server, own_health)]
    srv = meshkit.MeshServer("gauged", servicers, registry=reg, options=meshkit.ServeOptions(
        tls=tls, drain_delay_s=0, grace_s=0.5, telemetry=TelemetryOptions(registry=own)))
    await asyncio.wait_for(srv.start(), 10)
    try:
        assert own_health.swapped
        assert describe_certificate(load_certificate(tls.cert_file)).not_after != \
            served.not_after  # the files are otherd's now
        assert (own.get_sample_value("meshkit_certificate_expiry_timestamp_seconds",
                                     {"service": "gauged"}),
                own.get_sample_value("meshkit_certificate_not_before_timestamp_seconds",
                                     {"service": "gauged"})) == (
            served.not_after.timestamp(), served.not_before.timestamp())
    finally:
        await asyncio.wait_for(srv.drain(), 10)
        await reg.close()
