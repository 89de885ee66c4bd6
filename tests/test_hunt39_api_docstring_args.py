"""Every argument of a public class is an ``Args:`` entry of its own: an entry indented
as the previous one's continuation reads as part of it (ServeOptions' ``meta`` was
written inside ``tags``, so help() and the rendered docs showed no ``meta`` argument)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re

import pytest

PACKAGES = ["meshkit", "meshkit.discovery", "meshkit.resilience", "meshkit.auth",
            "meshkit.balancer", "meshkit.observability", "meshkit.messaging"]


def _arguments(cls: type) -> set[str]:
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls) if f.init}
    try:
        return set(inspect.signature(cls).parameters) - {"self", "args", "kwargs"}
    except (TypeError, ValueError):
        return set()


@pytest.mark.parametrize("package", PACKAGES)
def test_no_argument_entry_is_written_as_another_ones_continuation(package: str) -> None:
    mod = importlib.import_module(package)
    wrong = []
    for name in mod.__all__:
        obj = getattr(mod, name)
        if not inspect.isclass(obj):
            continue
        args = _arguments(obj)
        for line in (inspect.getdoc(obj) or "").splitlines():
            entry = re.match(r"^        (\w+): ", line)
            if entry and entry.group(1) in args:
                wrong.append(f"{name}.{entry.group(1)}")
    assert wrong == [], f"{package}: argument entries indented as continuations: {wrong}"
