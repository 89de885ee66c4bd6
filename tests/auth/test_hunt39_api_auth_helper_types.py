"""The auth helpers given a value of another type fail with the error their docstrings
name, ConfigError, not a bare one: load_certificate/load_private_key/load_workload_key(None)
(``os.environ.get(...)`` of an unset variable) raised ``TypeError: expected str, bytes or
os.PathLike object, not NoneType`` and a bytes path another; SpiffeId.parse(None) an
``AttributeError ... 'encode'``; describe_certificate(the PEM text) ``AttributeError:
'str' object has no attribute 'extensions'``; check_server_identity(None, svc) ``...
'expected_server_id'``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from meshkit.auth import (
    SpiffeId,
    check_server_identity,
    describe_certificate,
    init_ca_dir,
    load_certificate,
    load_private_key,
    load_workload_key,
)
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

_LOADERS: dict[str, Callable[[object], object]] = {
    "load_certificate": load_certificate,  # type: ignore[dict-item]
    "load_private_key": load_private_key,  # type: ignore[dict-item]
    "load_workload_key": load_workload_key,  # type: ignore[dict-item]
}
_PATHS = {"none": None, "bytes": b"/etc/meshkit/ca.pem", "int": 3}


@pytest.mark.parametrize("path", sorted(_PATHS))
@pytest.mark.parametrize("loader", sorted(_LOADERS))
def test_a_path_of_another_type_is_a_config_error(loader: str, path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _LOADERS[loader](_PATHS[path])
    assert "path" in str(caught.value)


@pytest.mark.parametrize("value", ["none", "int", "list"])
def test_spiffe_id_parse_of_no_text_is_a_config_error(value: str) -> None:
    bad = {"none": None, "int": 5, "list": ["spiffe://mesh.test/svc/orderd"]}[value]
    with pytest.raises(ConfigError) as caught:
        SpiffeId.parse(bad)  # type: ignore[arg-type]
    assert "SPIFFE" in str(caught.value)


def test_describe_certificate_of_no_certificate_is_a_config_error(tmp_path: Path) -> None:
    files = init_ca_dir(tmp_path, trust_domain="mesh.test")
    cert = load_certificate(files.cert_file)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    for bad in (pem, pem.decode(), None, str(files.cert_file)):
        with pytest.raises(ConfigError) as caught:
            describe_certificate(bad)  # type: ignore[arg-type]
        assert "x509.Certificate" in str(caught.value) and "load_certificate" in str(
            caught.value)
        assert "BEGIN CERTIFICATE" not in str(caught.value)
    assert describe_certificate(cert).spiffe_id == "spiffe://mesh.test"


def test_check_server_identity_without_tls_options_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        check_server_identity(None, "orderd")  # type: ignore[arg-type]
    assert "tls" in str(caught.value) and "TLSOptions" in str(caught.value)


def test_the_right_types_still_load(tmp_path: Path) -> None:
    files = init_ca_dir(tmp_path, trust_domain="mesh.test")
    assert load_certificate(files.cert_file) is not None
    assert load_certificate(str(files.cert_file)) is not None
    assert load_private_key(files.key_file) is not None
    assert load_workload_key(files.key_file) is not None
    assert str(SpiffeId.parse(b"spiffe://mesh.test/svc/orderd")) == \
        "spiffe://mesh.test/svc/orderd"


def test_a_jwks_client_session_that_is_no_session_is_a_config_error() -> None:
    """JWKSClient(url, session="...") was taken, every fetch then failed (and every token
    with it, UNAUTHENTICATED)."""
    import aiohttp

    from meshkit.auth import JWKSClient

    for bad in ("session", aiohttp.ClientSession, True):
        with pytest.raises(ConfigError) as caught:
            JWKSClient("https://issuer.test/jwks", session=bad)  # type: ignore[arg-type]
        assert "session" in str(caught.value)


def test_a_credentials_reloader_without_tls_options_is_a_config_error() -> None:
    from meshkit.auth import ChannelCredentialsReloader

    with pytest.raises(ConfigError) as caught:
        ChannelCredentialsReloader(None)  # type: ignore[arg-type]
    assert "tls" in str(caught.value) and "TLSOptions" in str(caught.value)
