"""The public surface: every exported name exists, and public classes and functions say
what they do (the project's docstring rule)."""

from __future__ import annotations

import importlib
import inspect

import pytest

PACKAGES = ["meshkit", "meshkit.balancer", "meshkit.discovery", "meshkit.resilience",
            "meshkit.auth", "meshkit.observability", "meshkit.interceptors", "meshkit.errors",
            "meshkit.channel", "meshkit.server"]


@pytest.mark.parametrize("name", PACKAGES)
def test_exports_exist_and_are_documented(name: str) -> None:
    """Each name in ``__all__`` resolves; each exported class and function has a docstring."""
    mod = importlib.import_module(name)
    assert mod.__doc__, f"{name} has no module docstring"
    missing_doc = []
    for export in mod.__all__:
        obj = getattr(mod, export)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and not inspect.getdoc(obj):
            missing_doc.append(export)
    assert missing_doc == [], f"{name}: no docstring on {missing_doc}"
