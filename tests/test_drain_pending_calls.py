"""A call a draining meshkit server had accepted but not yet handed to its application when
it stopped (grpc core ends it ``CANCELLED`` "CANCELLED", grpc/grpc#41785) is retried on
another endpoint when the client had already been refused by that server as draining on
the same connection before the call was sent: such a call cannot have run (the server
refuses every mesh client's unary call from its refusal phase on)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

import meshkit
from meshkit import server as server_mod
from meshkit._pool import EndpointPool
from meshkit.balancer import Endpoint
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.interceptors import CallKind, ClientCallDetails
from meshkit.resilience import RetryOptions
from meshkit.resilience._retry import (
    DRAINING_DETAILS,
    NACK_METADATA,
    RetryInterceptor,
    connection_ended,
    forget_endpoint,
)
from tests.support.balancing import Prefer, ready_endpoint
from tests.support.echo import add_echo, method

pytestmark = pytest.mark.timeout(60)


class _HoldOnE1(grpc.aio.UnaryUnaryClientInterceptor):
    """Once ``armed`` attempts (all to ``e1``) have started, the whole loop is held (a
    loaded process) while their requests reach e1's grpc core, and e1's grpc server is
    stopped before its application could take them: what a drain's ``server.stop()``
    meets on a starved box. (grpc.aio hands its application the call grpc core matched
    with its one pending request; the others wait in core, which ends them at the stop.)"""

    def __init__(self) -> None:
        self.armed = 0
        self.stop: Any = None
        self.stopping: asyncio.Future[None] | None = None

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                    request: Any) -> Any:
        call = await continuation(client_call_details, request)
        if self.armed and self.stop is not None:
            self.armed -= 1
            if self.armed:
                return call
            await asyncio.sleep(0)  # the attempt's batch goes to grpc core
            # the loop held (no synchronisation: a starved process): e1's core receives
            # the calls, its Python cannot take them
            time.sleep(0.5)  # noqa: ASYNC251
            self.stopping = asyncio.ensure_future(self.stop())
        return call


async def test_a_call_sent_after_a_draining_refusal_and_cut_at_the_stop_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call sent to a server after it refused one as draining, and ended ``CANCELLED``
    by that server's stop before any of it ran, is retried on another endpoint (default
    policy, not idempotent) and succeeds. (The channel takes a refusing endpoint out of
    picking, ``EndpointPool.leaving``: off here, so that the calls reach e1 as attempts
    launched in the moment before the refusal is read do.)"""
    monkeypatch.setattr(EndpointPool, "leaving", lambda *_args: None)
    reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=30.0,
                                     poll_interval_s=0.05))
    servers = {}
    for iid in ("e1", "e2"):
        srv = meshkit.MeshServer("echo", [add_echo(iid)], registry=reg,
                                 options=meshkit.ServeOptions(insecure=True,
                                                              instance_id=iid, admin=None))
        await srv.start()
        servers[iid] = srv
    hold = _HoldOnE1()
    opts = meshkit.DialOptions(insecure=True, retry=RetryOptions(), outlier=None,
                               balancer=lambda: Prefer("e1"),
                               attempt_interceptors=(hold,))
    try:
        async with meshkit.dial("echo", registry=reg, options=opts) as ch:
            await asyncio.wait_for(ch.wait_for_endpoints(2), 10)
            unary = ch.unary_unary(method("Unary"))
            assert await unary(b"x", timeout=5) is not None
            e1 = servers["e1"]
            assert e1._table is not None
            # e1 enters a drain's refusal phase (its deregistration unseen by this client)
            e1._table.refuse(server_mod._refusal(e1))
            assert await unary(b"x", timeout=5) is not None  # refused by e1, served by e2
            assert e1.drain_refused == 1
            grpc_server = e1._server
            assert grpc_server is not None
            hold.stop = lambda: grpc_server.stop(5.0)
            hold.armed = 3
            try:  # three calls to e1, one refused, two cut at its stop; all then to e2
                await asyncio.gather(*(unary(b"x", timeout=5) for _ in range(3)))
            finally:
                if hold.stopping is not None:
                    await hold.stopping
            assert e1.drain_refused < 1 + 3  # at least one of them cut by the stop
    finally:
        for srv in servers.values():
            await srv.drain()
        await reg.close()


