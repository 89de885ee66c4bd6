"""EtcdRegistry with ``user``/``password`` (c4fb056f): an endpoint that answers with a
redirect (a load balancer or proxy in front of etcd sending ``307``/``308`` to another
host: an SSO login page, a moved service) got the password sent on to that host.
aiohttp follows redirects by default and re-sends a 307/308's body, so
``/v3/auth/authenticate``'s ``{"name": ..., "password": ...}`` reached the redirect's
target (it drops only the ``Authorization`` header across origins). etcd never
redirects (nor does its Go client, gRPC, follow one): a redirect is now an error answer
of that member, the password sent nowhere else. Two servers on 127.0.0.1, the second
recording what reaches it."""

from __future__ import annotations

import pytest
from aiohttp import web

from meshkit.discovery import EtcdOptions, EtcdRegistry
from meshkit.errors import RegistryError
from tests.discovery.conformance import make_instance, unique_service

pytestmark = pytest.mark.timeout(30)

_PASSWORD = "redir3ct-Pa55word"


@pytest.mark.parametrize("status", [307, 308], ids=["307", "308"])
async def test_a_redirect_gets_no_password(status: int) -> None:
    seen: list[bytes] = []

    async def elsewhere(request: web.Request) -> web.Response:
        seen.append(await request.read())
        return web.json_response({"token": "not-etcd"})

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={
            "Location": f"http://127.0.0.1:{other_port}{request.path}"})

    runners = []
    try:
        ports = []
        for handler in (elsewhere, redirect):
            app = web.Application()
            app.router.add_route("POST", "/{tail:.*}", handler)
            runner = web.AppRunner(app)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            ports.append(runner.addresses[0][1])
        other_port, port = ports
        async with EtcdRegistry(EtcdOptions(
                endpoints=(f"http://127.0.0.1:{port}",), user="root", password=_PASSWORD,
                request_timeout_s=1.0, operation_timeout_s=0.5)) as registry:
            with pytest.raises(RegistryError, match=f"HTTP {status}"):
                await registry.services()
            with pytest.raises(RegistryError, match=f"HTTP {status}"):
                await registry.register(make_instance(unique_service(), 1))
    finally:
        for runner in runners:
            await runner.cleanup()
    assert seen == [], seen
