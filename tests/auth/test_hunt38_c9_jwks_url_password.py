"""A JWKS URL whose password holds an unencoded ``/``, ``?`` or ``#`` was quoted with it.

``JWKSClient`` shows its URL in errors and logs without user info, query or fragment
(``_shown_url``), but took the user info from ``urllib.parse.urlsplit``'s netloc, which
ends at the first ``/``, ``?`` or ``#``: for ``https://svc:Zq8s3cr/et9Kx@idp/jwks`` (a
generated or base64 password pasted unencoded) the netloc is ``svc:Zq8s3cr``, no ``@`` in
it, so the password (whole, or its start) was quoted in every failed fetch's
``JWKSError`` ("JWKS fetch from https://svc:Zq8s3cr/et9Kx@... failed"), logged by the
verifier at each refresh, and in the plain-http ``ConfigError``. User info is now taken up
to the last ``@`` after ``//``, as meshkit's other URIs are shown (``meshkit._uris``).
"""

from __future__ import annotations

import pytest

from meshkit.auth import JWKSClient, JWKSClientOptions, JWKSError
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

# a password with an unencoded '/', '?' or '#': its two halves must never show
HALVES = ("Zq8s3cr", "et9Kx")
URLS = {
    "slash": "https://svc:Zq8s3cr/et9Kx@127.0.0.1:1/jwks",
    "question-mark": "https://svc:Zq8s3cr?et9Kx@127.0.0.1:1/jwks",
    "hash": "https://svc:Zq8s3cr#et9Kx@127.0.0.1:1/jwks",
}


def _chain_text(exc: BaseException) -> str:
    """The message and the reprs of the exceptions a traceback of ``exc`` would show."""
    parts = [str(exc), repr(exc)]
    seen = exc
    while True:
        nxt = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
        if nxt is None:
            return "\n".join(parts)
        parts += [str(nxt), repr(nxt)]
        seen = nxt


@pytest.mark.parametrize("name", sorted(URLS))
async def test_a_failed_fetch_does_not_quote_the_password(name: str) -> None:
    client = JWKSClient(URLS[name], JWKSClientOptions(fetch_timeout_s=2))
    with pytest.raises(JWKSError) as err:
        await client.refresh()
    text = _chain_text(err.value)
    assert "JWKS fetch from https://" in text
    assert [h for h in HALVES if h in text] == [], text


@pytest.mark.parametrize("name", sorted(URLS))
def test_the_plain_http_refusal_does_not_quote_the_password(name: str) -> None:
    url = URLS[name].replace("https://", "http://").replace("127.0.0.1:1", "idp.example")
    with pytest.raises(ConfigError, match="plain http") as err:
        JWKSClient(url)
    assert [h for h in HALVES if h in _chain_text(err.value)] == [], str(err.value)


def test_a_url_without_user_info_is_shown_without_its_query() -> None:
    """What is shown of a URL with no password: scheme, host and path (a token in the
    query or fragment dropped, as before)."""
    with pytest.raises(ConfigError) as err:
        JWKSClient("http://idp.example/keys/jwks?access_token=Zq8s3cr#et9Kx")
    assert "'http://idp.example/keys/jwks'" in str(err.value)
