"""VerifiedTokenCache(max_entries, leeway_s=...) refuses what VerifierOptions refuses for
the cache JWTVerifier builds (cache_size an int >= 0, leeway_s a number in 0..300),
ConfigError quoting it: ``leeway_s=nan`` (or ``inf``) was taken and made every cached
token's deadline NaN (infinite), so a token stayed a cache hit after it expired, for
good; ``max_entries=1.5`` or ``True`` were taken as a capacity."""

from __future__ import annotations

import pytest

from meshkit.auth import Claims, VerifiedTokenCache
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

_BAD_LEEWAY = {"nan": float("nan"), "inf": float("inf"), "negative": -1.0,
               "past-300": 301.0, "a-string": "30", "true": True}
_BAD_SIZE = {"negative": -1, "a-float": 1.5, "true": True, "a-string": "10", "none": None}


@pytest.mark.parametrize("leeway", sorted(_BAD_LEEWAY))
def test_a_bad_leeway_is_a_config_error(leeway: str) -> None:
    with pytest.raises(ConfigError) as caught:
        VerifiedTokenCache(16, leeway_s=_BAD_LEEWAY[leeway])  # type: ignore[arg-type]
    assert "leeway_s" in str(caught.value) and repr(_BAD_LEEWAY[leeway]) in str(caught.value)


@pytest.mark.parametrize("size", sorted(_BAD_SIZE))
def test_a_bad_capacity_is_a_config_error(size: str) -> None:
    with pytest.raises(ConfigError) as caught:
        VerifiedTokenCache(_BAD_SIZE[size])  # type: ignore[arg-type]
    assert "max_entries" in str(caught.value) and repr(_BAD_SIZE[size]) in str(caught.value)


def test_a_cached_token_expires_with_its_exp_plus_leeway() -> None:
    """What NaN broke: an entry is a hit until ``exp + leeway_s``, then a miss."""
    now = [1_700_000_000.0]
    cache = VerifiedTokenCache(16, leeway_s=30.0, clock=lambda: now[0])
    claims = Claims(subject="alice", issuer="https://issuer.test", audience=("meshkit",),
                    scopes=frozenset(), expires_at=now[0] + 60.0)
    key = VerifiedTokenCache.key("token")
    cache.put(key, claims)
    assert cache.get(key) is claims
    now[0] += 89.0
    assert cache.get(key) is claims
    now[0] += 2.0
    assert cache.get(key) is None
    assert VerifiedTokenCache(0).max_entries == 0  # 0 still turns the cache off
