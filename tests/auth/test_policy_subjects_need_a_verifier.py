"""AuthOptions refuses a policy whose subject rules no token could ever reach."""

from __future__ import annotations

import pytest

from meshkit.auth import AuthOptions, AuthzPolicy, Rule
from meshkit.errors import ConfigError

GATEWAY = "spiffe://meshkit.test/svc/gateway"


@pytest.mark.parametrize(("policy", "quoted"), [
    (AuthzPolicy(rules={"/ecom.v1.OrderService/*": Rule(
        allow_peers=(GATEWAY,), deny_subjects=("user-banned",))}), "/ecom.v1.OrderService/*"),
    (AuthzPolicy(default=Rule(allow_subjects=("user-*",))), "default"),
])
def test_subject_rules_without_a_verifier_are_refused(policy: AuthzPolicy, quoted: str) -> None:
    """Without a verifier no call has claims, so ``deny_subjects`` refused no one (the
    gateway's calls for a banned user were let in) and ``allow_subjects`` admitted no
    one, in silence: a ``ConfigError`` quoting the rule."""
    with pytest.raises(ConfigError, match="verifier") as info:
        AuthOptions(policy=policy)
    assert repr(quoted) in str(info.value)


def test_peer_rules_need_no_verifier() -> None:
    """A policy over peers alone stays valid without a verifier."""
    AuthOptions(policy=AuthzPolicy(rules={"*": Rule(allow_peers=(GATEWAY,))}))
