"""Fixtures shared by the discovery suites (the Consul and etcd registries')."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest


class SlowDns(threading.Event):
    """Set it to let the lookups of ``slow-dns.test`` answer; :attr:`asked` is set once
    one has started (a call is then waiting for it)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = threading.Event()


@pytest.fixture
def slow_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowDns]:
    """``slow-dns.test`` resolves to 127.0.0.1 once the event yielded is set (a DNS server
    that answers late), within 10 s."""
    release = SlowDns()
    real = socket.getaddrinfo

    def lookup(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "slow-dns.test":
            release.asked.set()
            release.wait(10)
            host = "127.0.0.1"
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    try:
        yield release
    finally:
        release.set()
