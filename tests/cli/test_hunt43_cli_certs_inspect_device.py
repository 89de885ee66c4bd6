"""``meshkit certs inspect`` given a device that never ends (``/dev/zero``,
``/dev/urandom``, a disk): the whole of it was read into memory, then Python's
``MemoryError`` traceback (or the machine's memory went first). A character or block
device, or a socket, is now refused before anything is read: one line naming the file
and what it is, status 1. A pipe still works (``... | meshkit certs inspect
/dev/stdin``), as does a regular file."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from meshkit.auth import init_ca_dir

pytestmark = pytest.mark.timeout(60)


def _limit_memory() -> None:  # in the child: a read of /dev/zero fails fast, not the box
    resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, 2 * 1024**3))


def _run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    return subprocess.run([sys.executable, "-m", "meshkit.cli", *args], env=env,
                          input=stdin, capture_output=True, timeout=40, check=False,
                          preexec_fn=_limit_memory)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_a_character_device_is_refused_unread() -> None:
    done = _run("certs", "inspect", "/dev/zero")
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 1, err[-2000:]
    assert "Traceback" not in err and "MemoryError" not in err, err[-2000:]
    assert err.strip() == ("meshkit certs inspect: cannot read certificates from /dev/zero: "
                           "not a certificate file (a character device)"), err


def test_a_pipe_still_works(tmp_path: Path) -> None:
    files = init_ca_dir(tmp_path / "certs", trust_domain="meshkit.local")
    done = _run("certs", "inspect", "/dev/stdin", stdin=Path(files.ca_file).read_bytes())
    assert done.returncode == 0, done.stderr
    assert b"ca:            yes" in done.stdout
