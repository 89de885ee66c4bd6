"""A Consumer's handler whose coroutine returns an awaitable other than a coroutine,
or an async iterator other than an async generator, left that work unawaited: the
message was acked as handled while the work was still to run, or never ran.

``return asyncio.gather(save(d), notify(d))`` or ``return loop.run_in_executor(...)``
(a Future: its work runs on, acked before it is done, its failure "never retrieved"),
``return stub.Record(req)`` (a grpc.aio call, cancelled once dropped) and ``return
Rows(d)`` (a class-based async iterator: an ``async for`` forgotten) are the same
programming error as the coroutine (test_hunt41_h2_handler_returns_coroutine.py) and
the async generator (test_hunt42_handler_returns_async_generator.py) returned unrun:
the message is given back (nak'ed), the future cancelled (so its work does not run
beside the redelivery), and run() ends with TypeError. Real NATS (the bus fixture) and
a real grpc.aio server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import Consumer, ConsumerOptions, Delivery
from meshkit.resilience import Backoff
from tests.messaging.conftest import Bus
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)

FAST = Backoff(base_delay_s=0.01, max_delay_s=0.02)


def _options(bus: Bus, durable: str) -> ConsumerOptions:
    return ConsumerOptions(stream=bus.stream, durable=durable, dead_letter_subject=bus.dlq,
                           backoff=FAST, fetch_timeout_s=0.2, max_deliveries=3,
                           registry=CollectorRegistry())


class _Rows:
    """A class-based async iterator (not an async generator)."""

    def __init__(self, ran: list[str]) -> None:
        self.ran = ran

    def __aiter__(self) -> _Rows:
        return self

    async def __anext__(self) -> int:
        self.ran.append("row")
        raise StopAsyncIteration


async def _fault_then_fixed(bus: Bus, kind: str,
                            returning: Callable[[Delivery, list[str]], Any]) -> list[str]:
    """Run a consumer whose handler returns ``returning(d, ran)``; assert run() ends
    with TypeError and the fixed handler gets the message at once (its 2nd delivery).
    Returns what the returned work recorded (``ran``) a while after."""
    await bus.js.publish(bus.subject, b"x", headers={"Nats-Msg-Id": f"u-{kind}"})
    ran: list[str] = []
    calls: list[int] = []

    async def handler(d: Delivery) -> None:
        calls.append(d.delivery)
        return returning(d, ran)  # type: ignore[no-any-return]  # await forgotten

    task = asyncio.create_task(Consumer(bus.js, handler, _options(bus, kind)).run())
    try:
        done, _ = await asyncio.wait((task,), timeout=5)
        assert done, f"run() still going (the message acked); handler calls {calls}"
        exc = task.exception()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert isinstance(exc, TypeError), repr(exc)
    assert calls == [1]

    got: list[int] = []

    async def fixed(d: Delivery) -> None:  # the code fixed: handled at once, not lost
        got.append(d.delivery)

    again = asyncio.create_task(Consumer(bus.js, fixed, _options(bus, kind)).run())
    try:
        await until(lambda: got == [2], timeout_s=5, what="the message handled again")
    finally:
        again.cancel()
        await asyncio.gather(again, return_exceptions=True)
    return ran


async def _work(ran: list[str]) -> None:
    await asyncio.sleep(0)
    ran.append("work")


def _gather(d: Delivery, ran: list[str]) -> Awaitable[Any]:
    return asyncio.gather(_work(ran))


def _task(d: Delivery, ran: list[str]) -> Awaitable[Any]:
    return asyncio.ensure_future(_work(ran))


def _rows(d: Delivery, ran: list[str]) -> Any:
    return _Rows(ran)


@pytest.mark.parametrize("returning", [_gather, _task, _rows],
                         ids=["gather-future", "task", "async-iterator"])
async def test_a_handler_returning_unawaited_work_is_not_acked(
        bus: Bus, returning: Callable[[Delivery, list[str]], Any]) -> None:
    """The message is not acked; the returned future is cancelled (its work never
    runs beside the redelivery); the async iterator is never iterated."""
    ran = await _fault_then_fixed(bus, returning.__name__.strip("_"), returning)
    await asyncio.sleep(0.05)
    assert ran == []


async def test_a_handler_returning_a_grpc_call_unawaited_is_not_acked(bus: Bus) -> None:
    """``return stub.Record(req)`` for ``return await stub.Record(req)``: a grpc.aio call
    (awaitable, no coroutine nor future): not acked, the call cancelled."""
    answered: list[bytes] = []

    async def record(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        answered.append(request)
        return b"ok"

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "t.Rec", {"Record": grpc.unary_unary_rpc_method_handler(record)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    calls: list[Any] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            rec = ch.unary_unary("/t.Rec/Record")

            def _call(d: Delivery, ran: list[str]) -> Any:
                call = rec(d.data, timeout=5)
                calls.append(call)
                return call

            await _fault_then_fixed(bus, "grpc-call", _call)
            assert len(calls) == 1
            assert calls[0].cancelled() or (await calls[0].code()) == grpc.StatusCode.CANCELLED
    finally:
        await server.stop(None)
