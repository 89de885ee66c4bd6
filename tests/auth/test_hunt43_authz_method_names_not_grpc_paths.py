"""A method name that is no gRPC method path (``/<service>/<method>``, one ``/`` each
side of the service) takes no pattern's value but ``"*"``'s: a short exact key
(``"Auth/Public"``) once matched ``/x/test.Auth/Public`` (the service part's last dotted
component after a ``/``), a glob's ``*`` crossed the ``/`` (``"*/Get*"`` matched
``/admin/pkg.Svc/GetX``), and a doubled leading ``/`` was read as one. A catch-all
generic handler serves such names, so public_methods and allow_anonymous rules opened
them."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from meshkit._methods import MethodMatcher
from meshkit.auth import (
    AuthOptions,
    AuthzPolicy,
    JWTAuthOptions,
    JWTVerifier,
    KeySet,
    Rule,
    VerifierOptions,
)
from tests.auth.conftest import AUDIENCE, ISSUER

ENTRIES = {"/pkg.Svc/M": "exact", "pkg.Svc/*": "service", "*/Get*": "get", "Svc/X": "short"}

NOT_PATHS = ["//pkg.Svc/M", "/a/pkg.Svc/M", "/pkg.Svc/a/GetX", "/x/y.Svc/X",
             "/pkg.Svc/", "/pkg.Svc//M", "/pkg.Svc/M/", "/", ""]


@pytest.mark.parametrize("name", NOT_PATHS, ids=[f"n{i}" for i in range(len(NOT_PATHS))])
def test_a_name_that_is_no_method_path_gets_the_default(name: str) -> None:
    matcher = MethodMatcher(ENTRIES, "default")
    assert matcher.match(name) == (None, "default")
    assert matcher.lookup(name) == "default"


@pytest.mark.parametrize("star", ["*", "*/*"], ids=["star", "star-slash-star"])
def test_every_method_pattern_still_takes_them(star: str) -> None:
    matcher = MethodMatcher({**ENTRIES, star: "every"}, "default")
    for name in NOT_PATHS:
        assert matcher.match(name) == (star, "every"), name


def test_method_paths_keep_their_patterns() -> None:
    matcher = MethodMatcher(ENTRIES, "default")
    assert matcher.match("/pkg.Svc/M") == ("/pkg.Svc/M", "exact")
    assert matcher.match("pkg.Svc/M") == ("/pkg.Svc/M", "exact")
    assert matcher.match("/pkg.Svc/m") == ("pkg.Svc/*", "service")
    assert matcher.match("/other.Svc/X") == ("Svc/X", "short")
    assert matcher.match("/Svc/X") == ("Svc/X", "short")
    assert matcher.match("/q.Other/GetIt") == ("*/Get*", "get")


def test_policy_refuses_them_by_default() -> None:
    open_ = Rule(allow_anonymous=True)
    policy = AuthzPolicy(rules={"Auth/Public": open_, "*/Get*": open_})
    for name in ("/x/test.Auth/Public", "//test.Auth/Public", "/admin/test.Auth/GetKey"):
        decision = policy.evaluate(name, None, None)
        assert not decision.allowed, name
        assert decision.rule == "default"
    assert policy.evaluate("/test.Auth/Public", None, None).allowed


class _CatchAll(grpc.GenericRpcHandler):
    """Serves every method name (as a proxy's or a test double's handler does)."""

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler[Any, Any]:
        async def unary(request: bytes, context: Any) -> bytes:
            return b"served"
        return grpc.unary_unary_rpc_method_handler(unary)


async def test_a_catch_all_handler_is_not_opened_by_a_public_pattern() -> None:
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE),
                           KeySet.generate("ES256"))
    open_ = Rule(allow_anonymous=True)
    auth = AuthOptions(
        verifier=verifier, jwt=JWTAuthOptions(public_methods=("Auth/Public", "*/Get*")),
        policy=AuthzPolicy(rules={"Auth/Public": open_, "*/Get*": open_}),
        check_peers=False)
    server = grpc.aio.server(interceptors=auth.interceptors(None))
    server.add_generic_rpc_handlers((_CatchAll(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            ok: Any = ch.unary_unary("/test.Auth/Public")
            assert await ok(b"", timeout=10) == b"served"
            for name in ("/x/test.Auth/Public", "/admin/test.Auth/GetKey"):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    mc: Any = ch.unary_unary(name)
                    await mc(b"", timeout=10)
                assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED, name
    finally:
        await server.stop(0)
