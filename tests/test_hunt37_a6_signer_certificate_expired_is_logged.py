"""A message signer whose certificate has expired (or is not valid yet) says so.

Consumers check a message's certificate at its signed send time: once the publisher's
certificate expired with no renewal taken (the renewal job stopped, the Secret never
updated), every event it signed was refused and dead-lettered by every consumer
("publisher certificate refused at the message's send time: the certificate has
expired"), and the publisher's own logs said nothing: the signer kept signing. The TLS
side of the same workload logs ``client certificate expired`` in that state. The signer
now logs ``message signer certificate expired`` / ``... not valid yet`` (warning, as an
outage: once, then reminders at most every 60 s) while it signs with such a
certificate, and ``message signer certificate valid again`` once it no longer does.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from meshkit.auth import init_ca_dir, issue_into_dir
from meshkit.messaging import MessageSigner

pytestmark = pytest.mark.timeout(30)

_ARGS = {"msg_id": "e1", "subject": "orders.placed", "payload": b"{}"}


@pytest.mark.parametrize("case", ["expired", "not_valid_yet"])
def test_signing_with_a_certificate_out_of_its_validity_is_logged_once(
        tmp_path: Path, case: str) -> None:
    now = dt.datetime.now(dt.UTC)
    init_ca_dir(tmp_path, trust_domain="meshkit.test", ttl_days=3,
                now=now - dt.timedelta(days=1))
    issue_into_dir(tmp_path, "orderd", ttl_h=2, now=now - dt.timedelta(hours=1))
    clock = [now.timestamp() + (2 * 3600 if case == "expired" else -2 * 3600)]
    signer = MessageSigner.from_dir(tmp_path, "orderd", reload_interval_s=None,
                                    clock=lambda: clock[0])
    with capture_logs() as logs:
        for _ in range(3):
            signer.sign({}, **_ARGS)  # type: ignore[arg-type]
        clock[0] = now.timestamp()  # back within its period (a clock put right)
        signer.sign({}, **_ARGS)  # type: ignore[arg-type]
        signer.sign({}, **_ARGS)  # type: ignore[arg-type]
    event = "expired" if case == "expired" else "not valid yet"
    lines = [(e["log_level"], e["event"]) for e in logs]
    assert lines == [("warning", f"message signer certificate {event}"),
                     ("info", "message signer certificate valid again")], lines
    warning = logs[0]
    assert warning["spiffe_id"] == "spiffe://meshkit.test/svc/orderd"
    assert "consumers refuse" in warning["error"]


def test_a_valid_certificate_logs_nothing(tmp_path: Path) -> None:
    init_ca_dir(tmp_path, trust_domain="meshkit.test", ttl_days=3)
    issue_into_dir(tmp_path, "orderd", ttl_h=2)
    signer = MessageSigner.from_dir(tmp_path, "orderd")
    with capture_logs() as logs:
        signer.sign({}, **_ARGS)  # type: ignore[arg-type]
    assert logs == []
