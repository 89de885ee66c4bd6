"""A Consul answer that echoes the credentials reached the error's ``__cause__``.

``ConsulRegistry`` redacts the ACL token and the basic-auth credentials (raw and as
base64) from its ``RegistryError`` messages, its status and its logs, because an
authenticating proxy's error page may echo the request's headers. But a failed read
(``services()``, ``snapshot()``, ``failing()``) or deregistration raised that error
``from`` py-consul's exception, whose message is the answer's body as it came: the
traceback of any such error (an application's crash, ``log.exception``, an error tracker)
printed "The above exception was the direct cause of ...: ACLPermissionDenied: bad
credentials: Basic <base64 of user:password>". The error is now chained from a copy of
that exception with the same redaction (its type and the rest of its text kept).
"""

from __future__ import annotations

import base64
import traceback
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from meshkit.errors import RegistryError
from tests.discovery.conformance import make_instance, unique_service

pytestmark = pytest.mark.timeout(60)

PASSWORD = "Pw9c9-proxy-Zk7q"
TOKEN = "acl-9c9-token-Qm3x"
BASIC = base64.b64encode(f"ops:{PASSWORD}".encode()).decode().rstrip("=")


class _Echo:
    """An authenticating proxy's stand-in: every answer is ``status`` with a body that
    echoes the request's ``Authorization`` and ``X-Consul-Token`` headers."""

    def __init__(self, status: int) -> None:
        self.status = status
        self._runner: web.AppRunner | None = None
        self.addr = ""

    async def _answer(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=self.status, text=(
            f"bad credentials: {request.headers.get('Authorization')} "
            f"token {request.headers.get('X-Consul-Token')}"))

    async def __aenter__(self) -> _Echo:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.addr = f"127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


OPERATIONS: dict[str, Callable[[ConsulRegistry], Awaitable[object]]] = {
    "services": lambda r: r.services(),
    "snapshot": lambda r: r.snapshot("orders"),
    "failing": lambda r: r.failing("orders"),
    "deregister": lambda r: r.deregister(make_instance(unique_service(), 1)),
}


@pytest.mark.parametrize("status", [400, 403, 500])
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
async def test_the_traceback_of_a_refused_request_holds_no_credential(
        status: int, operation: str) -> None:
    async with _Echo(status) as echo:
        options = ConsulOptions(addr=echo.addr, http_auth=f"ops:{PASSWORD}", token=TOKEN,
                                request_timeout_s=5.0)
        async with ConsulRegistry(options) as registry:
            with pytest.raises(RegistryError) as info:
                await OPERATIONS[operation](registry)
    text = "".join(traceback.format_exception(info.value))
    assert [s for s in (PASSWORD, TOKEN, BASIC) if s in text] == [], text
    # still chained: the agent's (or proxy's) exception, its type and its words
    cause = info.value.__cause__
    assert cause is not None and "bad credentials" in str(cause), text
    assert type(cause).__name__ in text
