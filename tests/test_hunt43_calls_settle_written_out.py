"""UnaryResponseCall._run settles an answer itself when nothing waits on the call (no
done callback, no waiter) and _settle is MeshCall's; otherwise through _settle: the
callbacks and waiters registered while the call runs are still served, and a subclass
that extends _settle (StreamUnaryCall) is always settled through it."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from meshkit import _calls
from meshkit.interceptors import CallKind, ClientCallDetails


def _details() -> ClientCallDetails:
    return ClientCallDetails(service="s", method="/pkg.Svc/M", kind=CallKind.UNARY_UNARY,
                             timeout_s=None, metadata=None)


def test_a_subclass_that_extends_settle_is_settled_through_it() -> None:
    assert _calls.UnaryUnaryCall._plain_settle
    assert not _calls.StreamUnaryCall._plain_settle

    class Extended(_calls.UnaryUnaryCall):
        __slots__ = ()

        def _settle(self, call: Any, error: BaseException | None) -> None:
            super()._settle(call, error)

    assert not Extended._plain_settle

    class Plain(_calls.UnaryUnaryCall):
        __slots__ = ()

    assert Plain._plain_settle


def test_settled_answer_alone_with_callbacks_and_waiters() -> None:
    async def main() -> None:
        # alone: the answer settles the call
        gate = asyncio.Event()

        async def invoke(details: ClientCallDetails, request: Any) -> Any:
            await gate.wait()
            return request + b"!"

        call = _calls.UnaryUnaryCall(_details(), b"a", invoke)
        gate.set()
        assert await call == b"a!"
        assert call.done() and not call.cancelled()
        assert await call.code() is grpc.StatusCode.OK
        # a done callback added while the call runs, and a waiter (code()) on it
        gate.clear()
        seen: list[Any] = []
        call = _calls.UnaryUnaryCall(_details(), b"b", invoke)
        call.add_done_callback(seen.append)  # starts it in a task
        code = asyncio.ensure_future(call.code())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not code.done()
        gate.set()
        assert await asyncio.wait_for(call, 10) == b"b!"
        assert await asyncio.wait_for(code, 10) is grpc.StatusCode.OK
        for _ in range(50):
            if seen:
                break
            await asyncio.sleep(0.01)
        assert seen == [call]
        # a stream-unary call: its request stream ended as the answer came
        async def upload(details: ClientCallDetails, request: Any) -> Any:
            return b"c!"  # answered without reading the requests

        sent = _calls.StreamUnaryCall(_details(), None, upload)
        assert await asyncio.wait_for(sent, 10) == b"c!"
        try:
            await sent.write(b"x")
        except asyncio.InvalidStateError:
            pass
        else:
            raise AssertionError("a write after the answer went through")

    asyncio.run(main())
