"""A key function that cannot be called as ``key(method, context)`` is refused when the
options are built.

``RateLimitOptions(key=by_metadata)`` (the factory, not ``by_metadata("x-user")``), a
one-argument ``lambda context: ...`` or ``functools.partial(by_metadata, "x-user")``
passed (callable, not ``async def``) and then failed every limited call with
``UNKNOWN`` "by_metadata() takes 1 positional argument but 2 were given". So did such a
``fallback`` of ``by_metadata``. Both are now a ConfigError naming the function.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

from meshkit.errors import ConfigError
from meshkit.resilience.ratelimit import (
    RateLimitOptions,
    by_identity,
    by_metadata,
    by_peer,
)


def _three(method: str, context: Any, extra: str) -> str:
    return extra


BAD: list[Any] = [
    by_metadata,
    lambda context: "k",
    _three,
    functools.partial(by_metadata, "x-user"),
    lambda *, method, context: "k",
]


@pytest.mark.parametrize("key", BAD)
def test_a_key_function_that_cannot_take_method_and_context_is_refused(key: Any) -> None:
    with pytest.raises(ConfigError, match=r"key must be callable as key\(method, context\)"):
        RateLimitOptions(default_rule="1/second", key=key)


@pytest.mark.parametrize("fallback", BAD)
def test_such_a_fallback_is_refused(fallback: Any) -> None:
    with pytest.raises(ConfigError, match="fallback"):
        by_metadata("x-user", fallback=fallback)


class _Keyer:
    def __call__(self, method: str, context: Any) -> str:
        return method


GOOD: list[Any] = [
    by_peer, by_identity, by_metadata("x-user"), by_metadata("x-user", fallback=None),
    lambda method, context: "k", lambda *args: "k", lambda m, c, extra="e": extra,
    functools.partial(_three, extra="e"), _Keyer(),
]


@pytest.mark.parametrize("key", GOOD)
def test_key_functions_of_that_shape_are_taken(key: Any) -> None:
    RateLimitOptions(default_rule="1/second", key=key)
    by_metadata("x-user", fallback=key)
