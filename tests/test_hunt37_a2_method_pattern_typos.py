"""A server setting's method pattern that names a method of a service the server serves,
but a method that service does not have (``"/meshkit.test.Orders/PlaceOder"``, a typo),
is a ``ConfigError`` naming it when the server starts; before, the server started and the
calls it was meant for got the default (with ``AuthzPolicy(default=Rule(
allow_anonymous=True))`` a key meant to restrict ``PlaceOrder`` restricted nothing).
Patterns that match no method served but may be right elsewhere (a service this server
does not serve, a short name, a glob: a policy shared by several servers) are named in one
warning and the server starts; with a generic handler that may serve any name nothing is
said."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
import structlog

import meshkit
from meshkit.auth import (
    AuthOptions,
    AuthzPolicy,
    JWTAuthOptions,
    JWTVerifier,
    KeySet,
    Rule,
    VerifierOptions,
)
from meshkit.discovery import LocalRegistry
from meshkit.errors import ConfigError
from meshkit.observability import TelemetryOptions
from meshkit.resilience import RateLimitOptions

APP = "meshkit.test.Orders"
OPEN = Rule(allow_anonymous=True)


async def _ok(request: bytes, context: Any) -> bytes:
    return b"ok"


def _add_orders(_servicer: Any, server: Any) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(APP, {
        name: grpc.unary_unary_rpc_method_handler(_ok)
        for name in ("PlaceOrder", "GetOrder")}),))


class _AnyName(grpc.GenericRpcHandler):
    """A gateway's generic handler: serves whatever name it is asked."""

    def service(self, handler_call_details: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(_ok)


def _add_any(_servicer: Any, server: Any) -> None:
    server.add_generic_rpc_handlers((_AnyName(),))


def _verifier() -> JWTVerifier:
    return JWTVerifier(VerifierOptions(issuer="https://userd.meshkit.test", audience="ecom"),
                       KeySet.generate())


def _server(registry: LocalRegistry, adds: list[Callable[[Any, Any], None]],
            **options: Any) -> meshkit.MeshServer:
    options.setdefault("telemetry", None)
    return meshkit.MeshServer("orders", [(add, None) for add in adds], registry=registry,
                              options=meshkit.ServeOptions(
                                  insecure=True, drain_delay_s=0.0, grace_s=1.0, **options))


TYPOS: list[tuple[str, Callable[[str], dict[str, Any]]]] = [
    ("AuthzPolicy.rules", lambda key: {"auth": AuthOptions(policy=AuthzPolicy(
        rules={key: Rule()}, default=OPEN),
        check_peers=False)}),
    ("JWTAuthOptions.method_scopes", lambda key: {"auth": AuthOptions(
        verifier=_verifier(), jwt=JWTAuthOptions(method_scopes={key: ("orders:write",)}),
        check_peers=False)}),
    ("JWTAuthOptions.public_methods", lambda key: {"auth": AuthOptions(
        verifier=_verifier(), jwt=JWTAuthOptions(public_methods=(key,)),
        check_peers=False)}),
    ("RateLimitOptions.rules", lambda key: {"rate_limit": RateLimitOptions(
        rules={key: "1/minute"})}),
    ("TelemetryOptions.quiet_methods", lambda key: {"telemetry": TelemetryOptions(
        quiet_methods=(key,), tracing=False, access_log=False, metrics=False)}),
]


@pytest.mark.parametrize("where", [w for w, _ in TYPOS])
@pytest.mark.parametrize("key", ["/meshkit.test.Orders/PlaceOder", "meshkit.test.Orders/Place"])
async def test_a_typod_method_of_a_served_service_fails_the_start(
        registry: LocalRegistry, where: str, key: str) -> None:
    """The start raises ``ConfigError`` naming the setting, the key and the service's
    methods; nothing is bound or registered."""
    options = dict(TYPOS)[where](key)
    srv = _server(registry, [_add_orders], **options)
    try:
        with pytest.raises(ConfigError) as err:
            await srv.start()
    finally:
        await srv.drain()  # returns at once after a failed start
    text = str(err.value)
    assert where.rsplit(".", 1)[-1] in text and repr(key) in text, text
    assert "GetOrder, PlaceOrder" in text, text
    assert await registry.instances("orders") == frozenset()
    assert not srv.ready and srv.port == 0


async def test_the_hole_a_typo_opened(registry: LocalRegistry) -> None:
    """What the typo did: the policy's key meant to refuse PlaceOrder to everyone did
    not apply, the default let the call in; now the server does not start."""
    srv = _server(registry, [_add_orders], auth=AuthOptions(policy=AuthzPolicy(
        rules={"/meshkit.test.Orders/PlaceOder": Rule()}, default=OPEN), check_peers=False))
    try:
        with pytest.raises(ConfigError, match="PlaceOder"):
            await srv.start()
    finally:
        await srv.drain()


async def test_patterns_of_other_servers_are_warned_once(registry: LocalRegistry) -> None:
    """A shared policy's keys for services this server does not serve, short names and
    globs matching nothing served: one warning naming them; the server starts and
    serves, the keys that match (health, reflection, globs) are not named."""
    rules = {
        "/meshkit.test.Users/GetUser": Rule(),  # another server's
        "Orders/PlaceOder": Rule(),  # short: maybe another package's Orders
        "*/Delete*": Rule(),  # a glob matching nothing here
        "/meshkit.test.Orders/PlaceOrder": OPEN,
        "Orders/Get*": OPEN,
        "/grpc.health.v1.Health/*": OPEN,
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": OPEN,
    }
    srv = _server(registry, [_add_orders], auth=AuthOptions(
        policy=AuthzPolicy(rules=rules), check_peers=False),
        telemetry=TelemetryOptions(quiet_methods=("/other.Svc/Call",), tracing=False,
                                   access_log=False, metrics=False))
    with structlog.testing.capture_logs() as logs:
        await srv.start()
    ch = meshkit.dial("orders", registry=registry,
                      options=meshkit.DialOptions(insecure=True, telemetry=None))
    try:
        await ch.wait_for_endpoints(1)
        assert await ch.unary_unary(f"/{APP}/PlaceOrder")(b"x", timeout=10) == b"ok"
    finally:
        await ch.close()
        await srv.drain()
    warned = [e for e in logs if e["event"] == "method patterns match no method this "
              "server serves"]
    assert len(warned) == 1, logs
    assert warned[0]["log_level"] == "warning"
    assert warned[0]["patterns"] == [
        "AuthzPolicy.rules: /meshkit.test.Users/GetUser",
        "AuthzPolicy.rules: Orders/PlaceOder",
        "AuthzPolicy.rules: */Delete*",
    ]  # quiet_methods not named: dial() shares them for its downstream methods


async def test_nothing_is_said_when_any_name_may_be_served(registry: LocalRegistry) -> None:
    """With a generic handler that serves any name (a gateway), no pattern can be told
    wrong: no error, no warning."""
    srv = _server(registry, [_add_orders, _add_any], auth=AuthOptions(policy=AuthzPolicy(
        rules={"/meshkit.test.Orders/PlaceOder": Rule(), "/x.Y/Z": Rule()}, default=OPEN),
        check_peers=False))
    with structlog.testing.capture_logs() as logs:
        await srv.start()
    await srv.drain()
    assert not [e for e in logs if "method patterns" in e["event"]], logs


def test_each_auth_check_lists_its_patterns() -> None:
    """The peer check's ``exempt_methods``, the token check's ``public_methods`` and
    ``method_scopes`` keys and the policy's rule keys are what the start checks; a
    typo'd exempt method of a served service is refused as the others are."""
    from meshkit._methods import check_served
    from meshkit.auth import AuthzInterceptor, JWTAuthInterceptor, PeerIdentityInterceptor

    peer = PeerIdentityInterceptor("meshkit.local", exempt_methods=("/grpc.health.v1.Health/Chek",))
    jwt_check = JWTAuthInterceptor(_verifier(), JWTAuthOptions(
        public_methods=("Orders/GetOrder",), method_scopes={"Orders/*": ("orders:read",)}))
    authz = AuthzInterceptor(AuthzPolicy(rules={"/meshkit.test.Orders/PlaceOrder": OPEN}))
    assert peer.method_patterns() == (("exempt_methods", ("/grpc.health.v1.Health/Chek",)),)
    assert jwt_check.method_patterns() == (
        ("JWTAuthOptions.public_methods", ("Orders/GetOrder",)),
        ("JWTAuthOptions.method_scopes", ("Orders/*",)))
    assert authz.method_patterns() == (("AuthzPolicy.rules", ("/meshkit.test.Orders/PlaceOrder",)),)
    served = {f"/{APP}/PlaceOrder", f"/{APP}/GetOrder", "/grpc.health.v1.Health/Check",
              "/grpc.health.v1.Health/Watch"}
    assert check_served((*jwt_check.method_patterns(), *authz.method_patterns()), served) == []
    with pytest.raises(ConfigError, match=r"exempt_methods: .*'/grpc.health.v1.Health/Chek'.*"
                                          r"Check, Watch"):
        check_served(peer.method_patterns(), served)
