"""``by_metadata`` refuses, when built, a header no call can carry and a fallback that is
no key function.

gRPC over HTTP/2 (Custom-Metadata): ``Header-Name → 1*( %x30-39 / %x61-7A / "_" / "-" /
"." )`` (lower case; ``by_metadata`` lowercases the name, so ``"X-User"`` stays fine). A
name outside it (``"x user"``, ``"x-user:"``, ``"xé"``) was accepted and matched no call:
every caller was keyed by the fallback, with ``fallback=None`` all of them in one shared
budget, so one busy client spent everyone's limit. A fallback that is not callable
(``"peer"``) was accepted and failed every call without the header ``UNKNOWN`` (a
``TypeError`` per call); an ``async def`` one gave a coroutine per call, which the
interceptor refuses per call the same way. Both are now a ``ConfigError`` quoting the
value, as ``RateLimitOptions(key=...)`` refuses a bad key function.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from meshkit.errors import ConfigError
from meshkit.resilience.ratelimit import (
    RateLimitOptions,
    by_metadata,
    by_peer,
)
from tests.resilience.limited_echo import limited_echo as _limited_echo
from tests.support.echo import method

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("name", ["x user", "x-user:", "x\u00e9", "x/user", ":authority",
                                  "x-user\x00"])
def test_a_header_no_call_can_carry_is_refused_quoting_it(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        by_metadata(name)
    assert repr(name) in str(info.value), str(info.value)


async def _async_key(method: str, context: Any) -> str:
    return "k"


@pytest.mark.parametrize("fallback", ["peer", 123, _async_key])
def test_a_fallback_that_is_no_key_function_is_refused_quoting_it(fallback: Any) -> None:
    with pytest.raises(ConfigError) as info:
        by_metadata("x-user", fallback=fallback)
    assert repr(fallback) in str(info.value), str(info.value)


@pytest.mark.parametrize("name", ["x-user", "X-User", "x_user.id", "  x-user  "])
def test_metadata_keys_are_accepted_in_any_case(name: str) -> None:
    assert by_metadata(name, fallback=None).__name__ == f"by_metadata({name.strip().lower()!r})"
    by_metadata(name, fallback=by_peer)


async def test_a_header_named_in_capitals_keys_callers_on_a_real_server() -> None:
    """``by_metadata("X-User", fallback=None)``: two users have a budget each."""
    options = RateLimitOptions(default_rule="1/minute", key=by_metadata("X-User", fallback=None))
    async with _limited_echo(options) as port, grpc.aio.insecure_channel(
            f"127.0.0.1:{port}") as channel:
        unary = channel.unary_unary(method("Unary"))
        assert await unary(b"a", metadata=(("x-user", "alice"),), timeout=10) == b"e1|a"
        assert await unary(b"b", metadata=(("x-user", "bob"),), timeout=10) == b"e1|b"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await unary(b"c", metadata=(("x-user", "alice"),), timeout=10)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
