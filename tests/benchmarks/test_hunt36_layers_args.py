"""``python -m benchmarks.layers`` checks its arguments before it measures: an unknown
variant, or rounds or calls below one, is a usage error."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import layers


def test_an_unknown_instructions_variant_is_refused(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``--instructions +tracng`` counted ``bare`` alone on each side and exited 0: the
    misspelt variant was matched against nothing, without a word."""
    counted: list[tuple[str, str]] = []

    def instructions(side: str, variant: str, low: int = 300, high: int = 1300) -> float:
        counted.append((side, variant))
        return 1000.0

    monkeypatch.setattr(layers, "instructions", instructions)
    with pytest.raises(SystemExit) as exc:
        layers.main(["--instructions", "+tracing,+tracng"])
    assert exc.value.code == 2 and "'+tracng'" in capsys.readouterr().err
    assert counted == []


@pytest.mark.parametrize("args", [["--rounds", "0"], ["--calls", "0"], ["--calls", "-5"]])
def test_rounds_or_calls_below_one_are_refused(
        args: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``--rounds 0`` ended in a StatisticsError traceback (the median of no round) after
    the set-up, ``--calls 0`` in a ZeroDivisionError; both are usage errors now."""

    async def measured(*a: Any, **kw: Any) -> dict[str, float]:
        raise AssertionError("measured")

    monkeypatch.setattr(layers, "client_layers", measured)
    with pytest.raises(SystemExit) as exc:
        layers.main(args)
    assert exc.value.code == 2 and args[0] in capsys.readouterr().err


def test_known_instructions_variants_are_counted_with_bare(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A variant of one side only (``+jwt``: server) is known, and each side counts
    ``bare`` and the variants it has."""
    counted: list[tuple[str, str]] = []

    def instructions(side: str, variant: str, low: int = 300, high: int = 1300) -> float:
        counted.append((side, variant))
        return 1000.0

    monkeypatch.setattr(layers, "instructions", instructions)
    assert layers.main(["--instructions", "+tracing,+jwt"]) == 0
    assert counted == [("client", "bare"), ("client", "+tracing"), ("server", "bare"),
                       ("server", "+jwt"), ("server", "+tracing")]
