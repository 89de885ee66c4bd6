"""``JWKSClient.refresh()`` raises ``JWKSError`` when the URL provider fails.

Its docstring promises ``JWKSError`` for a failed fetch, and a service warming its keys
at start (``await jwks.refresh()`` inside ``except JWKSError``) relies on it; a provider
that raised anything else (a registry lookup's own error, a ``KeyError`` on an endpoint's
meta) went through as that error and crashed the start. Now a ``JWKSError`` names the
provider's error type (never its text, which may hold a URL with a token).
"""

from __future__ import annotations

import pytest

from meshkit.auth import JWKSClient, JWKSError

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_failing_provider_is_a_jwks_error(asynchronous: bool) -> None:
    def sync() -> str:
        raise KeyError("https://u:secret@issuer/jwks")

    async def provider() -> str:
        return sync()

    client = JWKSClient(provider if asynchronous else sync)
    with pytest.raises(JWKSError, match="KeyError") as err:
        await client.refresh()
    assert "secret" not in str(err.value)
