"""Fork tests shared by the Consul and etcd registries' suites (``test_consul.py``,
``test_etcd.py``): the scripts a test runs in a subprocess of its own (the test process
has threads a fork would copy), the runner, and the checks of what a script printed.

A script is built from a registry's *setup* (its imports and the names the script's body
uses, documented on each builder) and a body shared by both registries. Every script
takes the repository's root as ``sys.argv[1]`` (given by :func:`forked`) and prints
``name: value`` lines.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

#: What every script starts with: the repository on ``sys.path``.
_PRELUDE = textwrap.dedent("""
    import asyncio, gc, os, sys, time
    sys.path.insert(0, sys.argv[1])
""")


def _script(setup: str, *body: str) -> str:
    """The prelude, a registry's ``setup``, then the pieces of ``body`` (each indented as
    it pleases)."""
    return "".join(textwrap.dedent(piece) for piece in (_PRELUDE, setup, *body))


def forked(script: str, *args: str, timeout_s: float = 45) -> tuple[dict[str, str], str]:
    """Run ``script`` (a script that forks: in a subprocess of its own, since the test
    process has threads a fork would copy) with the repository's root and ``args`` as its
    arguments, bounded by ``timeout_s`` seconds: its ``name: value`` lines, and its output
    to quote. Raises ``subprocess.TimeoutExpired`` past ``timeout_s``."""
    done = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).resolve().parents[2]), *args],
        capture_output=True, text=True, timeout=timeout_s, check=False)
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    return lines, done.stdout + done.stderr[-3000:]


# -- a forked child looks its registry's peers up by name ----------------------------------
def lookup_after_fork_script(setup: str) -> str:
    """A script whose parent reads through a registry (``services()``), closes a second
    one, forks, and reads through both in the child, then through the first again in the
    parent. ``setup`` defines ``reg`` and ``closed``: two registries of the same peer,
    named by host name (``localhost``). Prints ``parent``, ``child``, ``child closed``
    and ``parent after``: ``ok`` or the error and how long it took."""
    return _script(setup, """
        async def read(registry):
            started = time.monotonic()
            try:
                await registry.services()
                return "ok"
            except Exception as exc:
                return f"{type(exc).__name__}: {exc} ({time.monotonic() - started:.1f} s)"

        async def use_then_close():
            await read(closed)
            await closed.close()

        print("parent:", asyncio.run(read(reg)), flush=True)
        asyncio.run(use_then_close())
        pid = os.fork()
        if pid == 0:
            print("child:", asyncio.run(read(reg)), flush=True)
            print("child closed:", asyncio.run(read(closed)), flush=True)
            asyncio.run(reg.close())
            os._exit(0)
        os.waitpid(pid, 0)
        print("parent after:", asyncio.run(read(reg)), flush=True)
        asyncio.run(reg.close())
    """)


def check_lookup_after_fork(lines: dict[str, str], out: str, names: str) -> None:
    """Assert what :func:`lookup_after_fork_script` printed: every read answered but the
    child's through the registry closed before the fork, which says it is closed.
    ``names``: what the child looks up, for the message ("the agent's name")."""
    assert lines.get("parent") == "ok", out  # the control
    assert lines.get("child") == "ok", (
        f"a forked child cannot look {names} up (the registry's lookup pool "
        f"has no thread there): {lines.get('child')!r}")
    assert "RegistryError" in lines.get("child closed", "") and "is closed" in lines[
        "child closed"], out
    assert lines.get("parent after") == "ok", out


# -- workers forked from one registry draw their own backoff jitter ------------------------
def workers_jitter_script(setup: str) -> str:
    """A script whose master, having used a registry, forks three workers that each
    report the backoff delays they would sleep after their 1st..6th consecutive failure
    (full jitter). ``setup`` defines ``reg`` (built with ``rng=random.Random(7)`` when
    asked for a given generator, else the default), ``master`` (a ``LoopThread`` that
    has used ``reg``) and ``leave()`` (a coroutine function: the master's clean-up).
    Prints ``worker0`` .. ``worker2``: each worker's delays."""
    return _script(setup, """
        workers = []
        for n in range(3):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                # the delays a worker's retries sleep after its 1st..6th consecutive
                # failure (full jitter)
                os.write(w, repr([reg._backoff_delay(a) for a in range(1, 7)]).encode())
                os._exit(0)
            os.close(w)
            workers.append((pid, r))
        for n, (pid, r) in enumerate(workers):
            out = b""
            while chunk := os.read(r, 4096):
                out += chunk
            os.waitpid(pid, 0)
            print(f"worker{n}: {out.decode()}", flush=True)
        master.run(leave())
    """)


def check_workers_jitter(lines: dict[str, str], out: str, rng: str) -> None:
    """Assert what :func:`workers_jitter_script` printed: three workers' delays, all
    different with the default generator, all equal with a ``given`` one."""
    delays = [lines.get(f"worker{n}") for n in range(3)]
    assert all(delays), out
    if rng == "given":
        assert len(set(delays)) == 1, delays
        return
    assert len(set(delays)) == 3, (
        f"the forked workers drew the same backoff delays: {delays[0]} (all three)")


# -- a master's connections end at its close while a forked worker lives ------------------
#: The ESTABLISHED TCP connections to 127.0.0.1:<port> (``/proc/net/tcp``) of this process's
#: own sockets, or, given ``inodes``, of those sockets whichever process holds them.
_ESTABLISHED_TO = '''
    def established_to(port, inodes=None):
        mine = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                link = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                mine.add(link[8:-1])
        out = set()
        for line in open("/proc/net/tcp").read().splitlines()[1:]:
            f = line.split()
            if int(f[2].split(":")[1], 16) == port and f[3] == "01":  # ESTABLISHED
                if f[9] in (mine if inodes is None else inodes):
                    out.add(f[9])
        return out
'''


def connections_after_close_script(setup: str) -> str:
    """A script whose master registers an instance and watches its service, forks a
    worker that never touches the registry (or, ``control``, does not fork), then
    deregisters and closes the registry. Arguments after the root: the peer's port on
    127.0.0.1, ``fork`` or ``control``, the service. ``setup`` defines ``registry(port)``
    (a registry of that peer, renewing its instances every quarter to third of a second:
    two or three renewals in the 0.75 s before the fork). Prints ``master connections``
    (the master's ESTABLISHED connections to the peer before the fork) and ``still
    established after close`` (how many of those are, a second after the close, at
    once when none is)."""
    return _script(setup, """
        from meshkit.discovery._types import Instance
        from tests.support.loops import LoopThread
    """, _ESTABLISHED_TO, """
        port, fork, service = int(sys.argv[2]), sys.argv[3] == "fork", sys.argv[4]
        reg = registry(port)
        inst = Instance(service=service, instance_id=f"{service}-0", host="127.0.0.1",
                        port=41000)
        master = LoopThread()
        master.run(reg.register(inst))

        async def watch_on(first):  # the master watches a service too (a long poll or
            async for _ in reg.watch(service):  # a stream of its own)
                first.set()

        async def start_watch():
            first = asyncio.Event()
            task = asyncio.ensure_future(watch_on(first))
            await first.wait()
            return task

        master.run(start_watch())
        time.sleep(0.75)  # renewals on a pooled connection, the watch waiting
        ours = established_to(port)
        print("master connections:", len(ours), flush=True)
        pid = None
        if fork:
            pid = os.fork()
            if pid == 0:  # a worker, alive for a while; it never touches the registry
                time.sleep(6)
                os._exit(0)
        master.run(reg.deregister(inst))
        master.run(reg.close())  # "close the HTTP sessions"
        # a second for them to close (at once when closed: the FIN is sent at close)
        gone = time.monotonic() + 1.0
        while established_to(port, ours) and time.monotonic() < gone:
            time.sleep(0.02)
        print("still established after close:", len(established_to(port, ours)),
              flush=True)
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    """)


def check_connections_after_close(lines: dict[str, str], out: str, peer: str) -> None:
    """Assert what :func:`connections_after_close_script` printed: the master had a
    connection, and none is ESTABLISHED after its close. ``peer``: whose connections, for
    the message ("agent")."""
    assert int(lines.get("master connections", "0")) >= 1, out
    assert lines.get("still established after close") == "0", (
        f"{lines.get('still established after close')} of the master's "
        f"{lines.get('master connections')} {peer} connections still ESTABLISHED after its "
        f"close(), while a forked worker lives")


# -- a forked worker leaves its master's watch and requests undisturbed --------------------
def parent_after_fork_script(setup: str) -> str:
    """A script whose master registers an instance, watches its service and makes a
    request on a pooled connection, forks a worker, then registers two more instances,
    timing each register() and how soon its watch lists each. Arguments after the root:
    the peer's port on 127.0.0.1, ``live`` (the worker lives on meanwhile) or
    ``collect`` (the worker lets go of what it inherited, collects it and exits), the
    service. ``setup`` defines ``registry(port)`` (a registry of that peer whose quiet
    watch is not resumed for 20 s or more) and ``let_go(reg)`` (drops the parent's
    clients or sessions the child inherited, in the child). Prints ``register 1``,
    ``register 2`` (``ok (<s> s)`` or the error) and ``seen 1``, ``seen 2`` (seconds
    from the register() to the watch listing it, ``inf`` if not within 12 s)."""
    return _script(setup, """
        from meshkit.discovery._types import Instance
        from tests.support.loops import LoopThread

        port, worker, service = int(sys.argv[2]), sys.argv[3], sys.argv[4]
        reg = registry(port)

        def inst(n):
            return Instance(service=service, instance_id=f"{service}-{n}",
                            host="127.0.0.1", port=41000 + n)

        master = LoopThread()
        master.run(reg.register(inst(0)))
        seen = {}  # instance id -> when the master's watch first listed it (monotonic)

        async def watch():
            async for instances in reg.watch(service):
                now = time.monotonic()
                for i in instances:
                    seen.setdefault(i.instance_id, now)

        async def start_watch():
            task = asyncio.ensure_future(watch())
            while inst(0).instance_id not in seen:
                await asyncio.sleep(0.01)
            return task

        task = master.run(start_watch())
        master.run(reg.services())  # a request on a pooled connection
        time.sleep(0.3)  # the connections idle, the watch waiting for events
        pid = os.fork()
        if pid == 0:
            if worker == "collect":
                # the worker lets go of what it inherited (its interpreter's exit may):
                # the parent's clients are collected, their connectors close their
                # transports through asyncio, in the parent's loop as the child's copy
                # has it
                let_go(reg)
                gc.collect()
                os._exit(0)
            time.sleep(30)  # "live": alive while the master works on (killed below)
            os._exit(0)
        if worker == "collect":
            os.waitpid(pid, 0)
        else:
            time.sleep(0.5)
        for n in (1, 2):
            started = time.monotonic()
            try:
                master.run(reg.register(inst(n)), 30)
                took = f"ok ({time.monotonic() - started:.1f} s)"
            except Exception as exc:
                took = f"{type(exc).__name__}: {exc}"
            while inst(n).instance_id not in seen and time.monotonic() < started + 12:
                time.sleep(0.02)
            print(f"register {n}:", took, flush=True)
            print(f"seen {n}:",
                  f"{seen.get(inst(n).instance_id, float('inf')) - started:.1f}",
                  flush=True)
        if worker == "live":
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        for n in range(3):
            master.run(reg.deregister(inst(n)), 30)
        master.run(reg.close())
    """)


def check_master_undisturbed(lines: dict[str, str], out: str) -> None:
    """Assert what :func:`parent_after_fork_script` printed: each register() answered and
    the master's watch listed each instance within 8 s (at once when undisturbed; a
    silenced watch waits far longer: 20 s or more)."""
    for n in (1, 2):
        assert lines.get(f"register {n}", "").startswith("ok"), (
            f"the master's register() after its worker's fork: "
            f"{lines.get(f'register {n}')!r}\n{out}")
        assert float(lines.get(f"seen {n}", "inf")) < 8.0, (
            f"the master's watch listed its instance {n} after "
            f"{lines.get(f'seen {n}')} s\n{out}")