_DRAINING = (grpc.StatusCode.UNAVAILABLE, DRAINING_DETAILS, (NACK_METADATA,))
_CUT = (grpc.StatusCode.CANCELLED, "CANCELLED", ())


def _scripted(script: list[tuple[Endpoint, Any]], ended: Endpoint | None = None) -> Any:
    """An attempt function for :class:`RetryInterceptor` that launches each attempt on the
    next scripted endpoint (as the channel does: ``attempts``, ``attempt_started_ns``,
    ``last_call``) and ends it as scripted (``None``: ``b"ok"``); ``ended``: the pool
    sees that endpoint's connection end after the first attempt."""
    steps = iter(script)

    async def proceed(details: ClientCallDetails, request: Any) -> Any:
        ep, outcome = next(steps)
        details.last_call = None
        if ended is not None and details.attempts:
            connection_ended(ended)
        details.attempts.append(ep)
        details.attempt_started_ns.append(time.time_ns())
        details.last_call = object()
        if outcome is None:
            return b"ok"
        code, text, trailers = outcome
        raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(),
                                   grpc.aio.Metadata(*trailers), details=text)

    return proceed


def _details(method_name: str = "/echo.Echo/Unary",
             kind: CallKind = CallKind.UNARY_UNARY) -> ClientCallDetails:
    return ClientCallDetails(service="echo", method=method_name, kind=kind,
                             timeout_s=5.0, metadata=None)


@pytest.fixture
def eps() -> Any:
    """Two READY endpoints, what the retry interceptor noted of them forgotten after."""
    a, b = ready_endpoint("a"), ready_endpoint("b")
    yield a, b
    forget_endpoint(a)
    forget_endpoint(b)


async def test_a_cut_attempt_sent_after_a_draining_refusal_is_retried(eps: Any) -> None:
    """An attempt ended ``CANCELLED`` "CANCELLED" by an endpoint that had refused an
    attempt of this channel as draining before it was launched is retried (not
    idempotent), and the call succeeds."""
    a, b = eps
    retry = RetryInterceptor(RetryOptions())
    proceed = _scripted([(a, _DRAINING), (a, _CUT), (b, None)])
    assert await retry.intercept_unary(_details(), b"x", proceed) == b"ok"
    assert retry.stats.retries == 2


@pytest.mark.parametrize("case", ["no refusal", "another endpoint", "connection ended",
                                  "other details", "health method"])
async def test_a_cancelled_attempt_that_may_have_run_is_not_retried(eps: Any,
                                                                    case: str) -> None:
    """A ``CANCELLED`` attempt is not retried (a not idempotent call) when nothing proves
    none of it ran: no draining refusal from its endpoint, one from another endpoint
    only, its endpoint's connection ended since the refusal, details that are not grpc
    core's, or a health method (which a draining server serves)."""
    a, b = eps
    retry = RetryInterceptor(RetryOptions())
    method_name = "/grpc.health.v1.Health/Check" if case == "health method" else \
        "/echo.Echo/Unary"
    cut = (grpc.StatusCode.CANCELLED, "cancelled by the handler", ()) \
        if case == "other details" else _CUT
    script = {"no refusal": [(a, cut), (b, None)],
              "another endpoint": [(b, _DRAINING), (a, cut), (b, None)],
              }.get(case, [(a, _DRAINING), (a, cut), (b, None)])
    proceed = _scripted(script, ended=a if case == "connection ended" else None)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await retry.intercept_unary(_details(method_name), b"x", proceed)
    assert err.value.code() is grpc.StatusCode.CANCELLED
