"""``python -m benchmarks.layers``' "added us/call" (judged against issue 11's "every single
layer <= 15 us of CPU per call per side") is the median of the per-round differences with
``bare`` measured in the same round, as the module's docstring and the runner's method
say, not the difference of the two medians: on a VM whose speed moves between rounds the
rounds pair a variant with the bare run next to it, and medians of different rounds do
not."""

from __future__ import annotations

from benchmarks import layers


def test_added_is_the_median_of_per_round_differences() -> None:
    # round 2 ran on a slow moment for +x only; paired, +x adds 10, 10 and 180 us: median 10.
    # The medians (bare 140, +x 160) differ by 20 and the layer read "missed".
    rounds = {"bare": [100.0, 300.0, 140.0], "+x": [110.0, 160.0, 320.0]}
    text = layers.table("client", rounds)
    row = next(line for line in text.splitlines() if line.startswith("| +x |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["+x", "160.0", "+10.0", "met"], row
    bare = next(line for line in text.splitlines() if line.startswith("| bare |"))
    assert [c.strip() for c in bare.strip("|").split("|")] == ["bare", "140.0", "+0.0", ""]


def test_a_layer_over_the_limit_in_most_rounds_is_missed() -> None:
    rounds = {"bare": [100.0, 100.0, 100.0], "+y": [120.0, 90.0, 117.0]}
    row = next(line for line in layers.table("server", rounds).splitlines()
               if line.startswith("| +y |"))
    assert row.rstrip(" |").endswith("**missed**") and "+17.0" in row, row
