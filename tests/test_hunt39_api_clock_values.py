"""A clock given as its value (``clock=time.time()``, ``clock=time.monotonic()``: the
reading, not the function) fails where it is given, ConfigError quoting it, as
PeerVerifier, TLSOptions, MessageSigner and RetryBudget already did: the classes below took
it and raised a bare ``TypeError: 'float' object is not callable`` later, at their first
use (every token verified or issued, the first registration, the first pick of the
balanced channel, the first storage failure of the rate limiter)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from meshkit.auth import (
    IssuerOptions,
    JWKSClientOptions,
    JWTVerifier,
    KeySet,
    TokenVerifier,
    VerifiedTokenCache,
    VerifierOptions,
)
from meshkit.balancer import P2C, EjectingBalancer
from meshkit.discovery import LocalOptions
from meshkit.errors import ConfigError
from meshkit.resilience import StorageLimiter

pytestmark = pytest.mark.timeout(60)

_WALL = 1_700_000_000.25  # what time.time() gives: a reading
_MONO = 12345.5  # what time.monotonic() gives

_VERIFY = VerifierOptions(issuer="https://issuer.test", audience="meshkit")

_MAKERS: dict[str, Callable[[object], object]] = {
    "KeySet": lambda c: KeySet.generate(clock=c),  # type: ignore[arg-type]
    "IssuerOptions": lambda c: IssuerOptions(issuer="https://issuer.test",
                                             audience="meshkit", clock=c),  # type: ignore[arg-type]
    "TokenVerifier": lambda c: TokenVerifier(_VERIFY, clock=c),  # type: ignore[arg-type]
    "VerifiedTokenCache": lambda c: VerifiedTokenCache(16, clock=c),  # type: ignore[arg-type]
    "JWTVerifier": lambda c: JWTVerifier(_VERIFY, KeySet.generate(),
                                         clock=c),  # type: ignore[arg-type]
    "JWKSClientOptions": lambda c: JWKSClientOptions(clock=c),  # type: ignore[arg-type]
    "LocalOptions": lambda c: LocalOptions(clock=c),  # type: ignore[arg-type]
    "StorageLimiter": lambda c: StorageLimiter(clock=c),  # type: ignore[arg-type]
    "P2C": lambda c: P2C(clock=c),  # type: ignore[arg-type]
    "EjectingBalancer": lambda c: EjectingBalancer(P2C(), clock=c),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("value", [_WALL, _MONO, None, "time.time"],
                         ids=["wall-reading", "monotonic-reading", "none", "a-name"])
@pytest.mark.parametrize("maker", sorted(_MAKERS))
def test_a_clock_that_is_no_function_fails_where_it_is_given(maker: str,
                                                             value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        _MAKERS[maker](value)
    assert "clock" in str(caught.value) and repr(value) in str(caught.value)


@pytest.mark.parametrize("maker", sorted(_MAKERS))
def test_a_clock_function_is_still_taken(maker: str) -> None:
    """The defaults' kind of clock and a test's fake one (any callable) work as before."""
    _MAKERS[maker](time.monotonic if maker in {"JWKSClientOptions", "StorageLimiter", "P2C",
                                               "EjectingBalancer"} else time.time)
    _MAKERS[maker](lambda: 5.0)


def test_a_token_issued_and_verified_on_injected_clocks_still_checks_out() -> None:
    """The clocks taken are the ones used: a token minted at a fake wall time verifies on
    a verifier whose fake clock reads the same second (and not on the real clock, a year
    later, where it expired)."""
    import asyncio

    from meshkit.auth import InvalidTokenError, TokenIssuer

    keys = KeySet.generate(clock=lambda: _WALL)
    issuer = TokenIssuer(keys, IssuerOptions(issuer="https://issuer.test", audience="meshkit",
                                             ttl_s=60.0, clock=lambda: _WALL))
    token = issuer.issue("alice")

    async def verify(clock: Callable[[], float]) -> object:
        return await JWTVerifier(_VERIFY, keys, clock=clock).verify(token)

    claims = asyncio.run(verify(lambda: _WALL + 1.0))
    assert getattr(claims, "subject", None) == "alice"
    with pytest.raises(InvalidTokenError):
        asyncio.run(verify(time.time))
