"""``deny_subjects`` wildcards refuse subjects holding a ``/``. A JWT ``sub`` is an
opaque string of the issuer's (GitHub Actions' ``repo:org/repo:ref:refs/heads/main``, a
JWT-SVID's ``spiffe://td/ns/x/sa/y``), yet the identity matcher's ``*`` stops at ``/``, so
``deny_subjects=("repo:evil-org/*",)`` refused ``repo:evil-org/x`` and let
``repo:evil-org/x:ref:refs/heads/main`` in through ``allow_subjects=("*",)``: a deny list
that fails open. In ``deny_subjects`` a ``*`` now matches any run of characters, ``/``
included (a deny list errs on refusing); allow lists keep the ``/``-bound ``*``."""

from __future__ import annotations

import grpc
import pytest

from meshkit.auth import AuthzPolicy, Claims, Rule


def _claims(subject: str) -> Claims:
    return Claims(subject=subject, issuer="https://issuer.test", audience=("ecom",),
                  scopes=frozenset(), expires_at=4e9)


POLICY = AuthzPolicy(default=Rule(allow_subjects=("*",), deny_subjects=(
    "repo:evil-org/*", "mallory*", "spiffe://td.test/ns/*/sa/bad", "exact/one")))

DENIED = ["repo:evil-org/x", "repo:evil-org/x:ref:refs/heads/main", "mallory",
          "mallory/admin", "spiffe://td.test/ns/a/b/sa/bad", "spiffe://td.test/ns/a/sa/bad",
          "exact/one"]
ALLOWED = ["repo:good-org/x:ref:refs/heads/main", "alice", "alice/mallory",
           "spiffe://td.test/ns/a/sa/good", "exact/one/two", "exact/on"]


@pytest.mark.parametrize("subject", DENIED, ids=[f"d{i}" for i in range(len(DENIED))])
def test_a_deny_wildcard_spans_slashes(subject: str) -> None:
    decision = POLICY.evaluate("/ecom.v1.OrderService/Get", None, _claims(subject))
    assert not decision.allowed
    assert decision.code is grpc.StatusCode.PERMISSION_DENIED
    assert decision.reason == "subject is denied"


@pytest.mark.parametrize("subject", ALLOWED, ids=[f"a{i}" for i in range(len(ALLOWED))])
def test_other_subjects_still_allowed(subject: str) -> None:
    assert POLICY.evaluate("/ecom.v1.OrderService/Get", None, _claims(subject)).allowed


def test_allow_wildcards_keep_stopping_at_a_slash() -> None:
    policy = AuthzPolicy(default=Rule(allow_subjects=("team-a:*",)))
    assert policy.evaluate("/a.B/C", None, _claims("team-a:bob")).allowed
    assert not policy.evaluate("/a.B/C", None, _claims("team-a:bob/admin")).allowed


def test_deny_patterns_still_checked() -> None:
    from meshkit.errors import ConfigError
    with pytest.raises(ConfigError):
        Rule(deny_subjects=("",))
    with pytest.raises(ConfigError):
        Rule(deny_subjects="mallory*")  # type: ignore[arg-type]
