"""Shared fixtures: a fast local registry in a temp dir and in-process echo servers."""

from __future__ import annotations

import compileall
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from tests.support.echo import add_echo

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_REPO = Path(__file__).resolve().parents[1]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Byte-compile the repository's Python code once (into the gitignored __pycache__
    dirs) before any test runs. About 250 tests start Python processes that import meshkit
    and the examples; with PYTHONDONTWRITEBYTECODE set (as in CI images and this box) no
    process writes .pyc files, so each of them compiled every module it imports from source
    again (about 0.2 s of CPU per process). Python still reads .pyc files that exist, and
    checks them against the source's mtime and size, so an edited file is compiled again.
    About 1 s the first time, a few ms after; a read-only checkout just skips it."""
    for name in ("meshkit", "examples", "tests", "benchmarks"):
        if (_REPO / name).is_dir():
            compileall.compile_dir(_REPO / name, quiet=2)


if os.environ.get("MESHKIT_TEST_LOOP", "asyncio") == "uvloop":

    def pytest_asyncio_loop_factories(config: pytest.Config,
                                      item: pytest.Item) -> dict[str, Callable[[], Any]]:
        """``MESHKIT_TEST_LOOP=uvloop``: every async test runs on uvloop's event loop
        (``meshkit[fast]`` installs uvloop); otherwise on asyncio's."""
        import uvloop

        return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    """A private directory for one test's local registry."""
    return tmp_path / "registry"


@pytest.fixture
async def registry(registry_dir: Path) -> AsyncIterator[LocalRegistry]:
    """A local registry with a 3 s TTL (the library's default; heartbeats every 1 s)
    and a 50 ms watch poll. No test judges expiry on it (those build their own registry
    with the TTL they judge); with 1 s, a worker's event loop starved for 0.7 s (a
    cycle test's collections beside another busy process) let its servers' rows lapse
    between heartbeats, and their calls failed "no endpoint is registered"."""
    reg = LocalRegistry(LocalOptions(path=registry_dir, ttl_s=3.0, poll_interval_s=0.05))
    yield reg
    await reg.close()


EchoFactory = Callable[..., Awaitable[meshkit.MeshServer]]


@pytest.fixture
async def echo_servers(registry: LocalRegistry) -> AsyncIterator[EchoFactory]:
    """Start echo servers registered as service ``echo``; all are drained at teardown."""
    started: list[meshkit.MeshServer] = []

    async def start(
        instance_id: str,
        service: str = "echo",
        delay_s: float = 0.0,
        served: list[str] | None = None,
        **opts: object,
    ) -> meshkit.MeshServer:
        options = meshkit.ServeOptions(
            insecure=True, instance_id=instance_id, drain_delay_s=0.0, grace_s=1.0, **opts
        )  # type: ignore[arg-type]
        srv = meshkit.MeshServer(
            service, [add_echo(instance_id, delay_s, served)], registry=registry, options=options
        )
        await srv.start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        await srv.drain()
