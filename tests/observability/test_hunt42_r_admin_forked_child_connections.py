"""A child forked while an admin server runs keeps none of its sockets: not the listening
one on uvloop's loop (``meshkit.run``'s when uvloop is installed), nor a connection the
server has open (a Prometheus scraper's keep-alive connection) on either loop.

cc8c5822 made the child's copies of the *listening* sockets name ``/dev/null``, found
through ``socket.socket`` objects: uvloop's servers give ``PseudoSocket`` objects, none
was found, and on uvloop the child still kept the port listening (a scrape after the
parent's ``stop()`` hung until its timeout instead of being refused). And a connection
open at the fork stayed open in the child: when the parent closed it (``stop()``, or the
75 s keep-alive limit) no FIN went out (the child's descriptor held it), so the scraper
sent its next request on it and waited, unanswered, until its scrape timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

_ROOT = Path(__file__).parents[2]

_SCRIPT = r"""
import asyncio, json, os, signal, socket, sys, time
from meshkit.observability import AdminOptions, AdminServer

ASK = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

def scrape(s):
    try:
        s.sendall(ASK)
        data = s.recv(65536)
    except socket.timeout:
        return "hung"
    except OSError as e:  # reset, refused
        return type(e).__name__
    return "answered" if data else "closed"

def new_scrape(port):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(("127.0.0.1", port))
        return scrape(s)
    except socket.timeout:
        return "hung"
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()

async def main():
    admin = AdminServer(AdminOptions(require_server=False))
    port = await admin.start()
    kept = socket.create_connection(("127.0.0.1", port), timeout=3)
    out = {"before_fork": await asyncio.to_thread(scrape, kept)}  # keep-alive: stays open
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker that outlives the parent's admin server
        os.close(r)
        os.write(w, b"1")
        time.sleep(30)
        os._exit(0)
    os.close(w)
    os.read(r, 1)
    try:
        await admin.stop()
        out["kept_connection"] = await asyncio.to_thread(scrape, kept)
        out["new_connection"] = await asyncio.to_thread(new_scrape, port)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    print(json.dumps(out))

if sys.argv[1] == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


def _uvloop_installed() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork")
@pytest.mark.parametrize("loop", [
    "asyncio",
    pytest.param("uvloop", marks=pytest.mark.skipif(not _uvloop_installed(),
                                                    reason="uvloop not installed")),
], ids=["asyncio", "uvloop"])
def test_a_forked_child_keeps_no_socket_of_the_admin_server(loop: str) -> None:
    done = subprocess.run([sys.executable, "-c", _SCRIPT, loop], cwd=_ROOT,
                          capture_output=True, text=True, timeout=45, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["before_fork"] == "answered", out
    # the parent closed it: the scraper sees the close at once (EOF or a reset)
    assert out["kept_connection"] in ("closed", "ConnectionResetError",
                                      "BrokenPipeError"), out
    assert out["new_connection"] == "ConnectionRefusedError", out
