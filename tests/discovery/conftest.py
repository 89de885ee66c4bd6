"""Fixtures shared by the discovery suites (the Consul and etcd registries')."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def slow_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """``slow-dns.test`` resolves to 127.0.0.1 once the event yielded is set (a DNS server
    that answers late), within 10 s."""
    release = threading.Event()
    real = socket.getaddrinfo

    def lookup(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "slow-dns.test":
            release.wait(10)
            host = "127.0.0.1"
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    try:
        yield release
    finally:
        release.set()
