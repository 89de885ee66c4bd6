"""The server telemetry's remembered loop and ready queue (d494461: the deferred completion
appended to asyncio's ready queue) are one pair, read and written whole: an interceptor
shared by servers whose loops run in two threads never pairs one thread's loop with the
other's queue (were two attributes, written one after the other: a thread switch between
the two stores left the second loop paired with the first loop's queue, and its next
completion was appended there, never to run on its own loop). The client side's twin is
tests/observability/test_hunt40_p3_client_deferral.py."""

from __future__ import annotations

import asyncio
import dis
import sys
import threading
from types import FrameType
from typing import Any

from meshkit.observability import TelemetryOptions, TelemetryServerInterceptor
from meshkit.observability._server import _plain_ready


def test_a_thread_paused_while_remembering_its_loop_never_mispairs_the_other() -> None:
    icpt = TelemetryServerInterceptor("echo", TelemetryOptions(metrics=False, tracing=False))
    code = TelemetryServerInterceptor._ready_of.__code__
    stores = [i.offset for i in dis.get_instructions(code) if i.opname == "STORE_ATTR"]
    paused, resume = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        # right after the first attribute store of _ready_of, wait for the other thread
        if event == "opcode" and not paused.is_set() and any(o < frame.f_lasti for o in stores):
            paused.set()
            resume.wait(10)
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code is code:
            frame.f_trace = local
            frame.f_trace_opcodes = True
            return local
        return None

    first_loop = asyncio.new_event_loop()

    def first_thread() -> None:
        sys.settrace(tracer)
        try:
            icpt._ready_of(first_loop)
        except BaseException as e:  # reported by the test's thread
            errors.append(e)
        finally:
            sys.settrace(None)
            paused.set()

    thread = threading.Thread(target=first_thread, daemon=True)
    second_loop = asyncio.new_event_loop()
    try:
        thread.start()
        assert paused.wait(10)
        icpt._ready_of(second_loop)  # the other thread's loop finishes a call
        resume.set()
        thread.join(10)
        assert not thread.is_alive() and errors == []
        loop, ready = icpt._ready_at
        assert loop in (first_loop, second_loop)
        assert ready is _plain_ready(loop)  # the queue of the loop it is paired with
        assert ready is not None
    finally:
        resume.set()
        thread.join(10)
        first_loop.close()
        second_loop.close()
