"""meshkit._loop.LoopCache in a child made by ``os.fork()`` while the parent's loop ran a
task (a ``ProcessPoolExecutor`` worker, forked by ``run_in_executor`` from inside the
loop; Linux's default start method on Python 3.11): the child's own loop gets its own
tasks, not the parent's task it inherited a copy of."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork here")]

_SCRIPT = textwrap.dedent("""
    import asyncio, multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from meshkit._loop import LoopCache
    from meshkit import _calls

    cache = LoopCache()

    async def check():
        # the module-level cache meshkit's calls use (their cancel() cancels its task)
        # and one of this script's, both asked in the parent before the fork
        return [cache.current_task() is asyncio.current_task(),
                _calls._current_task() is asyncio.current_task()]

    def worker():
        return asyncio.run(check())

    async def main():
        print("parent", await check())
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            print("worker", await asyncio.get_running_loop().run_in_executor(pool, worker))

    asyncio.run(main())
""")


def test_a_forked_worker_gets_its_own_task(tmp_path: Path) -> None:
    """In a forked worker the caches answered with the parent's task that was running
    at the fork (a copy that never runs there), for ever, so a meshkit call's cancel()
    in the worker cancelled that task instead of the caller's; each cache now forgets
    its loop in a forked child (``os.register_at_fork``, no per-call cost)."""
    script = tmp_path / "fork_pool.py"
    script.write_text(_SCRIPT)
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=50, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "parent [True, True]" in lines, done.stdout
    assert "worker [True, True]" in lines, (done.stdout, done.stderr)
