"""ConsulRegistry: an error page that echoes the ACL token never shows a part of it.

A proxy in front of the agent (or a debugging one) may quote the request's headers in
its error page, ``X-Consul-Token`` among them. The registry redacts the token from every
message, but it cut the answer first (300 characters of a refusal's body, 500 of any
error's ``Type: message``) and redacted what was left: a token straddling the cut was no
longer whole, so not found, and its first characters were shown in the RegistryError,
the status' last error and the logs. The whole text is now redacted, then cut.
"""

from __future__ import annotations

import pytest
from aiohttp import web

from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from meshkit.errors import RegistryError
from tests.discovery.conformance import make_instance, unique_service

pytestmark = pytest.mark.timeout(30)

TOKEN = "3f9d2c71-8a4b-4e6f-9c1d-7b2e5a8f0d43"


def _parts(secret: str, size: int = 8) -> list[str]:
    return [secret[i:i + size] for i in range(len(secret) - size + 1)]


@pytest.mark.parametrize(
    ("status", "filler"),
    [(403, 285), (403, 292), (404, 285), (500, 285), (500, 470), (500, 478), (500, 486)],
    ids=["403-cut-300-a", "403-cut-300-b", "404-cut-300", "500-cut-300", "500-cut-500-a",
         "500-cut-500-b", "500-cut-500-c"])
async def test_a_token_echoed_at_the_cut_is_not_shown_in_part(
        status: int, filler: int, caplog: pytest.LogCaptureFixture) -> None:
    async def echo(request: web.Request) -> web.Response:
        token = request.headers.get("X-Consul-Token", "")
        return web.Response(status=status, text="e" * filler + token + "." * 600)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    registry = ConsulRegistry(ConsulOptions(addr=f"127.0.0.1:{runner.addresses[0][1]}",
                                            token=TOKEN, request_timeout_s=2))
    instance = make_instance(unique_service(), 1)
    messages: list[str] = []
    try:
        calls = [lambda: registry.register(instance), lambda: registry.services()]
        if status != 404:  # (a 404 to a deregistration is "already gone")
            calls.append(lambda: registry.deregister(instance))
        for call in calls:
            with pytest.raises(RegistryError) as info:
                await call()
            messages.append(str(info.value))
            cause = info.value.__cause__
            messages.append(f"{cause!s} {cause!r}")
        messages.append(str(registry.status().last_error))
    finally:
        await registry.close()
        await runner.cleanup()
    messages.append(caplog.text)
    assert any("<redacted>" in m or "e" * 50 in m for m in messages[:1]), messages
    for message in messages:
        leaked = [part for part in _parts(TOKEN) if part in message]
        assert not leaked, (leaked, message)
