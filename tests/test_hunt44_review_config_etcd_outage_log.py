"""An etcd outage that fails every watched service's reads is logged once, the line
naming the services, and its end once (review of 9f6655ae/157aa679, which fixed it for
Consul): it was N start lines for N services (each watch's first failure started its
service's own outage before the last one started the registry's) and N end lines (each
service's own outage ended after the registry's). A fault of one service's reads alone
is still logged once, at its second failed read in a row, and its end once."""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from meshkit.discovery import EtcdOptions, EtcdRegistry


def _registry(services: list[str]) -> EtcdRegistry:
    reg = EtcdRegistry(EtcdOptions(endpoints=("http://127.0.0.1:1",)))
    for s in services:
        reg._reads.watch_started(s)
        reg._service_outcome(s, None)  # each watch has read
    return reg


def _lines(logs: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"].startswith(prefix)]


def test_an_outage_of_every_watched_service_is_logged_once() -> None:
    """Three services' watches failing one after another: one start line naming them
    all, one end line; status() unreadable in between."""
    names = ["svc-a", "svc-b", "svc-c"]
    reg = _registry(names)
    with capture_logs() as logs:
        for _ in range(3):
            for s in names:
                reg._service_outcome(s, f"watch of {s!r}: connection refused")
        assert reg.status().readable is False
        for s in names:
            reg._service_outcome(s, None)
    assert reg.status().readable is True
    started = _lines(logs, "etcd cannot be read")
    assert len(started) == 1, [(e["event"], e.get("service")) for e in started]
    assert started[0]["services"] == names and started[0]["service_count"] == 3
    back = _lines(logs, "etcd readable again")
    assert len(back) == 1, [(e["event"], e.get("service")) for e in back]


def test_one_service_failing_alone_is_logged_once_with_its_end() -> None:
    """One service's reads failing while another reads: its start at its second failed
    read in a row, one line, and its end; a single failed read logs nothing."""
    reg = _registry(["good", "bad"])
    with capture_logs() as logs:
        reg._service_outcome("bad", "permission denied")
        assert _lines(logs, "etcd cannot be read") == []
        reg._service_outcome("bad", None)  # one failure, read again: nothing logged
        assert logs == []
        for _ in range(3):
            reg._service_outcome("bad", "permission denied")
        assert reg.status().readable is not False
        assert reg.status("bad").readable is False
        reg._service_outcome("bad", None)
    started = _lines(logs, "etcd cannot be read")
    assert len(started) == 1 and started[0]["service"] == "bad", started
    assert "services" not in started[0]
    back = _lines(logs, "etcd readable again")
    assert len(back) == 1 and back[0]["service"] == "bad", back
