"""The identity headers an authenticating proxy adds stay loggable: commit 0176540 made
``auth`` as a whole word of a name sensitive (``x-auth``, ``x-sentry-auth``), which also
caught the headers oauth2-proxy sets for the upstream after the login, as Istio/Envoy
``ext_authz`` set-ups forward them (``x-auth-request-user``, ``x-auth-request-email``,
``x-auth-request-groups``, ``x-auth-request-preferred-username``) and ``x-auth-user`` /
``x-auth-email`` (Cloudflare's account e-mail, sent beside ``x-auth-key``): who made the
call, no credential, and exactly what an access log is for. They were accepted by
``TelemetryOptions(log_metadata=...)`` before that commit, and were refused
(``ConfigError``) after it: a service logging them failed to start on upgrade. A name
that goes on after the identity word, or a token among them, stays sensitive."""

from __future__ import annotations

import pytest

from meshkit.observability import TelemetryOptions, is_sensitive_key

IDENTITY_HEADERS = ("x-auth-request-user", "x-auth-request-email", "x-auth-request-groups",
                    "x-auth-request-preferred-username", "x-auth-user", "x-auth-email",
                    "X-Auth-Request-User", "x_auth_request_email")
STILL_SENSITIVE = ("x-auth-request-access-token", "x-auth", "x-sentry-auth", "x-auth-key",
                   "x-auth-user-key", "x-auth-request", "x-auth-user-secret", "auth",
                   "x-auth-emailer", "x-oauth", "x-authz", "auth-bin")


def test_identity_headers_are_not_credentials_and_credentials_still_are() -> None:
    assert [k for k in IDENTITY_HEADERS if is_sensitive_key(k)] == []
    assert [k for k in STILL_SENSITIVE if not is_sensitive_key(k)] == []


@pytest.mark.parametrize("key", [k for k in IDENTITY_HEADERS if k == k.lower()])
def test_log_metadata_takes_them(key: str) -> None:
    """The access log may include them, as before commit 0176540."""
    assert TelemetryOptions(log_metadata=(key,)).log_metadata == (key,)
