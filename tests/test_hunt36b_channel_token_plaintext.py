"""A ``TokenForwarder`` on a plaintext channel (``DialOptions(insecure=True)``) would send
the caller's bearer token in the clear to whoever answers on the network; grpc-go's token
credentials refuse such a channel (``RequireTransportSecurity``). ``DialOptions`` refuses
it at construction unless the forwarder was told ``allow_plaintext=True`` (a loopback
demo, a test)."""

from __future__ import annotations

import dataclasses

import pytest

import meshkit
from meshkit.auth import TokenForwarder
from meshkit.errors import ConfigError


def test_a_forwarder_on_a_plaintext_channel_is_refused() -> None:
    """Refused at construction, and when ``insecure`` is set by ``dataclasses.replace``."""
    with pytest.raises(ConfigError, match="allow_plaintext") as err:
        meshkit.DialOptions(insecure=True, interceptors=(TokenForwarder(),))
    assert "TokenForwarder" in str(err.value)
    secure = meshkit.DialOptions(interceptors=(TokenForwarder(services=("userd",)),))
    with pytest.raises(ConfigError, match="plaintext"):
        dataclasses.replace(secure, insecure=True)


def test_an_explicit_opt_in_is_accepted() -> None:
    """``allow_plaintext=True`` (checked to be a flag) lets it through."""
    meshkit.DialOptions(insecure=True,
                        interceptors=(TokenForwarder(allow_plaintext=True),))
    with pytest.raises(ConfigError, match="allow_plaintext"):
        TokenForwarder(allow_plaintext="false")  # type: ignore[arg-type]


def test_plaintext_channel_credentials_are_refused_too() -> None:
    """``credentials=grpc.experimental.insecure_channel_credentials()`` is plaintext as
    well (a secure_channel over no security): refused the same way; local credentials
    (loopback or a Unix socket, which grpc counts as secure enough) are accepted."""
    import grpc.experimental

    with pytest.raises(ConfigError, match="allow_plaintext"):
        meshkit.DialOptions(credentials=grpc.experimental.insecure_channel_credentials(),
                            interceptors=(TokenForwarder(),))
    meshkit.DialOptions(credentials=grpc.local_channel_credentials(),
                        interceptors=(TokenForwarder(),))
