"""The certificate gauges judge a renewal against the certificate they show now, not the
one served at start: after a usable renewal, the files going back to the start's
certificate, expired meanwhile (a Secret rolled back, a stale copy restored), is a renewal
the TLS reloader skips (RFC 5280 4.1.2.5: not valid at this time), so the gauges stay on
the renewed certificate. Pins 02686b6's update of the material the follower judges
against (no test failed without it). Real files, a real serve() over TLS on loopback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import shutil
import time
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.auth import describe_certificate, init_ca_dir, load_certificate
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.observability import TelemetryOptions
from tests.auth.conftest import TD, Pki, auth_handler
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


async def test_gauges_stay_on_the_renewal_when_the_files_go_back_to_an_expired_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHKIT_ADMIN_PORT", raising=False)
    init_ca_dir(tmp_path / "pki", trust_domain=TD, ttl_days=2)
    pki = Pki(tmp_path / "pki")
    # valid for 6 more seconds: serve() starts on it, it expires during the test
    tls = dataclasses.replace(
        pki.issue("gauged", ttl_h=1,
                  now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1) + dt.timedelta(seconds=6)),
        reload_interval_s=0.1)
    first = tmp_path / "first"
    first.mkdir()
    shutil.copyfile(tls.cert_file, first / "gauged.pem")
    shutil.copyfile(tls.key_file, first / "gauged.key")
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
        started = on_disk()
        assert gauges() == started
        pki.issue("gauged", ttl_h=30, overwrite=True)
        renewed = on_disk()

        async def follows() -> bool:
            return gauges() == renewed

        await until(follows, timeout_s=10, interval_s=0.1,
                    what=f"the gauges on the renewal {renewed}, not {gauges()}")
        await asyncio.sleep(max(0.0, started[1] + 1 - time.time()))  # the first expired
        shutil.copyfile(first / "gauged.key", tls.key_file)
        shutil.copyfile(first / "gauged.pem", tls.cert_file)
        assert on_disk() == started
        for _ in range(15):  # ten reload intervals and more: the follower has read them
            await asyncio.sleep(0.1)
            assert gauges() == renewed, (gauges(), "the expired certificate", started)
    finally:
        await asyncio.wait_for(srv.drain(), 10)
        await reg.close()
