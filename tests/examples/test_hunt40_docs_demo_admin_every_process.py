"""README ("Two commands"): ``make demo`` prints "each process's admin URL". Its "Admin
servers" list was built from the demo client's two channels (userd, orderd), so the
projection service ``summaryd-1``, a process of the stack with an admin server of its
own, was never listed (``make demo`` here: userd-1, userd-2, orderd-1 and no summaryd).
The list now comes from the registry for every live instance the stack started; a
killed one is left out."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

import meshkit
from examples.ecom.demo import Proc, Stack, print_admin
from meshkit.discovery import registry_from_uri

pytestmark = pytest.mark.timeout(60)


async def test_every_live_process_of_the_stack_is_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok" if request.path == "/readyz" else "")

    app = web.Application()
    app.router.add_get("/readyz", ok)
    app.router.add_get("/metrics", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    registry = registry_from_uri(f"local://{tmp_path / 'registry'}")
    stack = Stack(tmp_path, "local://unused", None)
    try:
        for n, (service, iid) in enumerate(
            [
                ("userd", "userd-1"),
                ("orderd", "orderd-1"),
                ("orderd", "orderd-2"),
                ("summaryd", "summaryd-1"),
            ]
        ):
            meta = {"admin_port": str(port)}
            await registry.register(
                meshkit.Instance(
                    service=service, instance_id=iid, host="127.0.0.1", port=50000 + n, meta=meta
                )
            )
            stack.procs[iid] = Proc(service, iid, proc=None, log=tmp_path / iid)  # type: ignore[arg-type]
        stack.procs["orderd-2"].killed = True
        await print_admin(registry, stack, timeout_s=5.0)
    finally:
        await registry.close()
        await runner.cleanup()
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if "/readyz -> 200" in line]
    assert listed == ["orderd-1", "summaryd-1", "userd-1"], out
