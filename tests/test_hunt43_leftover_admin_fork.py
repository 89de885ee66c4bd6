"""A child forked while a thread's loop of the parent lends the process's ephemeral-port
admin server (``_SharedAdmin``) starts an admin server of its own: the parent's loop
object, copied into the child, still reads as running there, so without the reset at fork
the child would borrow the parent's server (and announce a port nothing in the child
serves)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

_ROOT = Path(__file__).parents[1]

_SCRIPT = r"""
import asyncio, json, os, threading
from meshkit.observability import AdminOptions
from meshkit.server import _SharedAdmin

opts = AdminOptions(port=0)
ready = threading.Event()
leave = None
held = {}

def parent_loop():
    global leave
    async def main():
        global leave
        leave = asyncio.Event()
        held["admin"] = await _SharedAdmin.acquire(opts)
        ready.set()
        await leave.wait()
        await _SharedAdmin.release()
    loop = asyncio.new_event_loop()
    held["loop"] = loop
    loop.run_until_complete(main())
    loop.close()

t = threading.Thread(target=parent_loop, daemon=True)
t.start()
assert ready.wait(20)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    async def child():
        admin = await asyncio.wait_for(_SharedAdmin.acquire(opts), 20)
        own = _SharedAdmin._slots[asyncio.get_running_loop()].server is admin
        out = {"own": own, "same_object": admin is held["admin"]}
        await _SharedAdmin.release()
        return out
    try:
        out = asyncio.run(child())
    except BaseException as e:
        out = {"error": repr(e)}
    os.write(w, json.dumps(out).encode())
    os._exit(0)
os.close(w)
data = b""
while chunk := os.read(r, 4096):
    data += chunk
os.waitpid(pid, 0)
held["loop"].call_soon_threadsafe(leave.set)
t.join(20)
print(data.decode())
"""


def test_a_forked_child_starts_its_own_ephemeral_admin_server() -> None:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=_ROOT, capture_output=True,
                          text=True, timeout=50)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"own": True, "same_object": False}, out
