"""Endpoint filters: Subset and PreferZone, alone and through dial()."""

from __future__ import annotations

from collections import Counter

import pytest

import meshkit
from meshkit.balancer import PreferZone, Subset, apply_filters
from meshkit.discovery import Instance, LocalRegistry
from meshkit.errors import ConfigError
from tests.conftest import EchoFactory
from tests.support.echo import method


def _inst(n: str, zone: str = "a", version: str = "v1", tags: tuple[str, ...] = ()) -> Instance:
    return Instance(service="s", instance_id=n, host="127.0.0.1", port=1000,
                    meta={"zone": zone, "version": version}, tags=tags)


def test_subset_keeps_instances_matching_every_meta_value_and_tag() -> None:
    """Subset keeps only instances with all the given meta values and tags."""
    insts = [_inst("a", version="v2", tags=("canary",)), _inst("b", version="v2"),
             _inst("c", version="v1", tags=("canary",))]
    got = apply_filters([Subset(meta={"version": "v2"}, tags=("canary",))], insts)
    assert [i.instance_id for i in got] == ["a"]


def test_prefer_zone_falls_back_to_every_zone_when_local_is_empty() -> None:
    """PreferZone keeps the local zone while it has instances, else all of them."""
    insts = [_inst("a", zone="x"), _inst("b", zone="y")]
    assert [i.instance_id for i in apply_filters([PreferZone("y")], insts)] == ["b"]
    assert [i.instance_id for i in apply_filters([PreferZone("z")], insts)] == ["a", "b"]


def test_filters_run_in_order() -> None:
    """Filters chain: a subset first, then the zone preference among what is left."""
    insts = [_inst("a", zone="x", version="v2"), _inst("b", zone="y", version="v1"),
             _inst("c", zone="y", version="v2")]
    got = apply_filters([Subset(meta={"version": "v2"}), PreferZone("y")], insts)
    assert [i.instance_id for i in got] == ["c"]


def test_bad_filter_config_is_refused_at_construction() -> None:
    """An empty Subset, bare-string tags, an empty zone, or a non-callable filter."""
    with pytest.raises(ConfigError, match="needs meta or tags"):
        Subset()
    with pytest.raises(ConfigError, match="'canary'"):
        Subset(tags="canary")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="''"):
        PreferZone("")
    with pytest.raises(ConfigError, match="42"):
        meshkit.DialOptions(insecure=True, filters=(42,))  # type: ignore[arg-type]


async def test_dial_balances_only_over_filtered_instances(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A channel with a Subset filter never calls an instance outside the subset."""
    await echo_servers("old", meta={"version": "v1"})
    await echo_servers("new", meta={"version": "v2"})
    opts = meshkit.DialOptions(insecure=True, filters=(Subset(meta={"version": "v2"}),))
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(1)
        unary = ch.unary_unary(method("Unary"))
        got = Counter([(await unary(b"", timeout=5)).split(b"|")[0] for _ in range(20)])
    assert got == Counter({b"new": 20})
