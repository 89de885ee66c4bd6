"""Review of 907a4921 (UnaryResponseCall._run settles an answer itself when no done
callback and no waiter is registered and ``_settle`` is MeshCall's, ``_plain_settle``).

Each condition of that written-out case on its own: a done callback alone, a waiter
alone, a subclass extending ``_settle`` (its own or a mixin's, through the MRO), and a
stream-unary call's waiting writer (what StreamUnaryCall._settle ends)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from meshkit import _calls
from meshkit.interceptors import CallKind, ClientCallDetails


def _details(kind: CallKind = CallKind.UNARY_UNARY) -> ClientCallDetails:
    return ClientCallDetails(service="s", method="/pkg.Svc/M", kind=kind,
                             timeout_s=None, metadata=None)


class _Recording:
    """A mixin extending ``_settle`` (no ``__slots__``: it gives its subclass a dict)."""

    settled: list[Any]

    def _settle(self, call: Any, error: BaseException | None) -> None:
        self.settled.append(error)
        super()._settle(call, error)  # type: ignore[misc]


class _MixedIn(_Recording, _calls.UnaryUnaryCall):
    """Extends ``_settle`` through a base, not in its own body."""


def test_a_mixin_extending_settle_is_not_plain() -> None:
    assert not _MixedIn._plain_settle

    class Again(_MixedIn):  # and its subclasses
        pass

    assert not Again._plain_settle

    class Plain(_calls.UnaryUnaryCall):
        __slots__ = ()

    assert Plain._plain_settle


def test_a_mixin_extending_settle_is_settled_through_it() -> None:
    async def main() -> None:
        async def invoke(details: ClientCallDetails, request: Any) -> Any:
            return request + b"!"

        call = _MixedIn(_details(), b"a", invoke)
        call.settled = []
        assert await asyncio.wait_for(call, 10) == b"a!"
        assert call.settled == [None], "the mixin's _settle was skipped"
        assert call.done() and not call.cancelled()

    asyncio.run(main())


async def _gated(gate: asyncio.Event, answer: bytes) -> Any:
    async def invoke(details: ClientCallDetails, request: Any) -> Any:
        await gate.wait()
        return answer

    return invoke


def test_a_done_callback_alone_runs() -> None:
    """A callback registered while the call runs, nothing awaiting it."""
    async def main() -> None:
        gate = asyncio.Event()
        call = _calls.UnaryUnaryCall(_details(), b"", await _gated(gate, b"x"))
        ran = asyncio.get_running_loop().create_future()
        call.add_done_callback(lambda c: ran.done() or ran.set_result(c))  # starts it
        for _ in range(3):
            await asyncio.sleep(0)
        assert not ran.done()
        gate.set()
        assert await asyncio.wait_for(ran, 10) is call
        assert await asyncio.wait_for(call, 10) == b"x"

    asyncio.run(main())


def test_a_waiter_alone_is_woken() -> None:
    """An accessor (``code()``) waiting while the call runs, no done callback."""
    async def main() -> None:
        gate = asyncio.Event()
        call = _calls.UnaryUnaryCall(_details(), b"", await _gated(gate, b"x"))
        code = asyncio.ensure_future(call.code())  # starts it in a task, then waits
        for _ in range(3):
            await asyncio.sleep(0)
        assert not code.done()
        assert call._callbacks is None
        gate.set()
        assert await asyncio.wait_for(code, 10) is grpc.StatusCode.OK

    asyncio.run(main())


def test_a_stream_unary_answer_ends_a_waiting_write() -> None:
    """Answered while a ``write()`` waits for room, nothing awaiting the call: the write
    ends ("RPC already finished."), as StreamUnaryCall._settle ends the request stream."""
    async def main() -> None:
        gate = asyncio.Event()
        call = _calls.StreamUnaryCall(_details(CallKind.STREAM_UNARY), None,
                                      await _gated(gate, b"done"))
        await asyncio.wait_for(call.write(b"1"), 10)  # the slot: starts the call
        second = asyncio.ensure_future(call.write(b"2"))  # waits for room
        for _ in range(3):
            await asyncio.sleep(0)
        assert not second.done()
        gate.set()  # answered without taking a message
        with pytest.raises(asyncio.InvalidStateError):
            await asyncio.wait_for(second, 10)
        assert await asyncio.wait_for(call, 10) == b"done"

    asyncio.run(main())
