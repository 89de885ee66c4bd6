"""A balancer's or registry's ``rng`` given as a seed (``P2C(rng=42)``, the number where
``random.Random(42)`` was meant), a class or a string fails where it is given,
ConfigError quoting it, as ``Backoff(rng=42)`` already did: P2C, WeightedRoundRobin,
RingHash, EtcdRegistry and ConsulRegistry took it and raised a bare AttributeError
('int' object has no attribute 'random' / 'uniform') at the first pick of every call or
the first backoff of a failed registry request; RoundRobin raised one at once. A
ConsulRegistry ``sleep`` that is no function (``sleep=5``) likewise."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from meshkit.balancer import P2C, RingHash, RoundRobin, WeightedRoundRobin
from meshkit.discovery import ConsulOptions, ConsulRegistry, EtcdOptions, EtcdRegistry
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

_MAKERS: dict[str, Callable[[object], object]] = {
    "P2C": lambda rng: P2C(rng=rng),  # type: ignore[arg-type]
    "RoundRobin": lambda rng: RoundRobin(rng),  # type: ignore[arg-type]
    "WeightedRoundRobin": lambda rng: WeightedRoundRobin(rng),  # type: ignore[arg-type]
    "RingHash": lambda rng: RingHash(rng=rng),  # type: ignore[arg-type]
    "EtcdRegistry": lambda rng: EtcdRegistry(EtcdOptions(), rng=rng),  # type: ignore[arg-type]
    "ConsulRegistry": lambda rng: ConsulRegistry(ConsulOptions(),
                                                 rng=rng),  # type: ignore[arg-type]
}
_BAD = {"a-seed": 42, "the-class": random.Random, "a-string": "seed"}


@pytest.mark.parametrize("value", sorted(_BAD))
@pytest.mark.parametrize("maker", sorted(_MAKERS))
def test_an_rng_that_is_no_random_source_fails_where_it_is_given(maker: str,
                                                                 value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _MAKERS[maker](_BAD[value])
    assert "rng" in str(caught.value) and repr(_BAD[value]) in str(caught.value)


@pytest.mark.parametrize("maker", sorted(_MAKERS))
def test_a_seeded_random_and_the_default_are_still_taken(maker: str) -> None:
    _MAKERS[maker](random.Random(42))
    _MAKERS[maker](None)


def test_a_consul_sleep_that_is_no_function_fails_where_it_is_given() -> None:
    with pytest.raises(ConfigError) as caught:
        ConsulRegistry(ConsulOptions(), sleep=5)  # type: ignore[arg-type]
    assert "sleep" in str(caught.value) and "5" in str(caught.value)
