"""A hand-built chain that puts ``AuthzInterceptor`` before ``JWTAuthInterceptor`` is told.

Checks run in interceptor order, so an ``AuthzInterceptor`` listed first on a plain
``grpc.aio`` server evaluated its policy before the token was verified: it saw no claims,
so ``deny_subjects`` refused no one and ``allow_subjects`` refused everyone, silently
(``AuthOptions.interceptors`` and ``serve()`` order them themselves; a plain server's
chain cannot be seen when an interceptor is built). The token check now notices a call
a policy with subject rules already judged without claims and logs one warning per
interceptor naming the order to use; the right order, or a policy reading no claims,
logs nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc
import pytest
import structlog

from meshkit.auth import (
    AuthzInterceptor,
    AuthzPolicy,
    IssuerOptions,
    JWTAuthInterceptor,
    JWTVerifier,
    KeySet,
    Rule,
    TokenIssuer,
    VerifierOptions,
)
from tests.auth.conftest import AUDIENCE, ISSUER, auth_handler, call, method, rpc_error

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Sequence[grpc.aio.ServerInterceptor]],
                                            Awaitable[int]]]:
    """Start plain grpc.aio servers of the auth test service on 127.0.0.1:0."""
    servers: list[grpc.aio.Server] = []

    async def start(interceptors: Sequence[grpc.aio.ServerInterceptor]) -> int:
        server = grpc.aio.server(interceptors=tuple(interceptors))
        server.add_generic_rpc_handlers((auth_handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return port

    yield start
    for s in servers:
        await s.stop(0)


Serve = Callable[[Sequence[grpc.aio.ServerInterceptor]], Awaitable[int]]
KEYS = KeySet.generate("ES256")
ISSUE = TokenIssuer(KEYS, IssuerOptions(issuer=ISSUER, audience=AUDIENCE, ttl_s=300))


def _verifier() -> JWTVerifier:
    return JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), KEYS)


_ORDER = "authorization policy ran before the token check"


def _policy() -> AuthzPolicy:
    return AuthzPolicy(rules={method("Whoami"): Rule(allow_anonymous=True,
                                                     deny_subjects=("mallory",))})


def _warnings(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in logs if e.get("event") == _ORDER]


async def test_authz_before_jwt_is_logged_once(serve: Serve) -> None:
    """[authz, jwt]: mallory's token passes deny_subjects (the fault's effect, unchanged),
    and one warning, not one per call, says the policy ran before the token check."""
    port = await serve([AuthzInterceptor(_policy()), JWTAuthInterceptor(_verifier())])
    md = [("authorization", f"Bearer {ISSUE.issue('mallory')}")]
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            await asyncio.wait_for(call(port, credentials=None, metadata=md), 10)
    [line] = _warnings(logs)
    assert line["log_level"] == "warning"
    assert "JWTAuthInterceptor" in str(line.get("fix"))
    assert "Bearer" not in str(logs) and "mallory" not in str(line)


async def test_jwt_before_authz_is_silent(serve: Serve) -> None:
    """[jwt, authz]: deny_subjects refuses mallory PERMISSION_DENIED, alice passes with
    her claims, and no order warning is logged."""
    port = await serve([JWTAuthInterceptor(_verifier()), AuthzInterceptor(_policy())])
    md = [("authorization", f"Bearer {ISSUE.issue('mallory')}")]
    with structlog.testing.capture_logs() as logs:
        err = await asyncio.wait_for(rpc_error(call(port, credentials=None, metadata=md)), 10)
        assert err.code().name == "PERMISSION_DENIED"
        ok = await asyncio.wait_for(call(port, credentials=None, metadata=[
            ("authorization", f"Bearer {ISSUE.issue('alice')}")]), 10)
        assert ok == b"-|alice"
    assert _warnings(logs) == []


async def test_a_policy_without_subject_rules_is_not_told(serve: Serve) -> None:
    """[authz, jwt] with a policy that reads no claims (anonymous allowed, no subject
    rules): its decision is the same in either order, so nothing is logged."""
    policy = AuthzPolicy(rules={method("Whoami"): Rule(allow_anonymous=True)})
    port = await serve([AuthzInterceptor(policy), JWTAuthInterceptor(_verifier())])
    md = [("authorization", f"Bearer {ISSUE.issue('alice')}")]
    with structlog.testing.capture_logs() as logs:
        assert await asyncio.wait_for(call(port, credentials=None, metadata=md), 10) == (
            b"-|alice")
    assert _warnings(logs) == []
