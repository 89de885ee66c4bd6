"""Two usage answers a new user meets first.

* ``meshkit --version`` (what most tools answer) was ``meshkit: unknown command
  '--version'`` and the usage, status 2; it now prints the version as ``meshkit version``
  does, status 0 (``--version`` with anything after it is still a usage error).
* ``meshkit certs`` with no subcommand said ``the following arguments are required:
  cmd``, the parser's internal name; it now names the choices, ``{init,issue,inspect}``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from meshkit import __version__

pytestmark = pytest.mark.timeout(60)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    return subprocess.run([sys.executable, "-m", "meshkit.cli", *args], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=30, check=False)


def test_dash_dash_version_prints_the_version() -> None:
    done = _run("--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{__version__}\n", "")


def test_dash_dash_version_with_an_argument_is_a_usage_error() -> None:
    done = _run("--version", "x")
    assert done.returncode == 2 and done.stdout == "", done
    assert "'x'" in done.stderr


def test_certs_without_a_subcommand_names_the_choices() -> None:
    done = _run("certs")
    assert done.returncode == 2 and done.stdout == ""
    assert "required: {init,issue,inspect}" in done.stderr, done.stderr
    assert "cmd" not in done.stderr.replace("COMMAND", ""), done.stderr
