"""``meshkit certs inspect -`` reads the certificates from stdin, as Unix tools do.

It looked for a file named ``-`` ("cannot read certificates from -: No such file or
directory"), status 1, whatever was piped in. A terminal on stdin is refused with one
line saying how to feed it (the command would otherwise look hung), and a device
(``< /dev/zero``) is refused unread as a device path is; ``./-`` still names a file
called ``-``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshkit.auth import init_ca_dir

pytestmark = pytest.mark.timeout(60)


def _run(*args: str, stdin: object, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    kwargs: dict[str, object] = ({"input": stdin} if isinstance(stdin, bytes)
                                 else {"stdin": stdin})
    return subprocess.run([sys.executable, "-m", "meshkit.cli", "certs", "inspect", *args],
                          env=env, capture_output=True, timeout=40, check=False, cwd=cwd,
                          **kwargs)  # type: ignore[call-overload]


def test_dash_reads_a_pipe(tmp_path: Path) -> None:
    files = init_ca_dir(tmp_path / "certs", trust_domain="meshkit.local")
    done = _run("-", stdin=Path(files.ca_file).read_bytes())
    assert done.returncode == 0, done.stderr
    assert b"ca:            yes" in done.stdout


def test_dash_reads_a_redirected_file(tmp_path: Path) -> None:
    files = init_ca_dir(tmp_path / "certs", trust_domain="meshkit.local")
    with open(files.ca_file, "rb") as f:
        done = _run("-", stdin=f)
    assert done.returncode == 0, done.stderr
    assert b"ca:            yes" in done.stdout


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_dash_refuses_a_device_on_stdin() -> None:
    with open("/dev/zero", "rb") as f:
        done = _run("-", stdin=f)
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 1, err[-2000:]
    assert "Traceback" not in err and "character device" in err, err


def test_dash_refuses_a_terminal() -> None:
    import pty

    leader, follower = pty.openpty()
    try:
        done = _run("-", stdin=follower)
    finally:
        os.close(leader)
        os.close(follower)
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 1, err[-2000:]
    assert "terminal" in err and "Traceback" not in err, err


def test_dot_slash_dash_is_a_file(tmp_path: Path) -> None:
    files = init_ca_dir(tmp_path / "certs", trust_domain="meshkit.local")
    (tmp_path / "-").write_bytes(Path(files.ca_file).read_bytes())
    done = _run("./-", stdin=b"", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert b"ca:            yes" in done.stdout
