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


# made by meshkit, not by users: dial() makes MeshChannel, EjectingBalancer StreamDone
_MADE_BY_MESHKIT = {"MeshChannel", "StreamDone"}


@pytest.mark.parametrize("package", PACKAGES)
def test_every_constructor_argument_is_named_in_the_class_docstring(package: str) -> None:
    """ClientCallDetails took ``timeout_s``, ``credentials`` and ``compression`` (which
    the channel sends the attempt with: an interceptor may change them) and AdminServer a
    ``dashboard_registry``, none of them documented."""
    import enum

    mod = importlib.import_module(package)
    missing = []
    for name in mod.__all__:
        obj = getattr(mod, name)
        if (not inspect.isclass(obj) or issubclass(obj, BaseException | enum.Enum)
                or name in _MADE_BY_MESHKIT):
            continue
        doc = inspect.getdoc(obj) or ""
        missing += [f"{name}.{a}" for a in sorted(_arguments(obj))
                    if not re.search(rf"\b{a}\b", doc)]
    assert missing == [], f"{package}: constructor arguments not documented: {missing}"
