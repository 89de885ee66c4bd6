"""Helpers shared by the tests of deploy/: the operators' binaries they run."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import IN_CI


def binary(name: str, install: str = "scripts/install-ops.sh installs it") -> str:
    """The path of the program ``name``; skip without it (a failure under CI=true).

    Args:
        name: the program, looked up on ``PATH``.
        install: how to get it, for the skip or failure message.
    """
    path = shutil.which(name)
    if path is None:
        why = f"{name} is not installed ({install})"
        if IN_CI:
            pytest.fail(why + "; required when CI=true")
        pytest.skip(why)
    return path
