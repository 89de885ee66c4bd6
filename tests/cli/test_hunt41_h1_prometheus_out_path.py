"""``meshkit prometheus-targets --out`` given no file: ``--out ""`` (``--out "$TARGETS"``
with the variable unset) was taken as the working directory and the pass failed
``--out /the/cwd: Is a directory``, a path the user never typed, status 1 (with
``--watch``, every interval for ever); ``--out=~/targets.json`` (bash leaves a ``~`` after
``=`` as it is) wrote, or failed to write, ``./~/targets.json`` in the working directory.
Both are now usage errors (status 2, one line quoting the value, nothing written), as
``meshkit certs --dir`` refuses an empty one and every path option a ``~`` no shell
expanded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cli.test_ops_commands import meshkit_cli

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("value", ["", " ", "~/targets.json", "~"],
                         ids=["empty", "blank", "tilde-file", "tilde"])
async def test_out_with_no_file_is_a_usage_error(tmp_path: Path, value: str) -> None:
    """Status 2 before any registry read, the value quoted, nothing made."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        status, out, err = await meshkit_cli("prometheus-targets", f"--out={value}",
                                             "--registry", f"local://{tmp_path}/reg")
    finally:
        os.chdir(cwd)
    assert (status, out) == (2, ""), (status, out, err)
    assert "--out" in err and repr(value) in err, err
    assert "Is a directory" not in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []


async def test_out_naming_a_file_under_a_directory_named_tilde_elsewhere_works(
        tmp_path: Path) -> None:
    """``./~/t.json`` (written so, no shell reads it as the home directory) is kept."""
    os.mkdir(tmp_path / "~")
    status, _, err = await meshkit_cli("prometheus-targets", "--out",
                                       f"{tmp_path}/~/t.json", "--registry",
                                       f"local://{tmp_path}/reg")
    assert status == 0, err
    assert os.listdir(tmp_path / "~") == ["t.json"]
