"""Client-side parity of a meshkit channel with raw grpc.aio, side by side against the same
real grpc.aio server on loopback (a plain grpc.aio echo server registered in the local
registry, so both channels reach the very same process): what grpc.aio answers, meshkit
answers, with default dial options and without retries."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.support.echo import SERVICE, handler, method, raw_server
from tests.support.wait import until

# default dial options, and without retries (the wrappers they add must change nothing here)
DIALS = [pytest.param({}, id="default"), pytest.param({"retry": None}, id="retry-None")]


@contextlib.asynccontextmanager
async def side_by_side(registry: LocalRegistry,
                       dial_kw: dict[str, Any]) -> AsyncIterator[tuple[Any, Any]]:
    """``(raw grpc.aio channel, meshkit channel)`` to one plain grpc.aio echo server."""
    async with raw_server(handler("e1")) as (_server, port):
        await registry.register(
            Instance(service="echo", instance_id="e1", host="127.0.0.1", port=port))
        raw = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        mesh = meshkit.dial("echo", registry=registry,
                            options=meshkit.DialOptions(insecure=True, **dial_kw))
        try:
            await mesh.wait_for_endpoints(1)
            yield raw, mesh
        finally:
            await raw.close()
            await mesh.close()


@contextlib.asynccontextmanager
async def stream_unary_service(registry: LocalRegistry, name: str,
                               behaviour: Any) -> AsyncIterator[Any]:
    """A meshkit channel to a plain grpc.aio server whose one stream-unary method
    ``name`` (on the echo service) runs ``behaviour(requests, context)``."""
    from tests.support.echo import SERVICE

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {name: grpc.stream_unary_rpc_method_handler(behaviour)})
    async with raw_server(handler) as (_server, port):
        await registry.register(
            Instance(service=name.lower(), instance_id="s1", host="127.0.0.1", port=port))
        async with meshkit.dial(name.lower(), registry=registry,
                                options=meshkit.DialOptions(insecure=True)) as ch:
            await ch.wait_for_endpoints(1)
            yield ch


async def _await(call: Any) -> Any:
    return await call


@pytest.mark.parametrize("dial_kw", DIALS)
async def test_debug_error_string(registry: LocalRegistry, dial_kw: dict[str, Any]) -> None:
    """grpc.aio's call objects have ``async debug_error_string()`` (grpc core's debug string
    of the status); meshkit's had none (``AttributeError``): the unary and the streaming
    call give the settled attempt's."""
    async with side_by_side(registry, dial_kw) as (raw, mesh):
        for ch in (raw, mesh):
            unary = ch.unary_unary(method("Fail"))(b"NOT_FOUND")
            with pytest.raises(grpc.aio.AioRpcError):
                await unary
            assert "NOT_FOUND" in (await unary.debug_error_string() or ""), ch
            stream = ch.unary_stream(method("FailStream"))(b"NOT_FOUND:1")
            with pytest.raises(grpc.aio.AioRpcError):
                _ = [m async for m in stream]
            assert "NOT_FOUND" in (await stream.debug_error_string() or ""), ch
            ok = ch.unary_unary(method("Unary"))(b"x")
            await ok
            assert isinstance(await ok.debug_error_string(), str), ch


@pytest.mark.parametrize("dial_kw", DIALS)
async def test_details_of_a_cancelled_unary_call(
        registry: LocalRegistry, dial_kw: dict[str, Any]) -> None:
    """A unary call cancelled in flight: grpc.aio's ``details()`` is "Locally cancelled by
    application!" (as a meshkit stream's); a meshkit unary call answered ``""``."""
    async with side_by_side(registry, dial_kw) as (raw, mesh):
        for ch in (raw, mesh):
            call = ch.unary_unary(method("Sleep"))(b"5000", timeout=10)
            task = asyncio.ensure_future(_await(call))
            await asyncio.sleep(0.2)
            assert call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await call.code() is grpc.StatusCode.CANCELLED, ch
            assert await call.details() == "Locally cancelled by application!", ch


