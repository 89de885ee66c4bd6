"""A client dialing a service whose identity DNS name ``<service>.svc.<td>`` would be over
253 characters is refused when the channel is built.

The issuer refuses such a workload (tests/auth/test_hunt43_identity_name_length.py), so
no server can hold that name; but ``TLSOptions.channel_options(service)`` handed the
268-character name to grpc as ``grpc.ssl_target_name_override`` and ``dial()`` built a
channel whose every call failed its TLS handshake (``UNAVAILABLE``). 253 is the most a
DNS name may have (RFC 1035 §2.3.4: 255 octets on the wire, 253 characters written).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import meshkit
from meshkit.auth import init_ca_dir, issue_into_dir, tls_from_dir
from meshkit.discovery import LocalRegistry
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


def _domain(total: int) -> str:
    """A trust domain of ``total`` characters in labels of at most 63."""
    labels, left = [], total
    while left > 0:
        n = min(63, left)
        labels.append("d" * n)
        left -= n + 1
    td = ".".join(labels)
    return td if len(td) == total else td[:-1] + "e"


def _client(tmp_path: Path, td: str) -> meshkit.auth.TLSOptions:
    init_ca_dir(tmp_path / "pki", trust_domain=td, ttl_days=1)
    issue_into_dir(tmp_path / "pki", "clientd", ttl_h=1)
    return tls_from_dir(tmp_path / "pki", "clientd")


def test_channel_options_refuse_an_identity_name_over_253_characters(tmp_path: Path) -> None:
    """``channel_options("s" * 63)`` in a 200-character trust domain is a ConfigError
    naming the length, the bound and where it comes from; 253 characters is taken."""
    td = _domain(200)
    tls = _client(tmp_path, td)
    with pytest.raises(ConfigError, match="253") as err:
        tls.channel_options("s" * 63)
    assert "268" in str(err.value) and "RFC 1035" in str(err.value)
    fits = "s" * (253 - len(".svc.") - len(td))
    [(key, name)] = tls.channel_options(fits)
    assert key == "grpc.ssl_target_name_override" and len(name) == 253


async def test_dial_refuses_it_when_built(tmp_path: Path, registry: LocalRegistry) -> None:
    """``dial()`` of that service with ``tls`` fails at construction, not per call."""
    tls = _client(tmp_path, _domain(200))
    with pytest.raises(ConfigError, match="253"):
        meshkit.dial("s" * 63, registry=registry, options=meshkit.DialOptions(tls=tls))
