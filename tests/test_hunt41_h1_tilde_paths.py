"""A path option given a leading ``~`` that no shell expanded (``MESHKIT_CERT_DIR="~/certs"``
from an environment file, a systemd unit, a quoted ``export``; ``--cert-dir=~/certs``,
which bash leaves as written) was taken as a relative path: ``meshkit certs init`` made a
directory named ``~`` in the working directory and printed ``CA ...: ~/certs/ca.pem``,
which reads as the home directory, and ``meshkit call`` then said ``~/certs/ca.pem is
missing; run meshkit certs init ... (--dir ~/certs)``, advice that, typed in a shell,
writes into the home directory and leaves the call failing. ``check_path`` (every path
option and directory meshkit takes) now refuses such a path, quoting it and the path it
stands for, as ``MESHKIT_LOCAL_DIR`` refuses ``~/...``."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

import meshkit
from meshkit._config import check_path
from meshkit.auth import tls_from_dir
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

_ROOT = str(Path(__file__).resolve().parents[1])
_HOME = os.path.expanduser("~")


@pytest.mark.parametrize("value", ["~", "~/certs", "~root/certs"],
                         ids=["home", "home-subdir", "user-home"])
def test_a_path_with_a_tilde_no_shell_expanded_is_refused(value: str) -> None:
    """The option is named, the value quoted, and the path it stands for given."""
    with pytest.raises(ConfigError) as caught:
        check_path("cert_dir", value)
    message = str(caught.value)
    assert "cert_dir" in message and repr(value) in message, message
    assert repr(os.path.expanduser(value)) in message, message


def test_a_path_like_with_a_tilde_is_refused() -> None:
    """``Path("~/x")`` is the same relative path."""
    with pytest.raises(ConfigError, match="~/x"):
        check_path("key_file", Path("~/x"))


@pytest.mark.parametrize("value", ["~no-such-user-h1/x", "a/~/b", "./~", "/tmp/~x", "certs"],
                         ids=["unknown-user", "inner", "dot", "absolute", "relative"])
def test_paths_a_shell_would_not_expand_are_kept(value: str) -> None:
    """A ``~`` no shell would read as a home directory is part of a name."""
    assert check_path("path", value) == value


def test_tls_from_dir_with_a_tilde_is_a_config_error(tmp_path: Path) -> None:
    """Not 'is missing; run meshkit certs init ... (--dir ~/certs)'."""
    with pytest.raises(ConfigError, match="~/certs") as caught:
        tls_from_dir("~/certs", "cli")
    assert "is missing" not in str(caught.value)


def test_dial_with_a_cert_dir_from_the_environment_with_a_tilde(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """dial() fails at once, quoting the variable's value."""
    monkeypatch.setenv("MESHKIT_CERT_DIR", "~/certs")
    monkeypatch.setenv("MESHKIT_WORKLOAD", "cli")
    with pytest.raises(ConfigError, match="~/certs") as caught:
        meshkit.dial("greeter", registry="local:///tmp/h1-unused-registry")
    assert "is missing" not in str(caught.value)


async def test_certs_init_makes_no_directory_named_tilde(tmp_path: Path) -> None:
    """It made ./~/certs/ca.key and said 'CA for trust domain ...: ~/certs/ca.pem'."""
    code, out, err = await _meshkit(tmp_path, {"MESHKIT_CERT_DIR": "~/certs"},
                                    "certs", "init")
    assert code != 0 and out == "", (code, out, err)
    assert "'~/certs'" in err and repr(os.path.join(_HOME, "certs")) in err, err
    assert "Traceback" not in err
    assert os.listdir(tmp_path) == []


async def test_certs_init_with_dir_equals_tilde(tmp_path: Path) -> None:
    """``--dir=~/certs``: bash leaves the ``~`` after ``=`` as it is."""
    code, _, err = await _meshkit(tmp_path, {}, "certs", "init", "--dir=~/certs")
    assert code != 0 and "'~/certs'" in err, (code, err)
    assert os.listdir(tmp_path) == []


async def test_call_with_cert_dir_equals_tilde_names_it(tmp_path: Path) -> None:
    """A usage error quoting it (status 2), not 'is missing; run meshkit certs init'."""
    code, out, err = await _meshkit(
        tmp_path, {}, "call", "greeter/SayHello", "{}", "--cert-dir=~/certs",
        "--workload", "cli", "--registry", f"local://{tmp_path}/registry")
    assert (code, out) == (2, ""), (code, out, err)
    assert "'~/certs'" in err and "is missing" not in err, err
    assert "Traceback" not in err


async def _meshkit(cwd: Path, env_extra: dict[str, str], *args: str
                   ) -> tuple[int, str, str]:
    """``meshkit ARGS`` run in ``cwd`` with no ``MESHKIT_*`` of the caller's but
    ``env_extra``; (status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env.update(env_extra, PYTHONPATH=_ROOT)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshkit.cli", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
