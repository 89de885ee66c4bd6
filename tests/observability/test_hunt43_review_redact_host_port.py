"""A host named like a credential keeps its port, path and scp path in log text.

d5ad589e made ``:`` separate a credential-named key from its value (``x-api-key: k``),
so a host whose name merely holds such a word had what follows its ``:`` replaced:
``http://auth:8080/login`` -> ``http://auth:[REDACTED]`` (the port and the path gone),
``dns:///token-service:50051``, ``connected to auth.default.svc:443``,
``oauth.example.com:443``, ``git@auth-server:org/repo.git``. Those are a URL's or a
gRPC target's authority and scp's ``user@host:path``, not ``key: value`` pairs.

Now a ``:`` pair is no credential when its key stands right after ``//`` or ``@`` (an
authority, scp's host), or when the ``:`` is followed, with no blank on either side, by
a port (1 to 5 digits, then the end, a blank or a URL delimiter). ``password: 1234``
(a blank), ``password=1234``, ``x-api-key:k-12345``, ``Authorization: Bearer t`` are
still redacted.
"""

from __future__ import annotations

import time

import pytest

from meshkit.observability import redact_secrets

pytestmark = pytest.mark.timeout(60)

# left as they are
_KEPT = {
    "url-port-path": "GET http://auth:8080/login failed",
    "target": "dial dns:///auth-service:50051 ok",
    "fqdn-port": "connected to auth.default.svc:443",
    "fqdn-port-period": "connected to oauth.example.com:443.",
    "service-port": "token-service:50051 down",
    "url-port-db": "http://session-key-store:6379/0",
    "scp": "pushed to git@auth-server:org/repo.git",
    "scp-abs": "rsync deploy@secrets-host:/srv/x done",
    "pair-of-target": "endpoint=jwt-issuer:8443 ok",
}

# still redacted: (text, shown)
_REDACTED = {
    "blank-digits": ("password: 1234 set", "password: [REDACTED] set"),
    "eq-digits": ("password=1234 set", "password=[REDACTED] set"),
    "api-key": ("x-api-key:k-12345 sent", "x-api-key:[REDACTED] sent"),
    "header": ("Authorization: Bearer abcdefgh1 x", "Authorization: [REDACTED] x"),
    "token-colon": ("token:abc123", "token:[REDACTED]"),
    "long-digits": ("pin token:12345678", "pin token:[REDACTED]"),
    "userinfo-and-host": ("http://u:p@auth:8080/x", "http://[REDACTED]@auth:8080/x"),
}


def _all_fields(value: str) -> dict[str, object]:
    return redact_secrets(None, "info", {"event": value, "v": value, "b": value.encode(),
                                         "l": [value]})


@pytest.mark.parametrize("case", list(_KEPT), ids=list(_KEPT))
def test_a_credential_looking_host_keeps_its_port_and_path(case: str) -> None:
    value = _KEPT[case]
    assert _all_fields(value) == {"event": value, "v": value, "b": value.encode(),
                                  "l": [value]}


@pytest.mark.parametrize("case", list(_REDACTED), ids=list(_REDACTED))
def test_credentials_are_still_redacted(case: str) -> None:
    value, shown = _REDACTED[case]
    assert _all_fields(value) == {"event": shown, "v": shown, "b": shown.encode(),
                                  "l": [shown]}


_N = 200_000
_SHAPES = {
    "hosts": "auth:8080 " * (_N // 10),
    "hosts-run": "auth:1" * (_N // 6),
    "slashes": "//auth:" * (_N // 7),
    "ats": "@token:" * (_N // 7),
    "digits": "token:" + "1" * _N,
}


@pytest.mark.parametrize("shape", list(_SHAPES), ids=list(_SHAPES))
def test_linear_in_the_length(shape: str) -> None:
    value = _SHAPES[shape]
    start = time.perf_counter()
    redact_secrets(None, "info", {"event": "e", "v": value, "b": value.encode()})
    assert time.perf_counter() - start < 5.0
