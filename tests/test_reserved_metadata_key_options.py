"""Options naming a metadata key refuse the keys grpc reads or writes itself.

``DialOptions.hash_key_metadata``, ``RetryPolicy.idempotency_metadata_key``,
``JWTAuthOptions.metadata_key`` and ``TokenForwarder(metadata_key=)`` were checked for the
characters of a gRPC metadata key only, so ``grpc-timeout``, ``grpc-status``, ``te`` or
``content-type`` were accepted: grpc core consumes these and leaves them out of
``invocation_metadata()`` (PROTOCOL-HTTP2.md), and a request carrying ``grpc-status`` is
answered ``OK`` without its response (grpc.aio), so such an option silently never matched,
or broke every call. ``by_metadata`` already refused them; now every option does, with a
``ConfigError`` quoting the key (construction only, nothing per call).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import meshkit
from meshkit.auth import JWTAuthOptions, TokenForwarder
from meshkit.errors import ConfigError
from meshkit.resilience import RetryPolicy

_OPTIONS: dict[str, Callable[[str], Any]] = {
    "hash_key_metadata": lambda k: meshkit.DialOptions(insecure=True, hash_key_metadata=k),
    "idempotency_metadata_key": lambda k: RetryPolicy(idempotency_metadata_key=k),
    "JWTAuthOptions.metadata_key": lambda k: JWTAuthOptions(metadata_key=k),
    "TokenForwarder.metadata_key": lambda k: TokenForwarder(metadata_key=k),
}


@pytest.mark.parametrize("key", ["grpc-status", "grpc-timeout", "grpc-message",
                                 "grpc-encoding", "te", "content-type", "connection"])
@pytest.mark.parametrize("option", sorted(_OPTIONS))
def test_a_key_grpc_consumes_is_refused(option: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        _OPTIONS[option](key)
    assert repr(key) in str(err.value), err.value


@pytest.mark.parametrize("option", sorted(_OPTIONS))
def test_an_application_key_is_accepted(option: str) -> None:
    _OPTIONS[option]("x-user-key")
