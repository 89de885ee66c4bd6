"""An attempt that cannot start leaves no endpoint looking busy, on both launch paths.

``MeshChannel._attempt_unary`` starts a unary call's attempt with its own written-out copy
of ``MeshChannel._launch`` (be279cfe); ``_launch`` itself starts every stream's attempt,
and a unary one's when attempt spans are on. An attempt whose deadline is spent by its
launch (``timeout=0``, a propagated deadline used up, a wait for an endpoint that took
it all), or whose arguments grpc refuses, sends nothing: the pick's outcome callback is
called once with ``CANCELLED`` (no endpoint's outcome), which takes the call off its
endpoint's ``pending`` count (P2C's load). A copy that lost that call would leave each
such call pending on its endpoint for good: ``ChannelStats.endpoints[].pending`` would
climb and P2C would steer calls away from an idle endpoint. No earlier test failed with
that call removed from either copy (one failed with the whole deadline test removed).

Both copies are run: the default (the copy) and ``_launch_inline`` off (``_launch``), the
flag the channel clears when attempt spans bind ``_launch_numbered``. Real meshkit
servers and a real mesh channel on 127.0.0.1.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from tests.support.echo import method

pytestmark = pytest.mark.timeout(30)


def _endpoints(ch: Any) -> dict[str, tuple[Any, ...]]:
    return {e.instance_id: (e.pending, e.calls, e.in_flight, e.failures, e.ejected)
            for e in ch.stats().endpoints}


@pytest.mark.parametrize("inline", [True, False], ids=["copy", "launch"])
async def test_an_attempt_that_cannot_start_leaves_nothing_pending(
        registry: LocalRegistry, echo_servers: Any, inline: bool) -> None:
    await echo_servers("a")
    await echo_servers("b")
    opts = meshkit.DialOptions(insecure=True)
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        ch._launch_inline = inline  # False: _attempt_unary calls _launch
        unary: Any = ch.unary_unary(method("Unary"))
        for _ in range(6):  # both endpoints connected (READY: the pick's fast path)
            await unary(b"x", timeout=10, wait_for_ready=True)
        before = _endpoints(ch)
        assert {v[0] for v in before.values()} == {0}, before

        for _ in range(8):  # spent by the launch: nothing sent
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await unary(b"x", timeout=0)
            assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        for _ in range(4):  # an argument grpc refuses at the attempt's start
            with pytest.raises(Exception):  # noqa: B017 (grpc's own: KeyError here)
                await unary(b"x", timeout=10, compression="no-such-algorithm")
        assert _endpoints(ch) == before  # pending 0, no call, failure or ejection

        assert await unary(b"y", timeout=10) is not None  # and the channel still works


async def test_a_stream_whose_deadline_is_spent_at_launch_leaves_nothing_pending(
        registry: LocalRegistry, echo_servers: Any) -> None:
    await echo_servers("a")
    opts = meshkit.DialOptions(insecure=True)
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        stream: Any = ch.unary_stream(method("ServerStream"))
        unary: Any = ch.unary_unary(method("Unary"))
        await unary(b"x", timeout=10, wait_for_ready=True)
        before = _endpoints(ch)
        for _ in range(4):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _msg in stream(b"x", timeout=0):
                    pass
            assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert _endpoints(ch) == before
