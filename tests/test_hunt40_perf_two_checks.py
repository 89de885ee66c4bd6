"""Two or three fused checks (the deadline's admission, authentication, rate limiting: the
common stacks) run as one without a loop per call, exactly as any other number of checks:
in order, a synchronous pass (``None``) going on to the next, an awaitable one awaited
before the next runs, a refusal (raised, or raised once awaited) ending the call before
the next."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from meshkit._handlers import _in_order

_KINDS = ("pass", "await", "refuse", "refuse-awaited")


class _Refused(Exception):
    pass


def _check(name: str, kind: str, seen: list[str]) -> Any:
    async def awaited(refuse: bool) -> None:
        seen.append(f"{name}:awaited")
        if refuse:
            raise _Refused(name)

    def check(context: Any) -> Any:
        assert context == "ctx"
        seen.append(name)
        if kind == "refuse":
            raise _Refused(name)
        if kind == "pass":
            return None
        return awaited(kind == "refuse-awaited")

    return check


async def _run(kinds: tuple[str, ...]) -> tuple[list[str], str | None, bool]:
    seen: list[str] = []
    fused = _in_order([_check(f"c{i}", k, seen) for i, k in enumerate(kinds)])
    assert fused is not None
    refused = None
    awaited = False
    try:
        pending = fused("ctx")
        if pending is not None:
            awaited = True
            await pending
    except _Refused as e:
        refused = str(e)
    return seen, refused, awaited


def _expected(kinds: tuple[str, ...]) -> tuple[list[str], str | None, bool]:
    seen: list[str] = []
    awaited = False
    for i, k in enumerate(kinds):
        seen.append(f"c{i}")
        if k == "refuse":
            return seen, f"c{i}", awaited
        if k != "pass":
            awaited = True
            seen.append(f"c{i}:awaited")
            if k == "refuse-awaited":
                return seen, f"c{i}", awaited
    return seen, None, awaited


@pytest.mark.parametrize(
    "kinds",
    [
        *itertools.product(_KINDS, repeat=2),
        *itertools.product(_KINDS, repeat=3),
        *itertools.product(("pass", "await"), repeat=4),
    ],
    ids=lambda kinds: "-".join(kinds),
)
async def test_fused_checks_in_order(kinds: tuple[str, ...]) -> None:
    assert await _run(kinds) == _expected(kinds)


def test_one_check_is_itself_and_none_is_none() -> None:
    def only(context: Any) -> None:
        return None

    assert _in_order([None, only, None]) is only
    assert _in_order([None, None]) is None
