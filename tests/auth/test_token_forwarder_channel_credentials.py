"""``DialOptions`` refuses channel credentials that carry an access token beside a
``TokenForwarder`` on the default key: both write ``authorization``, grpc sends the
header twice, and a meshkit server's JWT check refuses the repeated header
(``UNAUTHENTICATED``) on every call the forwarder stamps. A forwarder under a key of its
own, or plain TLS credentials, are fine."""

from __future__ import annotations

import grpc
import pytest

import meshkit
from meshkit.auth import TokenForwarder
from meshkit.errors import ConfigError


def _with_token() -> grpc.ChannelCredentials:
    return grpc.composite_channel_credentials(grpc.ssl_channel_credentials(),
                                              grpc.access_token_call_credentials("svc"))


def test_token_channel_credentials_beside_a_default_forwarder_are_refused() -> None:
    """The clash fails at construction, naming both."""
    with pytest.raises(ConfigError, match="TokenForwarder") as err:
        meshkit.DialOptions(credentials=_with_token(), interceptors=(TokenForwarder(),))
    assert "authorization" in str(err.value)


def test_a_forwarder_with_its_own_key_or_plain_tls_is_accepted() -> None:
    """Under ``x-user-token`` the two headers differ; TLS credentials carry no token."""
    meshkit.DialOptions(credentials=_with_token(),
                        interceptors=(TokenForwarder(metadata_key="x-user-token"),))
    meshkit.DialOptions(credentials=grpc.ssl_channel_credentials(),
                        interceptors=(TokenForwarder(),))
