"""CONSUL_HTTP_AUTH (Consul's CLI and api client: HTTP basic authentication, ``username
[:password]``, for an agent behind an authenticating proxy): read by ConsulOptions.from_env
and sent with every request, the password never shown in ``repr`` or error messages."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from meshkit.errors import ConfigError, RegistryError
from tests.discovery.conformance import make_instance, unique_service
from tests.discovery.consul_double import ConsulDouble
from tests.support.wait import until

_SECRET = "S3cretPw-do-not-print"


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    """A running Consul agent double."""
    async with ConsulDouble() as d:
        yield d


def _basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def test_from_env_reads_consul_http_auth() -> None:
    """``CONSUL_HTTP_AUTH=user:password`` sets ``http_auth`` (it was ignored: requests went
    without credentials and an authenticating proxy refused each one), hidden from
    ``repr``; an override wins over it."""
    options = ConsulOptions.from_env({"CONSUL_HTTP_AUTH": f"ops:{_SECRET}"})
    assert options.http_auth == f"ops:{_SECRET}"
    assert _SECRET not in repr(options)
    assert ConsulOptions.from_env({"CONSUL_HTTP_AUTH": "ops"}).http_auth == "ops"
    assert ConsulOptions.from_env({"CONSUL_HTTP_AUTH": "a:b"}, http_auth="c:d").http_auth == "c:d"
    assert ConsulOptions.from_env({}).http_auth is None


@pytest.mark.parametrize("value", [f"ops:{_SECRET}\n", f":{_SECRET}", ""])
def test_a_bad_http_auth_fails_at_construction_without_quoting_it(value: str) -> None:
    """A ``http_auth`` with a line break, no user name or nothing at all fails when the
    options are built, naming the field and never quoting the password."""
    with pytest.raises(ConfigError) as info:
        ConsulOptions(http_auth=value)
    assert "http_auth" in str(info.value) and _SECRET not in str(info.value)


async def test_every_request_carries_basic_auth(double: ConsulDouble) -> None:
    """Register, the heartbeat, the watch and deregister each send ``Authorization: Basic``
    of ``CONSUL_HTTP_AUTH`` (the ACL token still in ``X-Consul-Token``), as Consul's own
    client does."""
    options = ConsulOptions.from_env(
        {"CONSUL_HTTP_AUTH": f"ops:{_SECRET}", "CONSUL_HTTP_TOKEN": "tok"},
        addr=double.addr, ttl_s=0.6, wait_s=0.5)
    service = unique_service()
    instance = make_instance(service, 1)
    async with ConsulRegistry(options) as registry:
        await registry.register(instance)
        watch = registry.watch(service)
        assert instance.instance_id in {i.instance_id for i in await anext(watch)}
        await until(lambda: double.service_passes[instance.instance_id] >= 1, timeout_s=10)
        await registry.deregister(instance)
        await watch.aclose()
    kinds = {(r.method, r.path.split("/")[2]) for r in double.requests}
    assert len(kinds) >= 3, kinds
    for request in double.requests:
        assert request.headers.get("authorization") == _basic(f"ops:{_SECRET}"), request
        assert request.headers.get("x-consul-token") == "tok", request


async def test_the_password_is_never_in_an_error(double: ConsulDouble) -> None:
    """A refused write's error names the agent, never the basic-auth password (an agent or
    proxy may echo the request's credentials)."""
    await double.stop()  # connection refused
    options = ConsulOptions(addr=double.addr, http_auth=f"ops:{_SECRET}",
                            request_timeout_s=1.0)
    async with ConsulRegistry(options) as registry:
        with pytest.raises(RegistryError) as info:
            await registry.register(make_instance(unique_service(), 1))
    assert _SECRET not in str(info.value)


def test_an_http_auth_of_another_type_names_its_type() -> None:
    """``http_auth`` as bytes (read from a file) fails naming the field and the type only."""
    with pytest.raises(ConfigError, match=r"http_auth must be a string.*got a bytes") as info:
        ConsulOptions(http_auth=f"ops:{_SECRET}".encode())  # type: ignore[arg-type]
    assert _SECRET not in str(info.value)


class _Echo:
    """An HTTP server (an authenticating proxy's stand-in) whose every answer is ``status``
    with a body that echoes the request's ``Authorization`` header, or a 307 redirect to
    ``redirect_to`` when that is set; it records the headers of each request."""

    def __init__(self, status: int = 500, redirect_to: str | None = None) -> None:
        self.status = status
        self.redirect_to = redirect_to
        self.seen: list[dict[str, str]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _answer(self, request: web.Request) -> web.Response:
        self.seen.append({k.lower(): v for k, v in request.headers.items()})
        await request.read()
        if self.redirect_to is not None:
            raise web.HTTPTemporaryRedirect(self.redirect_to + request.path_qs)
        return web.Response(status=self.status, text=(
            f"bad credentials: {request.headers.get('Authorization')}"))

    async def __aenter__(self) -> _Echo:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.mark.parametrize("status", [500, 400, 401, 403])
async def test_credentials_echoed_by_a_proxy_are_never_in_an_error(status: int) -> None:
    """A proxy's answer that echoes the ``Authorization`` header (base64 of
    ``user:password``, as good as the password) is redacted from the error, ``status()``
    and the logs, as the raw password is."""
    encoded = _basic(f"ops:{_SECRET}").removeprefix("Basic ")
    async with _Echo(status) as echo:
        options = ConsulOptions(addr=echo.addr, http_auth=f"ops:{_SECRET}",
                                request_timeout_s=2.0)
        with capture_logs() as logs:
            async with ConsulRegistry(options) as registry:
                with pytest.raises(RegistryError) as info:
                    await registry.register(make_instance(unique_service(), 1))
                status_text = repr(registry.status())
    assert echo.seen and echo.seen[0]["authorization"] == "Basic " + encoded
    for text in (str(info.value), status_text, repr(logs)):
        assert encoded not in text and _SECRET not in text, text


async def test_basic_auth_is_not_sent_to_another_origin_after_a_redirect(
        double: ConsulDouble) -> None:
    """A redirect to another origin (here another port) gets no ``Authorization``: the
    credentials go to the configured agent address only (aiohttp drops the header when the
    origin changes; Go's client does so for another host)."""
    async with _Echo(redirect_to=double.url) as redirector:
        options = ConsulOptions(addr=redirector.addr, http_auth=f"ops:{_SECRET}",
                                request_timeout_s=2.0)
        async with ConsulRegistry(options) as registry:
            instance = make_instance(unique_service(), 1)
            await registry.register(instance)
            await registry.deregister(instance)
    assert redirector.seen and all(
        h.get("authorization") == _basic(f"ops:{_SECRET}") for h in redirector.seen)
    assert double.requests and all(
        "authorization" not in r.headers for r in double.requests), double.requests
