"""``meshkit prometheus-targets --out -``: a usage error, not a file named ``-``.

``-`` is stdout to most commands (and stdin to ``meshkit call``'s request); ``--out -``
wrote the targets to a file named ``-`` in the working directory and said so in passing
(``wrote 4 target(s) to /the/cwd/-``), status 0, the user's stdout empty. The file is
replaced atomically beside itself, which stdout cannot be: ``--out -`` is now refused
(status 2, argparse's line naming ``--out``, nothing written, no registry read)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cli.test_ops_commands import meshkit_cli

pytestmark = pytest.mark.timeout(60)


async def test_out_dash_is_a_usage_error(tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        status, out, err = await meshkit_cli("prometheus-targets", "--out", "-",
                                             "--registry", f"local://{tmp_path}/reg")
    finally:
        os.chdir(cwd)
    assert (status, out) == (2, ""), (status, out, err)
    assert "--out" in err and "'-'" in err and "stdout" in err, err
    assert os.listdir(tmp_path) == []


async def test_a_file_path_ending_in_dash_is_still_a_file(tmp_path: Path) -> None:
    """Only ``-`` itself is refused: ``./-`` names the file on purpose."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        status, _, err = await meshkit_cli("prometheus-targets", "--out", "./-",
                                           "--registry", f"local://{tmp_path}/reg")
    finally:
        os.chdir(cwd)
    assert status == 0, err
    assert (tmp_path / "-").read_text() == "[]\n"
