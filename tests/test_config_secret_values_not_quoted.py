"""A mistaken value given to an option that holds key material is named by its type, not
quoted, on the client side and in messaging and JWT signing, as ``ServeOptions`` does
since f39e1a8.

What was wrong: ``check_instance`` quotes a wrong value in full, so
``DialOptions(credentials=<the private key's PEM bytes>)`` (a ``(key, cert)`` pair, as
``grpc.ssl_channel_credentials`` takes), ``DialOptions(tls=<key bytes>)``,
``TokenIssuer(<a PEM private key string>, ...)``, ``PublishOptions(signer=<an HMAC key>)``
or ``ConsumerOptions(verifier=<the key>)`` put the key itself into the ``ConfigError``'s
message, and so into tracebacks and logs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import meshkit
from meshkit.auth import IssuerOptions, TokenIssuer
from meshkit.errors import ConfigError
from meshkit.messaging import ConsumerOptions, PublishOptions

SECRET = ("-----BEGIN PRIVATE KEY-----\n"
          "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7-s3cr3t\n")

CASES: dict[str, Callable[[Any], object]] = {
    "dial-credentials": lambda v: meshkit.DialOptions(credentials=v),
    "dial-tls": lambda v: meshkit.DialOptions(tls=v),
    "issuer-keys": lambda v: TokenIssuer(v, IssuerOptions(issuer="https://id.example",
                                                          audience="orders")),
    "publish-signer": lambda v: PublishOptions(signer=v),
    "consumer-verifier": lambda v: ConsumerOptions(stream="ORDERS", durable="d", verifier=v),
}


@pytest.mark.parametrize("value", [SECRET, SECRET.encode(), (SECRET.encode(), b"cert")],
                         ids=["str", "bytes", "pair"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_key_given_to_an_option_is_not_quoted(case: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        CASES[case](value)
    text = str(info.value)
    assert "s3cr3t" not in text and "PRIVATE KEY" not in text, text
    assert type(value).__qualname__ in text, text  # named by its type
    assert "not shown" in text, text


@pytest.mark.parametrize("case", ["dial-credentials", "dial-tls", "publish-signer"])
def test_a_bool_is_still_quoted_with_its_hint(case: str) -> None:
    with pytest.raises(ConfigError, match="got True"):
        CASES[case](True)
