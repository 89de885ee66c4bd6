"""``JWKSClient`` arguments of the wrong type are a ``ConfigError`` when it is built:
options that are no ``JWKSClientOptions`` (a ``VerifierOptions`` given for them, a dict)
were an ``AttributeError``, and a URL that is neither a string nor a callable (``None``,
bytes, a ``Path``) was taken, every fetch then failing ("the JWKS URL provider failed:
TypeError") and every call with a token refused ``UNAUTHENTICATED``. A URL of the wrong
type is named by its type, never quoted (it may carry a password)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshkit.auth import JWKSClient, JWKSClientOptions, VerifierOptions
from meshkit.errors import ConfigError

URL = "https://idp.meshkit.test/.well-known/jwks.json"


@pytest.mark.parametrize("options", [
    VerifierOptions(issuer="https://idp.meshkit.test", audience="ecom"),
    {"refresh_interval_s": 60.0},
    True,
], ids=["verifier-options", "dict", "true"])
@pytest.mark.parametrize("url", [URL, lambda: URL], ids=["string", "provider"])
def test_options_of_another_type_are_refused(options: Any, url: Any) -> None:
    """Options of another type: ``ConfigError`` naming ``options``."""
    with pytest.raises(ConfigError, match="options must be a JWKSClientOptions or None"):
        JWKSClient(url, options)


@pytest.mark.parametrize("url", [None, b"https://u:secret@idp.meshkit.test/jwks",
                                 Path("/jwks.json"), 42],
                         ids=["none", "bytes", "path", "int"])
def test_urls_of_another_type_are_refused(url: Any) -> None:
    """A URL that is neither a string nor a callable: ``ConfigError``, type named."""
    with pytest.raises(ConfigError, match="url must be") as err:
        JWKSClient(url)
    assert "secret" not in str(err.value)
    assert type(url).__name__ in str(err.value)


def test_the_right_types_are_taken() -> None:
    """A URL string or provider, options or none, are taken as before."""
    JWKSClient(URL)
    JWKSClient(lambda: URL, JWKSClientOptions(refresh_interval_s=60.0))
