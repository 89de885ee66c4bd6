"""Shared fixtures: a fast local registry in a temp dir and in-process echo servers."""

from __future__ import annotations

import compileall
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from tests.support.echo import add_echo
from tests.support.rewrite_cache import rewrite_ahead

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
    if not hasattr(session.config, "workerinput"):
        # Not in an xdist worker: the controller (whose hook runs before xdist starts its
        # workers), or a plain run. See tests/support/rewrite_cache.py: each worker
        # rewrote every test module's asserts again (30 s of CPU each, 9 s cached).
        rewrite_ahead(session.config)


#: The suite's longest files, longest first (their tests' seconds summed, a loaded 2-core
#: run of 2026-12-06: 80, 78, 59, 56, 45, 40, 38, 33, 32, 31, 28, 27, 26, 25, 23, 21 s).
#: ``make test`` hands whole files to its workers in collection order (xdist ``--dist
#: loadfile``), so a long file collected late (the top-level tests/test_*.py come after
#: every directory) kept one worker busy while the others had run out of files: longest
#: first is the usual cure for that tail (LPT scheduling). The rest keep their order.
_LONG_FILES_FIRST = (
    "tests/benchmarks/test_smoke.py",
    "tests/discovery/test_etcd.py",
    "tests/cli/test_ops_commands.py",
    "tests/test_server.py",
    "tests/test_handlers.py",
    "tests/integration/test_demo.py",
    "tests/discovery/test_consul.py",
    "tests/faults/test_quick.py",
    "tests/test_pool.py",
    "tests/observability/test_cycles.py",
    "tests/messaging/test_consumer_pulls.py",
    "tests/messaging/test_relay_rounds.py",
    "tests/resilience/test_ratelimit.py",
    "tests/discovery/test_local_faults.py",
    "tests/integration/test_processes.py",
    "tests/observability/test_metrics.py",
    # the longest tests of files of few tests in the clean-clone CI run of 2026-12-07 (8
    # helpers beside it: about 5.7 times the usual times), handed out 58th to 814th
    "tests/test_policy_properties.py",  # 3 tests 69, 57, 50 s
    "tests/observability/test_log_writer.py",  # 56, 50 s
    "tests/test_hunt40_r2_server_start_cut_loop_end.py",  # 57, 37 s
    "tests/examples/test_hunt37_a10_demo_cert_renewal.py",  # 1 test, 80 s
    "tests/examples/test_event_processes.py",  # 48 s
    "tests/test_hunt39_balancer_wrr_few_ready_cost.py",  # 47 s
    "tests/integration/test_failover.py",  # 1 test, 42 s
    "tests/integration/test_flood.py",  # 1 test, 34 s
)


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, keep the order the workers collected (see below): pytest-xdist >= 3.6
    reorders ``--dist loadfile``'s files by their number of tests, most first, unless
    told not to (``--loadscope-reorder``, on by default), and so undid the longest-first
    order of ``_LONG_FILES_FIRST``: ``tests/integration/test_demo.py`` (3 tests, 40 s)
    was handed out 493rd of 825 files, ``tests/faults/test_quick.py`` (5 tests, 33 s)
    289th."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the files of ``_LONG_FILES_FIRST`` first, in that order (a stable sort: every
    other test keeps its place, and the tests of a file theirs). In an xdist worker (the
    collection its controller hands out files from), the other files follow by their
    number of tests, most first, as xdist's own reordering had them."""
    rank = {name: i for i, name in enumerate(_LONG_FILES_FIRST)}
    last = len(rank)
    if not hasattr(config, "workerinput"):
        items.sort(key=lambda item: rank.get(item.nodeid.partition("::")[0], last))
        return
    count: dict[str, int] = {}
    for item in items:
        name = item.nodeid.partition("::")[0]
        count[name] = count.get(name, 0) + 1

    def key(item: pytest.Item) -> tuple[int, int]:
        name = item.nodeid.partition("::")[0]
        return (rank.get(name, last), 0 if name in rank else -count[name])

    items.sort(key=key)


if os.environ.get("MESHKIT_TEST_LOOP", "asyncio") == "uvloop":

    def pytest_asyncio_loop_factories(config: pytest.Config,
                                      item: pytest.Item) -> dict[str, Callable[[], Any]]:
        """``MESHKIT_TEST_LOOP=uvloop``: every async test runs on uvloop's event loop
        (``meshkit[fast]`` installs uvloop); otherwise on asyncio's."""
        import uvloop

        return {"uvloop": uvloop.new_event_loop}

elif os.environ.get("MESHKIT_TEST_LOOP", "asyncio") == "eager":

    def pytest_asyncio_loop_factories(config: pytest.Config,
                                      item: pytest.Item) -> dict[str, Callable[[], Any]]:
        """``MESHKIT_TEST_LOOP=eager`` (Python 3.12+): every async test runs on asyncio's
        loop with ``asyncio.eager_task_factory``, a task factory users set for speed: a
        task runs its first step inside ``create_task()``, before the caller goes on
        (tests/support/loops.py's ``new_loop``)."""
        from tests.support.loops import new_loop

        return {"eager": new_loop}


@pytest.fixture(autouse=True)
def _structlog_config_restored() -> Iterator[None]:
    """structlog's configuration as it was before each test, put back after it when the
    test changed it. A test that configured logging in-process (``configure_logging``, a
    command's or the demo's ``main()``, which set a level filter: ``ERROR`` for a
    ``meshkit`` command, ``WARNING`` for the demo) left its ``wrapper_class`` in place,
    and every later test of that worker that configures structlog without one (its
    processors alone, ``structlog.testing.capture_logs``) lost its ``INFO`` lines: order-
    dependent failures of CI runs (a signer's "valid again" line, console access lines
    not reached within 10 s)."""
    holder = getattr(getattr(structlog, "_config", None), "_CONFIG", None)
    before = structlog.get_config()
    before["processors"] = list(before["processors"])
    configured = getattr(holder, "is_configured", None)
    yield
    after = structlog.get_config()
    if any(after[k] is not v for k, v in before.items() if k != "processors") or list(
            after["processors"]) != before["processors"]:
        structlog.configure(**before)
        if holder is not None and configured is not None:
            holder.is_configured = configured


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    """A private directory for one test's local registry."""
    return tmp_path / "registry"


@pytest.fixture
async def registry(registry_dir: Path) -> AsyncIterator[LocalRegistry]:
    """A local registry with a 15 s TTL, heartbeats every 1 s (the library's default
    interval, for its default 3 s TTL) and a 50 ms watch poll. No test judges expiry on
    it (those build their own registry with the TTL they judge). A row lapses only when
    a worker's event loop is starved for longer than the TTL less one heartbeat: with a
    1 s TTL, 0.7 s of a cycle test's collections did it; with 3 s, the CI run of
    2026-12-07 at load ~24 (8 helpers on 2 cores) still lost rows between heartbeats
    (stream tests failed "service 'd': no endpoint is registered", the watch saying []
    then ['d1'] again); now it takes 14 s (tests/test_hunt41_f1_registry_fixture_ttl.py).
    Dead rows are swept after ``10 * ttl_s``; the copies tests make of ``options`` keep
    the interval."""
    reg = LocalRegistry(LocalOptions(path=registry_dir, ttl_s=15.0, heartbeat_interval_s=1.0,
                                     poll_interval_s=0.05))
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
