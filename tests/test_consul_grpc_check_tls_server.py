"""Consul's gRPC check of a TLS server must be made over TLS.

A server serving TLS (mTLS, the default with ``MESHKIT_CERT_DIR``) registered with
``ConsulOptions(check="grpc")`` or ``"both"`` and ``grpc_use_tls=False`` (the default)
was accepted: Consul's agent then checks it in plaintext, a handshake no TLS port
answers, so the check goes critical at its first run (the instance out of every
watch, and reaped after ``deregister_critical_after_s``), with no word from meshkit. Now
``MeshServer`` refuses that pair at construction with a ``ConfigError`` naming it
(``check="ttl"``, or ``grpc_use_tls=True``, or a plaintext server, are accepted)."""

from __future__ import annotations

from pathlib import Path

import pytest

import meshkit
from meshkit.auth import TLSOptions, init_ca_dir, issue_into_dir
from meshkit.discovery import ConsulOptions, ConsulRegistry
from meshkit.errors import ConfigError
from tests.auth.conftest import TD
from tests.support.echo import add_echo


def _tls(tmp_path: Path) -> TLSOptions:
    pki = tmp_path / "pki"
    init_ca_dir(pki, trust_domain=TD, ttl_days=2)
    files = issue_into_dir(pki, "echo", ttl_h=1.0, dns=("localhost",), ips=("127.0.0.1",))
    return TLSOptions(ca_file=files.ca_file, cert_file=files.cert_file,
                      key_file=files.key_file)


def _server(registry: ConsulRegistry, **opts: object) -> meshkit.MeshServer:
    return meshkit.MeshServer("echo", [add_echo("a")], registry=registry,
                              options=meshkit.ServeOptions(admin=None, **opts))


@pytest.mark.parametrize("check", ["grpc", "both"])
async def test_a_plaintext_grpc_check_of_a_tls_server_is_refused(
        tmp_path: Path, check: str) -> None:
    reg = ConsulRegistry(ConsulOptions(addr="http://127.0.0.1:1", check=check))
    try:
        with pytest.raises(ConfigError) as info:
            _server(reg, tls=_tls(tmp_path))
        text = str(info.value)
        assert f"check={check!r}" in text and "grpc_use_tls" in text, text
    finally:
        await reg.close()


@pytest.mark.parametrize(("check", "use_tls", "tls"), [
    ("ttl", False, True), ("grpc", True, True), ("both", True, True),
    ("grpc", False, False)], ids=["ttl", "grpc-tls", "both-tls", "grpc-plaintext-server"])
async def test_the_pairs_a_check_can_pass_are_accepted(
        tmp_path: Path, check: str, use_tls: bool, tls: bool) -> None:
    reg = ConsulRegistry(ConsulOptions(addr="http://127.0.0.1:1", check=check,
                                       grpc_use_tls=use_tls))
    try:
        if tls:
            _server(reg, tls=_tls(tmp_path))
        else:
            _server(reg, insecure=True)
    finally:
        await reg.close()