@pytest.mark.parametrize("dial_kw", DIALS)
async def test_call_objects_are_grpc_aio_call_types(
        registry: LocalRegistry, dial_kw: dict[str, Any]) -> None:
    """A grpc.aio multicallable returns a ``grpc.aio.UnaryUnaryCall`` / ``UnaryStreamCall``
    / ``StreamUnaryCall`` / ``StreamStreamCall`` (what its ``__call__`` and the generated
    stubs' types say); meshkit's call objects were no ``grpc.aio.Call`` at all. Each is
    the one kind it is, not another."""
    kinds = (grpc.aio.UnaryUnaryCall, grpc.aio.UnaryStreamCall, grpc.aio.StreamUnaryCall,
             grpc.aio.StreamStreamCall)
    async with side_by_side(registry, dial_kw) as (raw, mesh):
        for ch in (raw, mesh):
            calls = [
                (ch.unary_unary(method("Unary"))(b"x"), grpc.aio.UnaryUnaryCall),
                (ch.unary_stream(method("ServerStream"))(b"1"), grpc.aio.UnaryStreamCall),
                (ch.stream_unary(method("ClientStream"))(iter([b"a"])),
                 grpc.aio.StreamUnaryCall),
                (ch.stream_stream(method("Bidi"))(iter([b"a"])), grpc.aio.StreamStreamCall),
            ]
            try:
                for call, kind in calls:
                    assert isinstance(call, grpc.aio.Call), (ch, type(call))
                    assert [k for k in kinds if isinstance(call, k)] == [kind], (ch, call)
            finally:
                for call, _ in calls:
                    call.cancel()


@pytest.mark.parametrize("dial_kw", DIALS)
async def test_wait_for_state_change_on_a_closed_channel_raises(
        registry: LocalRegistry, dial_kw: dict[str, Any]) -> None:
    """grpc.aio's ``wait_for_state_change`` on a closed channel raises ``UsageError``
    ("Channel is closed."). meshkit's returned at once with the state still ``SHUTDOWN``,
    so the usual watching loop (``state = ch.get_state(); await
    ch.wait_for_state_change(state)``) spun without ever suspending, blocking the loop."""
    async with side_by_side(registry, dial_kw) as (raw, mesh):
        for ch in (raw, mesh):
            await ch.close()
            with pytest.raises(grpc.aio.UsageError):
                await asyncio.wait_for(
                    ch.wait_for_state_change(grpc.ChannelConnectivity.SHUTDOWN), 2)


@pytest.mark.parametrize("dial_kw", DIALS)
async def test_a_wait_for_state_change_ends_when_the_channel_closes(
        registry: LocalRegistry, dial_kw: dict[str, Any]) -> None:
    """A ``wait_for_state_change`` waiting when the channel closes returns (the state
    went to ``SHUTDOWN``), and the next one raises: a watching loop ends."""
    async with side_by_side(registry, dial_kw) as (_raw, mesh):
        state = mesh.get_state()
        waiting = asyncio.ensure_future(mesh.wait_for_state_change(state))
        await asyncio.sleep(0.05)
        await mesh.close()
        await asyncio.wait_for(waiting, 2)
        assert mesh.get_state() is grpc.ChannelConnectivity.SHUTDOWN
        with pytest.raises(grpc.aio.UsageError):
            await asyncio.wait_for(mesh.wait_for_state_change(mesh.get_state()), 2)


@pytest.mark.parametrize("dial_kw", DIALS)
async def test_stream_unary_call_with_write_and_done_writing(
        registry: LocalRegistry, dial_kw: dict[str, Any]) -> None:
    """A grpc.aio stream-unary call may be made without a request iterator, fed with
    ``write()`` / ``done_writing()`` and awaited; meshkit refused such a call with
    ``ConfigError`` ("need a request iterator") and its call object had no ``write``. A
    write after ``done_writing()`` raises grpc.aio's ``InvalidStateError``, and so does a
    write after the call has ended; a call made with an iterator refuses ``write()``
    (``UsageError``)."""
    async with side_by_side(registry, dial_kw) as (raw, mesh):
        for ch in (raw, mesh):
            call = ch.stream_unary(method("ClientStream"))()
            await call.write(b"a")
            await call.write(b"b")
            await call.done_writing()
            with pytest.raises(asyncio.InvalidStateError):
                await call.write(b"c")
            assert await call == b"e1|a,b", ch
            await call.done_writing()  # again, after the end: nothing
            with pytest.raises(asyncio.InvalidStateError):
                await call.write(b"d")
            iterated = ch.stream_unary(method("ClientStream"))(iter([b"x"]))
            with pytest.raises(grpc.aio.UsageError):
                await iterated.write(b"y")
            assert await iterated == b"e1|x"


