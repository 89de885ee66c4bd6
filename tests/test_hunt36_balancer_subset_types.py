"""A Subset whose meta values or tags are not strings can never match an instance
(registry meta and tags are strings, checked by Instance): it was accepted, and the
channel then balanced over nothing, every call failing UNAVAILABLE, instead of the
option failing where it is written."""

from __future__ import annotations

import pytest

from meshkit.balancer import Subset, apply_filters
from meshkit.discovery import Instance
from meshkit.errors import ConfigError


@pytest.mark.parametrize(("kwargs", "quoted"), [
    ({"meta": {"version": 2}}, "2"),
    ({"meta": {"replicas": None}}, "None"),
    ({"meta": {1: "x"}}, "1"),
    ({"meta": "version=v2"}, "'version=v2'"),
    ({"tags": ("canary", 7)}, "7"),
    ({"tags": None}, "None"),
])
def test_subset_refuses_meta_and_tags_that_are_not_strings(kwargs: dict[str, object],
                                                          quoted: str) -> None:
    with pytest.raises(ConfigError, match=quoted):
        Subset(**kwargs)  # type: ignore[arg-type]


def test_subset_of_strings_still_matches() -> None:
    inst = Instance(service="s", instance_id="a", host="127.0.0.1", port=1,
                    meta={"version": "v2"}, tags=("canary",))
    subset = Subset(meta={"version": "v2"}, tags=["canary"])
    assert subset.tags == ("canary",)
    assert apply_filters([subset], [inst]) == [inst]
