"""``done()`` is true as soon as ``cancel()`` has cancelled a call in flight, as grpc.aio's
(its ``cancel()`` sets the call's status at once; grpc's ``Call.done()`` docstring: "An
RPC is done if the RPC is completed, cancelled or aborted"), side by side with a raw
grpc.aio channel to the same server, for every kind of call. A meshkit unary-unary or
stream-unary call in flight said ``cancelled()`` but not ``done()`` until the task it runs
in had taken the cancellation, a later turn of the loop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshkit.discovery import LocalRegistry
from tests.support.echo import method
from tests.support.wait import until
from tests.test_grpc_parity import DIALS, side_by_side


async def _states(ch: Any) -> dict[str, tuple[bool, bool, bool]]:
    out = {}
    # unary-unary awaited by another task, in flight
    awaited = ch.unary_unary(method("Sleep"))(b"5000")
    waiter = asyncio.ensure_future(awaited)
    await asyncio.sleep(0.2)
    out["unary awaited"] = (awaited.cancel(), awaited.done(), awaited.cancelled())
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiter, 10)
    # unary-unary never awaited, started on its own
    started = ch.unary_unary(method("Sleep"))(b"5000")
    await asyncio.sleep(0.2)
    out["unary unawaited"] = (started.cancel(), started.done(), started.cancelled())
    # stream-unary fed with write(), in flight
    written = ch.stream_unary(method("ClientStream"))()
    await asyncio.wait_for(written.write(b"a"), 10)
    out["stream-unary"] = (written.cancel(), written.done(), written.cancelled())
    # the streams (settled at cancel() already)
    stream = ch.unary_stream(method("ServerStream"))(b"2")
    await asyncio.wait_for(stream.read(), 10)
    out["unary-stream"] = (stream.cancel(), stream.done(), stream.cancelled())
    bidi = ch.stream_stream(method("Bidi"))()
    await asyncio.wait_for(bidi.write(b"a"), 10)
    out["bidi"] = (bidi.cancel(), bidi.done(), bidi.cancelled())
    for call in (started, written):
        await until(call.done, timeout_s=10, what="the cancelled call done")
    return out


@pytest.mark.parametrize("dial_kw", DIALS)
async def test_a_call_cancelled_in_flight_is_done_when_cancel_returns(
        registry: LocalRegistry, dial_kw: dict[str, Any]) -> None:
    async with side_by_side(registry, dial_kw) as (raw, mesh):
        expected = await _states(raw)
        got = await _states(mesh)
    assert all(v == (True, True, True) for v in expected.values()), expected
    assert got == expected
