"""The public surface: every exported name exists, and public classes and functions say
what they do (the project's docstring rule)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

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


def test_import_meshkit_gives_its_public_modules() -> None:
    """``import meshkit`` loads no module of its own (names load when read, PEP 562), yet
    ``meshkit.errors.RegistryError``, ``meshkit.auth.current_claims()`` (the README's
    handler example) and every public module read after a bare ``import meshkit`` work,
    as they did when the package imported them all; in a fresh interpreter, where no
    other code has imported them first."""
    import subprocess
    import sys

    code = ("import sys, meshkit\n"
            "assert 'meshkit.channel' not in sys.modules, 'import meshkit loaded channel'\n"
            "for name in sorted(meshkit._SUBPACKAGES):\n"
            "    assert getattr(meshkit, name).__name__ == 'meshkit.' + name, name\n"
            "meshkit.errors.RegistryError, meshkit.auth.current_claims\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=45, cwd=str(Path(__file__).resolve().parents[1]))
    assert done.returncode == 0, done.stderr[-400:]


def test_the_readmes_layout_names_every_module_and_the_local_dir_variable() -> None:
    """The README's Layout lists meshkit's modules one per line: a module added without a
    line there (``_attempts.py`` was) is missing from it; and the Discovery table names
    ``MESHKIT_LOCAL_DIR``, which moves every default local registry of a process (two
    processes with different values do not see each other)."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    missing = sorted(p.name for p in (root / "meshkit").glob("*.py")
                     if p.name != "__init__.py" and p.name not in layout)
    assert not missing, f"meshkit modules missing from the README's Layout: {missing}"
    assert "MESHKIT_LOCAL_DIR" in readme.split("## Layout", 1)[0]
