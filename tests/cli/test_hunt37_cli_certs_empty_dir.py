"""``meshkit certs init|issue --dir ""`` (``--dir "$CERT_DIR"`` with the variable unset or
misspelt in a script) wrote the CA's private key into the working directory, or issued
from a CA found there, with status 0: ``Path("")`` is the current directory. An empty or
blank ``--dir`` is now a usage error (status 2, one line naming the option) that writes
nothing, as an empty ``MESHKIT_CERT_DIR`` is unset and ``check_path`` refuses ``""``."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

_ROOT = str(Path(__file__).resolve().parents[2])


def _names(directory: Path) -> list[str]:
    """The paths under ``directory``, relative, sorted."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.mark.parametrize("value", ["", "  "], ids=["empty", "blank"])
async def test_init_with_an_empty_dir_is_a_usage_error(tmp_path: Path, value: str) -> None:
    """No ca.key appears in the working directory (nor in a directory named blank)."""
    code, out, err = await _in(tmp_path, "certs", "init", "--dir", value)
    assert code == 2, (code, out, err)
    assert "--dir" in err and out == ""
    assert _names(tmp_path) == []


async def test_issue_with_an_empty_dir_is_a_usage_error(tmp_path: Path) -> None:
    """A CA in the working directory is not used for --dir ''."""
    code, _, err = await _in(tmp_path, "certs", "init", "--dir", str(tmp_path))
    assert code == 0, err
    code, out, err = await _in(tmp_path, "certs", "issue", "orderd", "--dir", "")
    assert code == 2, (code, out, err)
    assert "--dir" in err
    assert _names(tmp_path) == ["ca.key", "ca.pem"]


async def test_a_relative_dir_still_works(tmp_path: Path) -> None:
    """--dir certs (relative) writes there, as before."""
    code, _, err = await _in(tmp_path, "certs", "init", "--dir", "certs")
    assert code == 0, err
    assert _names(tmp_path) == ["certs", "certs/ca.key", "certs/ca.pem"]


async def _in(cwd: Path, *args: str) -> tuple[int, str, str]:
    """``meshkit ARGS`` run in ``cwd`` (this checkout's CLI module, no ``MESHKIT_*`` from
    the caller's environment); (status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env["PYTHONPATH"] = _ROOT
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshkit.cli", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
