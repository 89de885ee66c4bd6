"""EtcdRegistry with ``user``/``password`` (c4fb056f): an error answer that echoes the
password or the token (a proxy or WAF in front of etcd quoting the request it refused:
``/v3/auth/authenticate``'s body, a call's ``Authorization`` header) never shows them.

The answer's text was quoted as it came (300 characters of it, cut: a password
straddling the cut kept its first characters) in the ``RegistryError`` of a register,
``snapshot()``, ``services()``, its chained cause's arguments, and the watch's warning and
``status().last_error``. Both are now replaced by ``[REDACTED]`` before the cut, also in
their JSON-escaped form. A real etcd node with authentication on, behind a proxy on
127.0.0.1 that forwards every call but the echoed ones.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from meshkit.discovery import EtcdOptions, EtcdRegistry
from meshkit.errors import RegistryError
from tests.discovery.conformance import make_instance, unique_service
from tests.support.etcd import EtcdCluster, require_etcd_binary

pytestmark = pytest.mark.timeout(60)

#: a quote and a non-ASCII letter: the proxy echoes them JSON-escaped
_PASSWORD = 'ec"ho-Pässword-0123456789'
FAST: dict[str, Any] = {"ttl_s": 3, "request_timeout_s": 2.0, "operation_timeout_s": 1.0,
                        "backoff_base_s": 0.05, "backoff_max_s": 0.3}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(require_etcd_binary(), Path(tmp_path_factory.mktemp("etcd")))

    def call(path: str, body: dict[str, Any]) -> None:
        req = urllib.request.Request(
            f"http://127.0.0.1:{cluster.members[0].client_port}/v3{path}",
            data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=5):
            pass

    try:
        cluster.start_blocking()
        call("/auth/role/add", {"name": "root"})
        call("/auth/user/add", {"name": "root", "password": _PASSWORD})
        call("/auth/user/grant", {"user": "root", "role": "root"})
        call("/auth/enable", {})
        yield cluster
    finally:
        cluster.close()


class _EchoProxy:
    """Forwards to etcd; answers the calls under ``echo`` with an error quoting the
    request's password (``/auth/authenticate``; JSON-escaped in a text answer) or its
    ``Authorization`` header, from the 290th character of the message on; with
    ``json_error`` None, a 200 answer quoting the header that is no answer of the call."""

    def __init__(self, upstream: str, echo: set[str], json_error: bool | None) -> None:
        self.upstream, self.echo, self.json_error = upstream, echo, json_error
        self.tokens: set[str] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        token = request.headers.get("Authorization")
        if token:
            self.tokens.add(token)
        call = request.path.removeprefix("/v3")
        if call in self.echo and self.json_error is None:  # a 200 answer, no txn's
            return web.json_response({"echo": "x" * 280 + str(token)})
        if call in self.echo:
            if call == "/auth/authenticate":  # its password field, as the body has it
                password = json.loads(body)["password"]
                quoted = password if self.json_error else json.dumps(password)[1:-1]
            else:
                quoted = str(token)
            # the secret from character 290 on: across the 300 the error keeps
            text = "upstream refused the request " + "." * 260 + " " + quoted
            if self.json_error:
                return web.json_response({"code": 7, "message": text}, status=403)
            return web.Response(text=text, status=502)
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("authorization", "content-type", "grpc-metadata-hasleader")}
        async with aiohttp.ClientSession() as session, session.post(
                self.upstream + request.path, data=body, headers=headers) as resp:
            return web.Response(body=await resp.read(), status=resp.status,
                                content_type="application/json")


@pytest.fixture
async def proxy(node: EtcdCluster) -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def start(echo: set[str], json_error: bool | None) -> tuple[_EchoProxy, str]:
        handler = _EchoProxy(node.endpoints[0], echo, json_error)
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", handler.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return handler, f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def _forms(secret: str) -> list[str]:
    """The secret, JSON-escaped both ways, and the first 8 characters of each."""
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    return sorted(forms | {form[:8] for form in forms})


def _texts(error: BaseException) -> str:
    """Everything an error shows: its text and arguments, and its causes'."""
    out: list[str] = []
    seen: BaseException | None = error
    while seen is not None:
        out += [str(seen), repr(seen.args)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(out)


@pytest.mark.parametrize("json_error", [False, True], ids=["text", "json"])
async def test_an_echoed_password_is_never_shown(proxy: Any, json_error: bool,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The proxy quotes the authenticate request's body (the password, JSON-escaped,
    across the 300-character cut): register(), snapshot() and services() fail without
    it, and no warning shows it."""
    _, url = await proxy({"/auth/authenticate"}, json_error)
    caplog.set_level(logging.DEBUG)
    async with EtcdRegistry(EtcdOptions(endpoints=(url,), user="root",
                                        password=_PASSWORD, **FAST)) as registry:
        service = unique_service()
        errors = []
        for call in (lambda: registry.register(make_instance(service, 1)),
                     lambda: registry.snapshot(service), registry.services):
            with pytest.raises(RegistryError) as info:
                await call()
            errors.append(info.value)
        status = registry.status()
    shown = "\n".join([*map(_texts, errors), caplog.text, str(status.last_error)])
    assert "upstream refused" in shown  # the proxy's words are kept
    assert "[REDACTED]" in shown
    for form in _forms(_PASSWORD):
        assert form not in shown, (form, shown)


@pytest.mark.parametrize("json_error", [False, True], ids=["text", "json"])
async def test_an_echoed_token_is_never_shown(proxy: Any, json_error: bool,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """The proxy quotes the calls' ``Authorization`` header (the token etcd gave): a
    snapshot(), services() and a watch's warning and ``last_error`` do not show it."""
    handler, url = await proxy({"/kv/range", "/kv/txn", "/watch"}, json_error)
    caplog.set_level(logging.DEBUG)
    async with EtcdRegistry(EtcdOptions(endpoints=(url,), user="root",
                                        password=_PASSWORD, **FAST)) as registry:
        service = unique_service()
        errors = []
        for call in (lambda: registry.snapshot(service), registry.services):
            with pytest.raises(RegistryError) as info:
                await call()
            errors.append(info.value)
        watch = registry.watch(service)
        reader = asyncio.ensure_future(anext(watch))
        for _ in range(100):  # the watch's read fails: an outage recorded
            await asyncio.sleep(0.05)
            if registry.status().last_error:
                break
        status = registry.status()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await watch.aclose()
    assert handler.tokens, "no token was sent"
    shown = "\n".join([*map(_texts, errors), caplog.text, str(status.last_error)])
    assert "upstream refused" in shown and "[REDACTED]" in shown
    assert "watch of" in shown  # the watch's outage is in there
    for token in handler.tokens:
        for form in _forms(token):
            assert form not in shown, (form, shown)


async def test_a_200_answer_echoing_the_token_is_never_shown(proxy: Any) -> None:
    """A 200 answer that is no txn's (a proxy's page quoting the request's header):
    services() and failing() quote it (300 characters) without the token."""
    handler, url = await proxy({"/kv/txn"}, None)
    async with EtcdRegistry(EtcdOptions(endpoints=(url,), user="root",
                                        password=_PASSWORD, **FAST)) as registry:
        errors = []
        for call in (registry.services, lambda: registry.failing(unique_service())):
            with pytest.raises(RegistryError, match="ranges answered") as info:
                await call()
            errors.append(info.value)
    assert handler.tokens, "no token was sent"
    shown = "\n".join(map(_texts, errors))
    assert "[REDACTED]" in shown
    for token in handler.tokens:
        for form in _forms(token):
            assert form not in shown, (form, shown)
