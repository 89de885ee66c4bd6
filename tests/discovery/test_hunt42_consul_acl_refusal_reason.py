"""ConsulRegistry: a request the agent refuses 403 says what to do about the ACL token.

A 403 is the agent's ACL system refusing (or a proxy in front of it). register() quoted
the answer as it came: ``refused to register 'orderd-1': HTTP 403: `` when it had no body
(a proxy's refusal), and Consul's own ``Permission denied: token with AccessorID
'00000000-0000-0000-0000-000000000002' lacks permission ...`` when no token was sent
at all, which names the anonymous token's accessor rather than saying that none was
given; deregister(), reads and heartbeats said ``ACLPermissionDenied: no detail`` for an
empty answer. Each 403 now adds whether a token was sent: none (set
``CONSUL_HTTP_TOKEN`` or ``CONSUL_HTTP_TOKEN_FILE``), or the token was refused (unknown,
expired or lacking the permission); an empty answer reads ``(no body)``. The token itself
is never shown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from meshkit.errors import RegistryError
from tests.discovery.conformance import make_instance, unique_service
from tests.discovery.consul_double import ConsulDouble

pytestmark = pytest.mark.timeout(30)

TOKEN = "6f1c2b8e-secret-token-value"
NO_TOKEN = "no ACL token was sent: set CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE"
REFUSED = "the ACL token was refused"


@pytest.fixture
async def bare_403() -> AsyncIterator[str]:
    """An HTTP server (a proxy in front of the agent) answering 403 with no body."""
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=403, body=b"")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def _errors(registry: ConsulRegistry) -> list[str]:
    """The messages of register(), deregister() and a read."""
    instance = make_instance(unique_service(), 1)
    out = []
    for call in (lambda: registry.register(instance),
                 lambda: registry.deregister(instance),
                 lambda: registry.services()):
        with pytest.raises(RegistryError) as info:
            await call()
        out.append(str(info.value))
    return out


@pytest.mark.parametrize("token", [None, TOKEN], ids=["no-token", "token"])
async def test_an_empty_403_says_what_to_check(bare_403: str, token: str | None) -> None:
    registry = ConsulRegistry(ConsulOptions(addr=bare_403, token=token, request_timeout_s=2))
    try:
        messages = await _errors(registry)
    finally:
        await registry.close()
    for message in messages:
        assert (NO_TOKEN if token is None else REFUSED) in message, messages
        assert "no detail" not in message and not message.endswith(": "), messages
        assert TOKEN not in message
    assert "HTTP 403 (no body)" in messages[0], messages


async def test_a_403_to_no_token_says_none_was_sent() -> None:
    async with ConsulDouble(required_token=TOKEN) as double:
        registry = ConsulRegistry(ConsulOptions(addr=double.addr, request_timeout_s=2))
        try:
            instance = make_instance(unique_service(), 1)
            with pytest.raises(RegistryError) as info:
                await registry.register(instance)
            assert NO_TOKEN in str(info.value)
            assert "Permission denied" in str(info.value)  # the agent's words kept
            with pytest.raises(RegistryError) as info:
                await registry.deregister(instance)
            assert NO_TOKEN in str(info.value)
        finally:
            await registry.close()


async def test_a_403_to_an_unknown_token_says_it_was_refused() -> None:
    async with ConsulDouble(required_token=TOKEN) as double:
        registry = ConsulRegistry(ConsulOptions(addr=double.addr, token="wrong-" + TOKEN,
                                                request_timeout_s=2))
        try:
            messages = await _errors(registry)
        finally:
            await registry.close()
        for message in messages:
            assert REFUSED in message and "ACL not found" in message, messages
            assert TOKEN not in message


async def test_a_long_403_page_keeps_the_hint() -> None:
    """A proxy's 403 page of several kilobytes: quoted in part, the hint kept whole."""
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=403, text="<html>" + "x" * 5000 + "</html>")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    registry = ConsulRegistry(ConsulOptions(addr=f"127.0.0.1:{runner.addresses[0][1]}",
                                            request_timeout_s=2))
    try:
        messages = await _errors(registry)
    finally:
        await registry.close()
        await runner.cleanup()
    for message in messages:
        assert message.endswith("(ConsulOptions.token))"), messages
        assert len(message) < 1000, messages