async def test_a_writer_is_woken_when_the_call_fails(registry: LocalRegistry) -> None:
    """A writer waiting to hand over a message nobody will take (the call ended: here its
    deadline) gets the call's error instead of waiting for ever."""
    async def never_reads(requests: Any, context: Any) -> bytes:
        await asyncio.sleep(30)
        return b""

    async with stream_unary_service(registry, "NeverReads", never_reads) as ch:
        call = ch.stream_unary(method("NeverReads"))(timeout=0.5)

        async def write_forever() -> None:
            while True:
                try:
                    await call.write(b"x" * 65536)
                except asyncio.InvalidStateError:
                    # the deadline passed between two writes, not during one (a loaded
                    # box): "RPC already finished", as grpc.aio; the call's error is its own
                    await call

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(write_forever(), 5)
        # the deadline; or, when it ends a send grpc.aio has in flight (a loaded machine),
        # grpc.aio's own INTERNAL "Internal error from Core" for the failed send
        assert err.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED,
                                    grpc.StatusCode.INTERNAL), err.value
        assert await call.code() is err.value.code()


async def test_cancelling_the_task_awaiting_a_write_cancels_the_call(
        registry: LocalRegistry) -> None:
    """As grpc.aio's ``write()``: a task awaiting a write held back by flow control that is
    cancelled (here by ``wait_for``'s timeout) cancels the call, which the server sees,
    instead of leaving it to run on to its deadline."""
    seen: list[str] = []

    async def never_reads(requests: Any, context: Any) -> bytes:
        try:
            await asyncio.sleep(30)  # the client's writes fill the flow-control window
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return b""

    async with stream_unary_service(registry, "NeverReads", never_reads) as ch:
        call = ch.stream_unary(method("NeverReads"))(timeout=20)
        for _ in range(200):
            try:
                await asyncio.wait_for(call.write(b"x" * 200_000), 1.0)
            except TimeoutError:
                break
        else:
            pytest.fail("no write was held back")
        await until(call.done, timeout_s=3, what="the call ended")
        assert call.cancelled() and await call.code() is grpc.StatusCode.CANCELLED
        await until(lambda: "cancelled" in seen, timeout_s=3, what="the server's cancel")


async def test_writes_to_an_ended_stream_unary_call(registry: LocalRegistry) -> None:
    """``write()`` to a stream-unary call that has ended answers as raw grpc.aio's, side by
    side on one server (its ``_write`` checks ``done()`` first): ``InvalidStateError``
    "RPC already finished." after it answered, after it failed (not the failure's
    ``AioRpcError`` again), after ``cancel()`` (not ``CancelledError`` in a writing task
    nobody cancelled; nor a write accepted and dropped, while ``done()`` said the call was
    over), and after ``done_writing()`` once the call ended (not "half closed");
    ``write()`` and ``done_writing()`` on a call made with a request iterator,
    ``UsageError``, ended or not."""
    async def answers_at_once(requests: Any, context: Any) -> bytes:
        # the first message taken before the answer (not the half-close): answered
        # before it was read, the client's write of it could end the call grpc.aio's own
        # INTERNAL "Internal error from Core" on a loaded box, on the raw channel too
        async for _ in requests:
            break
        return b"done"

    async def fails(requests: Any, context: Any) -> bytes:
        async for _ in requests:  # (as above)
            break
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    async def waits(requests: Any, context: Any) -> bytes:
        await asyncio.sleep(30)
        return b""

    handlers = grpc.method_handlers_generic_handler(SERVICE, {
        "AnswersAtOnce": grpc.stream_unary_rpc_method_handler(answers_at_once),
        "Fails": grpc.stream_unary_rpc_method_handler(fails),
        "Waits": grpc.stream_unary_rpc_method_handler(waits)})

    async def second_write(call: Any) -> str:
        try:
            await asyncio.wait_for(call.write(b"b"), 5)
        except BaseException as exc:
            return f"{type(exc).__name__}: {exc}"
        return "accepted"

    async def outcomes(ch: Any) -> dict[str, str]:
        out: dict[str, str] = {}
        answered = ch.stream_unary(method("AnswersAtOnce"))(timeout=5)
        await answered.write(b"a")
        assert await answered == b"done"
        out["answered"] = await second_write(answered)
        failed = ch.stream_unary(method("Fails"))(timeout=5)
        await failed.write(b"a")
        with pytest.raises(grpc.aio.AioRpcError):
            await failed
        out["failed"] = await second_write(failed)
        for when in ("at once", "in flight"):
            cancelled = ch.stream_unary(method("Waits"))(timeout=5)
            await cancelled.write(b"a")
            if when == "in flight":  # the first message taken, the call under way
                await asyncio.sleep(0.3)
            assert cancelled.cancel()
            assert cancelled.done()
            out[f"cancelled {when}"] = await second_write(cancelled)
        never = ch.stream_unary(method("Waits"))(timeout=5)
        assert never.cancel()
        out["cancelled before a write"] = await second_write(never)
        half_closed = ch.stream_unary(method("AnswersAtOnce"))(timeout=5)
        await half_closed.write(b"a")
        await half_closed.done_writing()
        assert await half_closed == b"done"
        out["half-closed, answered"] = await second_write(half_closed)
        iterated = ch.stream_unary(method("AnswersAtOnce"))(iter([b"x"]), timeout=5)
        with pytest.raises(grpc.aio.UsageError):
            await iterated.done_writing()
        assert await iterated == b"done"
        out["iterated, answered"] = await second_write(iterated)
        return out

    async with raw_server(handlers) as (_server, port):
        await registry.register(
            Instance(service="writes", instance_id="s1", host="127.0.0.1", port=port))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as raw, \
                meshkit.dial("writes", registry=registry,
                             options=meshkit.DialOptions(insecure=True)) as mesh:
            await mesh.wait_for_endpoints(1)
            expected = await outcomes(raw)
            assert expected.pop("iterated, answered").startswith("UsageError")
            assert set(expected.values()) == {"InvalidStateError: RPC already finished."}
            expected["iterated, answered"] = (
                "UsageError: " + "The iterator and read/write APIs may not be mixed on a "
                "single RPC.")
            assert await outcomes(mesh) == expected


