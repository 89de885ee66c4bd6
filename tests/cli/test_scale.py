"""``meshkit services`` and ``meshkit prometheus-targets`` over large registries: many
instances to probe, many services to read. ``--timeout-s`` bounds each ``/readyz`` probe
and each registry read from its own start, not its place in a queue.

Every test talks to loopback only and compares times with wide margins (a read or probe
takes a fifth of its bound or less), so a loaded 2-core box does not decide the outcome.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from meshkit._cli import services as services_cli
from meshkit.discovery import Instance, LocalOptions, LocalRegistry

pytestmark = pytest.mark.timeout(90)


async def _admin_app(readyz: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> tuple[web.AppRunner, int]:
    """An aiohttp server on ``127.0.0.1:<ephemeral>`` answering ``GET /readyz`` with
    ``readyz``; its runner and port."""
    app = web.Application()
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


async def _register_local(reg_dir: Path, instances: list[Instance]) -> None:
    """Register ``instances`` in the local registry at ``reg_dir``; they stay live for
    their 60 s TTL after the registry is closed."""
    reg = LocalRegistry(LocalOptions(path=reg_dir, ttl_s=60.0))
    try:
        for inst in instances:
            await reg.register(inst)
    finally:
        await reg.close()


def _ready_after(delay_s: float) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A ``/readyz`` handler answering 200 after ``delay_s`` seconds."""
    async def readyz(request: web.Request) -> web.Response:
        await asyncio.sleep(delay_s)
        return web.json_response({"ready": True})

    return readyz


async def test_services_each_readyz_is_bounded_from_its_own_start_at_scale(
        tmp_path: Path) -> None:
    """1,000 instances whose admin servers each answer ``/readyz`` in 0.4 s (busy
    processes), listed with ``--timeout-s 2``: every one is ``ready``.

    ``--help`` says ``--timeout-s`` bounds "each /readyz". The probes used to go out all
    at once through one aiohttp session (100 pooled connections) under
    ``ClientTimeout(total=timeout_s)``, whose ``total`` counts the wait for a pooled
    connection: the probes queued behind the first hundreds ran out of time before they
    were sent, and about half of these healthy instances were listed ``unreachable``, a
    wrong health that grew with the fleet. Now at most 100 probes run at once and each
    one's timeout starts when its request does."""
    runner, port = await _admin_app(_ready_after(0.4))
    reg_dir = tmp_path / "registry"
    try:
        await _register_local(reg_dir, [
            Instance(service="big", instance_id=f"big-{i:04d}", host="127.0.0.1",
                     port=20000 + i, meta={"admin_port": str(port)}) for i in range(1000)])
        rows = await services_cli.collect(f"local://{reg_dir}", [], 2.0)
    finally:
        await runner.cleanup()
    health = collections.Counter(r.health for r in rows)
    assert len(rows) == 1000
    assert health == {"ready": 1000}, (
        f"1000 instances each answering /readyz in 0.4 s with --timeout-s 2 were listed "
        f"as {dict(health)}")


async def test_services_hung_admin_servers_do_not_make_healthy_ones_unreachable(
        tmp_path: Path) -> None:
    """150 instances whose ``/readyz`` never answers (hung processes) and 50 that answer
    at once, listed with ``--timeout-s 1``: the hung ones are ``unreachable`` and the 50
    healthy ones ``ready``, and the listing takes a few probe timeouts, not one per hung
    instance.

    The hung probes used to hold every pooled connection for the whole ``--timeout-s``
    while the healthy instances' probes waited for one and ran out of time unsent, so a
    few hung instances had the healthy rest listed ``unreachable``: an outage that was
    not there."""
    never = asyncio.Event()

    async def hangs(request: web.Request) -> web.Response:
        await never.wait()
        return web.json_response({"ready": True})

    hung_runner, hung_port = await _admin_app(hangs)
    ok_runner, ok_port = await _admin_app(_ready_after(0.0))
    reg_dir = tmp_path / "registry"
    loop = asyncio.get_running_loop()
    try:
        # "a-..." sorts first: the hung instances are probed before the healthy ones
        await _register_local(reg_dir, [
            Instance(service="svc", instance_id=f"a-hung-{i:03d}", host="127.0.0.1",
                     port=20000 + i, meta={"admin_port": str(hung_port)}) for i in range(150)
        ] + [Instance(service="svc", instance_id=f"b-ok-{i:03d}", host="127.0.0.1",
                      port=21000 + i, meta={"admin_port": str(ok_port)}) for i in range(50)])
        start = loop.time()
        rows = await services_cli.collect(f"local://{reg_dir}", [], 1.0)
        took = loop.time() - start
    finally:
        never.set()
        await hung_runner.cleanup()
        await ok_runner.cleanup()
    health = collections.Counter(
        (r.instance_id.split("-")[1], r.health) for r in rows)
    assert health == {("hung", "unreachable"): 150, ("ok", "ready"): 50}, dict(health)
    # two waves of hung probes (150 over 100 at once) at 1 s each, plus the registry reads
    assert took < 10.0, f"the listing took {took:.1f} s"
