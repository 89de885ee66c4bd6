"""``python -m benchmarks.micro``'s telemetry figures (what each telemetry layer adds per
call per side, issue 11's "<= 15 us" per layer) are medians of per-round differences with
the bare loop (``off``) of the same round, not the median of a variant minus the median
of ``off`` (from different rounds: a round on a slow moment for one of them moved it)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from benchmarks import micro

# off's rounds 100, 300, 140 (median 140); every variant's 110, 160, 320 (median 160):
# paired, each adds 10, -140, 180 us -> median 10; the medians differ by 20.
_OFF = [100.0, 300.0, 140.0]
_ON = [110.0, 160.0, 320.0]


def _fake(calls: list[list[str]]) -> Callable[..., Awaitable[dict[str, list[float]]]]:
    async def alternate_rounds(rounds: int, variants: dict[str, Any]) -> dict[str, list[float]]:
        calls.append(list(variants))
        return {k: list(_OFF if k.endswith("off") else _ON) for k in variants}

    return alternate_rounds


@pytest.mark.timeout(60)
def test_telemetry_per_side_is_paired_by_round(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(micro, "_alternate_rounds", _fake(seen))
    res = asyncio.run(micro.telemetry(io.StringIO(), rounds=3, calls=16))
    assert seen and "client:off" in seen[0]
    for side in ("client", "server"):
        assert res[f"{side}:off"] == 140.0
        for v in micro.TELEMETRY_VARIANTS[1:]:
            assert res[f"{side}:{v}"] == 10.0, (side, v, res)


@pytest.mark.timeout(60)
def test_telemetry_e2e_is_paired_by_round(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(micro, "_alternate_rounds", _fake([]))
    res = asyncio.run(micro.telemetry_e2e(io.StringIO(), rounds=3, calls=16))
    assert res["off"] == 140.0
    assert all(res[v] == 10.0 for v in micro.TELEMETRY_VARIANTS[1:]), res


def test_alternate_still_gives_medians_and_alternates() -> None:
    order: list[str] = []

    def variant(name: str, values: list[float]) -> Callable[[], Awaitable[float]]:
        it = iter(values)

        async def run() -> float:
            order.append(name)
            return next(it)

        return run

    got = asyncio.run(micro._alternate(3, {"a": variant("a", [1.0, 5.0, 3.0]),
                                           "b": variant("b", [2.0, 2.0, 9.0])}))
    assert got == {"a": 3.0, "b": 2.0}
    assert order == ["a", "b", "b", "a", "a", "b"]