def _pending_request_consumers() -> list[asyncio.Task[Any]]:
    """grpc.aio's request-iterator consumer tasks still running (``_StreamRequestMixin.
    _consume_request_iterator``)."""
    return [t for t in asyncio.all_tasks()
            if not t.done() and "_consume_request_iterator" in repr(t.get_coro())]


async def test_a_written_stream_unary_call_answered_early_leaves_no_task_behind(
        registry: LocalRegistry) -> None:
    """A stream-unary call fed with write() that the server answers before done_writing()
    leaves none of grpc.aio's request-consumer tasks waiting for ever on the mesh's
    request queue (plain grpc.aio leaves none either)."""
    async def answers_after_one(requests: Any, context: Any) -> bytes:
        await context.read()
        return b"done"

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            SERVICE,
            {"AnswersAfterOne": grpc.stream_unary_rpc_method_handler(answers_after_one)}),))

    srv = meshkit.MeshServer("early", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, instance_id="s1",
                                                          drain_delay_s=0.0, grace_s=1.0))
    await srv.start()
    try:
        raw = grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}")
        mesh = meshkit.dial("early", registry=registry,
                            options=meshkit.DialOptions(insecure=True))
        try:
            await mesh.wait_for_endpoints(1)
            before = set(_pending_request_consumers())
            calls = []  # kept alive, as a caller holding its call objects would
            for name, ch in (("raw", raw), ("mesh", mesh)):
                for _ in range(5):
                    call = ch.stream_unary(method("AnswersAfterOne"))(timeout=5)
                    await asyncio.wait_for(call.write(b"a"), 5)
                    assert await asyncio.wait_for(call, 5) == b"done", name
                    await asyncio.wait_for(call.done_writing(), 5)  # after the end: nothing
                    assert await call.code() is grpc.StatusCode.OK
                    calls.append(call)
            # grpc.aio's consumers of ended calls are gone a few loop turns later
            with contextlib.suppress(AssertionError):
                await until(lambda: not set(_pending_request_consumers()) - before,
                            timeout_s=3.0)
            left = set(_pending_request_consumers()) - before
            assert not left, (f"{len(left)} request-consumer task(s) of finished "
                              f"stream-unary calls still pending")
        finally:
            await raw.close()
            await mesh.close()
        assert all(c.done() for c in calls)
    finally:
        await srv.drain()
