"""A stream-stream call through ``DialOptions.attempt_interceptors`` on an event loop with
``asyncio.eager_task_factory`` (Python 3.12+, a factory users set for speed): the first
write raised ``asyncio.InvalidStateError`` "RPC already finished." on a call nobody
ended, and asyncio logged "Task exception was never retrieved" (``AttributeError:
'InterceptedStreamStreamCall' object has no attribute '_interceptors_task'``).

The cause is grpc.aio's (1.85): ``InterceptedStreamStreamCall.__init__`` makes tasks that
read attributes it sets after them; an eager task runs inside ``create_task()``, before
they exist. A raw ``grpc.aio.insecure_channel(interceptors=[...])`` fails the same way;
meshkit's in-mesh path (no attempt interceptors) works. A work-around belongs where meshkit
makes the attempt's grpc.aio call (``meshkit/_calls.py``/``meshkit/_attempts.py``, owned by
another helper of this session): make it with the loop's task factory set to ``None``
for the duration of that synchronous call, then put the factory back. Strict xfail until then.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from tests.conftest import EchoFactory
from tests.support.attempts import PassAll
from tests.support.echo import method

pytestmark = pytest.mark.skipif(not hasattr(asyncio, "eager_task_factory"),
                                reason="asyncio.eager_task_factory is Python 3.12+")


@pytest.mark.xfail(strict=True, reason=(
    "grpc.aio's intercepted stream calls read attributes their eager tasks need before "
    "setting them; meshkit makes the attempt's call with the eager factory in place"))
async def test_a_bidi_call_through_attempt_interceptors_with_eager_tasks(
        registry: LocalRegistry, echo_servers: EchoFactory) -> None:
    await echo_servers("e1")
    loop = asyncio.get_running_loop()
    eager: Any = asyncio.eager_task_factory  # type: ignore[attr-defined,unused-ignore]
    before = loop.get_task_factory()
    loop.set_task_factory(eager)
    try:
        opts = meshkit.DialOptions(insecure=True, attempt_interceptors=(PassAll(),))
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1)
            call = ch.stream_stream(method("Bidi"))()
            await asyncio.wait_for(call.write(b"a"), 5)
            assert await asyncio.wait_for(call.read(), 5) == b"e1|a"
            await call.done_writing()
            assert await asyncio.wait_for(call.code(), 5) is grpc.StatusCode.OK
    finally:
        loop.set_task_factory(before)
