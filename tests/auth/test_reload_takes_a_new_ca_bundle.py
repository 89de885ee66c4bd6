"""A new CA bundle alone is taken by the reloaders even while the leaf in force is out of
its validity period: the validity and identity checks of a renewal (9ebcba5, fbe4e7e)
apply to a new leaf only. A trust bundle gaining a CA (a rotation's first step) must
reach the handshakes whatever state the workload's own certificate is in; the leaf is
renewed separately."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from structlog.testing import capture_logs

from meshkit.auth._tls import _ServerReloader
from tests.auth.chains import ca_of, foreign_ca, pem
from tests.auth.conftest import Pki

pytestmark = pytest.mark.timeout(30)


def _add_ca(pki: Pki) -> None:
    _, mesh = ca_of(pki)
    (pki.dir / "ca.pem").write_bytes(pem(mesh, foreign_ca("next mesh CA")[1]))


def test_channel_reloader_takes_a_new_bundle_beside_an_expired_leaf(pki: Pki) -> None:
    client = pki.issue("orderd", now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=3))
    reloader = client.channel_reloader()
    _add_ca(pki)
    with capture_logs() as logs:
        assert reloader.check(force=True) is True, logs
    assert reloader.generation == 2
    assert not any("skipped" in e["event"] for e in logs), logs


def test_server_reloader_takes_a_new_bundle_beside_an_expired_leaf(pki: Pki) -> None:
    server = pki.issue("userd", now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=3))
    reloader = _ServerReloader(server)  # what server_credentials() hands grpc
    _add_ca(pki)
    with capture_logs() as logs:
        for _ in range(200):  # reload_interval_s=0.05 on the monotonic clock
            if reloader() is not None:
                break
            time.sleep(0.02)
    assert reloader.reloads == 1, logs
    assert not any("skipped" in e["event"] for e in logs), logs
