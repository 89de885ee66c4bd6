"""pytest's assertion-rewritten test modules written to their cache once, before a run's
workers collect.

pytest rewrites the ``assert`` statements of every test module it imports (an AST pass,
then ``compile``) and keeps the result as ``__pycache__/<name>.cpython-311-pytest-<version>
.pyc``, but only where ``sys.dont_write_bytecode`` is false: with PYTHONDONTWRITEBYTECODE
set (CI images, this box) no process wrote them, and every ``make test`` worker rewrote
all of the suite's ~850 test modules again. A collection of the whole suite took 30 s of
CPU that way and 9.3 s with the cache in place (2 cores, 2026-12-07, 6,922 tests); with
three xdist workers collecting at once on two cores, about 30 s of a run's wall time
before its first test. pytest reads a cached file whatever that flag says, and checks it
against the source's hash (PEP 552 checked-hash pycs), so an edited test file is
rewritten again.

:func:`rewrite_ahead` writes the missing or stale ones, in parallel (one process per
CPU), in the process that runs before the workers (the xdist controller, or a plain
run). It uses two of pytest's private functions (``_rewrite_test``, ``_write_pyc``, the
ones its import hook uses): with a pytest that has neither it does nothing, and the
suite runs as before. A file it cannot rewrite (a syntax error) is left to the
collection, which reports it.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import signal
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest
from _pytest.pathlib import fnmatch_ex

try:
    from _pytest.assertion import rewrite as _rewrite
    from _pytest.assertion.rewrite import assertstate_key

    _REWRITE_TEST: Any = _rewrite._rewrite_test
    _WRITE_PYC: Any = _rewrite._write_pyc
    _PYC_TAIL: str = _rewrite.PYC_TAIL
except (ImportError, AttributeError):  # another pytest: no cache written ahead
    _REWRITE_TEST = _WRITE_PYC = None
    _PYC_TAIL = ""

#: Below this many stale files, rewrite them in this process (a pool's start costs more).
_POOL_FROM = 24

#: The config a forked pool process rewrites with (set in the parent before the fork).
_CONFIG: pytest.Config | None = None


def _cached_pyc(source: Path) -> Path:
    return _rewrite.get_cache_dir(source) / (source.name[:-3] + _PYC_TAIL)


def _is_fresh(source: Path) -> bool:
    """Whether ``source``'s cached rewrite exists and matches its current text (the
    header pytest's ``_read_pyc`` checks: magic number, checked-hash flags, hash)."""
    try:
        with open(_cached_pyc(source), "rb") as fp:
            head = fp.read(16)
        text = source.read_bytes()
    except OSError:
        return False
    return (
        len(head) == 16
        and head[:4] == importlib.util.MAGIC_NUMBER
        and head[4:8] == b"\x03\x00\x00\x00"
        and head[8:16] == importlib.util.source_hash(text)[:8]
    )


def _rewrite_one(source: str) -> bool:
    """Rewrite and cache one test module as pytest's import hook would; False when it
    could not (the collection will then rewrite it, or report its error)."""
    config = _CONFIG
    assert config is not None
    path = Path(source)
    try:
        if not _rewrite.try_makedirs(_rewrite.get_cache_dir(path)):
            return False
        source_hash, code = _REWRITE_TEST(path, config)
        return bool(_WRITE_PYC(config.stash[assertstate_key], code, source_hash, _cached_pyc(path)))
    except Exception:  # a syntax error, an unreadable file: the collection reports it
        return False


def _leave_sigint_to_the_parent() -> None:
    """A pool process's initializer: ignore SIGINT. A Ctrl-C reaches the terminal's whole
    process group; the pool's processes died of it each printing ``Process
    ForkPoolWorker-N:`` and a traceback into the run's output, while the parent's
    ``KeyboardInterrupt`` ends the pool (``terminate``) and the session anyway."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _rewrite_in_pool(stale: list[str], processes: int) -> int:
    """Rewrite ``stale`` in ``processes`` forked processes; return how many were written.

    A ``ProcessPoolExecutor``, not a ``multiprocessing.Pool``: a pool process that dies
    (the OOM killer of a loaded box) breaks it, and what it did not write is left to the
    collection; the ``Pool`` lost that process's task and waited for it for ever, the
    session hung. Interrupted (Ctrl-C), the rewrites not started are dropped and those
    under way (a chunk each) awaited, so that no pool process is left behind."""
    written = 0
    with ProcessPoolExecutor(
        processes,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_leave_sigint_to_the_parent,
    ) as pool:
        try:
            for done in pool.map(_rewrite_one, stale, chunksize=8):
                written += done
        except BrokenProcessPool:  # a pool process died: the collection rewrites the rest
            pass
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return written


def _candidates(config: pytest.Config) -> Iterable[Path]:
    """The files the run's collection will rewrite: test modules (``python_files``) and
    ``conftest.py`` files at or under its arguments (or ``testpaths``)."""
    patterns: Sequence[str] = config.getini("python_files")
    base = config.invocation_params.dir
    seen: set[Path] = set()
    for arg in config.args:
        top = (base / arg.partition("::")[0]).resolve()
        files = [top] if top.is_file() else sorted(top.rglob("*.py")) if top.is_dir() else []
        for path in files:
            if path in seen or any(
                p.startswith(".") or p in ("__pycache__", "node_modules")
                for p in path.relative_to(top).parts[:-1]
            ):
                continue
            seen.add(path)
            if path.name == "conftest.py" or any(fnmatch_ex(p, path) for p in patterns):
                yield path


def rewrite_ahead(config: pytest.Config) -> int:
    """Write the cached rewrite of each test module of this run that lacks a fresh one;
    return how many were written. One process per CPU this process may use when there
    are many (a forked pool), none with a pytest lacking the private functions."""
    global _CONFIG
    if _REWRITE_TEST is None or _WRITE_PYC is None or not _PYC_TAIL:
        return 0
    if config.getoption("assertmode", "rewrite") != "rewrite" or assertstate_key not in (
        config.stash
    ):  # --assert=plain: nothing is rewritten
        return 0
    stale = [str(p) for p in _candidates(config) if not _is_fresh(p)]
    if not stale:
        return 0
    _CONFIG = config
    try:
        cpus = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
        if len(stale) < _POOL_FROM or cpus < 2 or not hasattr(os, "fork"):
            return sum(map(_rewrite_one, stale))
        return _rewrite_in_pool(stale, min(cpus, len(stale) // 8))
    finally:
        _CONFIG = None
