"""``AuthOptions(exempt_methods=...)`` with the peer check turned off."""

from __future__ import annotations

import pytest

from meshkit.auth import AuthOptions, AuthzPolicy, JWTVerifier, KeySet, Rule, VerifierOptions
from meshkit.errors import ConfigError

HEALTH = ("/grpc.health.v1.Health/*",)
VERIFIER = JWTVerifier(VerifierOptions(issuer="https://userd", audience="ecom"),
                       KeySet.generate("ES256"))


@pytest.mark.parametrize("options", [
    {"verifier": VERIFIER}, {"policy": AuthzPolicy(default=Rule(allow_peers=("*",)))}],
    ids=["verifier", "policy"])
def test_exempt_methods_with_check_peers_off_are_refused(options: dict[str, object]) -> None:
    """``AuthOptions(verifier=v, check_peers=False, exempt_methods=(health,))`` was taken,
    and the health methods then still needed a token (a Consul gRPC check or a prober
    refused ``UNAUTHENTICATED``): the exemption is the peer check's, which was off."""
    with pytest.raises(ConfigError, match="exempt from nothing") as err:
        AuthOptions(check_peers=False, exempt_methods=HEALTH, **options)  # type: ignore[arg-type]
    assert "public_methods" in str(err.value)


def test_exempt_methods_with_the_peer_check_are_taken() -> None:
    assert AuthOptions(verifier=VERIFIER, exempt_methods=HEALTH).exempt_methods == HEALTH
    assert AuthOptions(verifier=VERIFIER, check_peers=False).exempt_methods == ()
