"""A renewal a few seconds from its notBefore (an issuer's clock slightly ahead) is
skipped, logged once, and taken by the first reload after it becomes valid: not kept out
for long, not one warning per reload interval (9ebcba5, the review's clock-skew case)."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from structlog.testing import capture_logs

from meshkit.auth import issue_into_dir
from meshkit.auth._tls import _ServerReloader
from tests.auth.conftest import Pki

pytestmark = pytest.mark.timeout(60)

AHEAD_S = 2.0  # notBefore this far in the future (meshkit backdates 5 min: undone here)


def _renew_ahead(pki: Pki, service: str) -> float:
    now = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5, seconds=AHEAD_S)
    issue_into_dir(pki.dir, service, ttl_h=1, dns=("localhost",), now=now, overwrite=True)
    return time.time() + AHEAD_S


def test_channel_reloader_takes_the_renewal_once_valid_after_one_warning(pki: Pki) -> None:
    client = pki.issue("orderd")  # reload_interval_s=0.05
    reloader = client.channel_reloader()
    with capture_logs() as logs:
        valid_at = _renew_ahead(pki, "orderd")
        deadline = time.monotonic() + 30
        while not reloader.check() and time.monotonic() < deadline:
            time.sleep(0.02)
    assert reloader.generation == 2, logs
    assert time.time() >= valid_at - 1.0  # not taken before it was valid (the clock's second)
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1 and "not valid until" in warnings[0]["error"], warnings
    assert [e["event"] for e in logs][-2:] == ["certificate files readable again",
                                              "client certificate reloaded"]


def test_server_reloader_takes_the_renewal_once_valid_after_one_warning(pki: Pki) -> None:
    server = pki.issue("userd")
    reloader = _ServerReloader(server)  # grpc calls it before each handshake
    with capture_logs() as logs:
        _renew_ahead(pki, "userd")
        deadline = time.monotonic() + 30
        while reloader() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # a handshake every 20 ms
    assert reloader.reloads == 1, logs
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1 and "not valid until" in warnings[0]["error"], warnings
