"""A mesh stream call (server stream, bidi) still open when its event loop ended
(``asyncio.run(main())`` returning with the channel and its streams left open), collected
by the garbage collector afterwards.

grpc.aio's ``Call.__del__`` cancels a call it collects, which runs the call's done
callbacks there and then; the channel's (the stream's outcome, reported to the balancer
in a task of the pool's) asked for the running loop, found none, and every such stream
printed "Exception ignored in: <function Call.__del__ ...> RuntimeError: no running event
loop" with its traceback, then "RuntimeWarning: coroutine '_report_stream' was never
awaited"; collected in a later loop, the report was started as a task of that loop
instead, for a pool closed with the old one. Now the outcome of a stream ended outside
the pool's own loop is dropped unreported (the pool was closed with that loop), silently.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from tests.support.echo import add_echo, method
from tests.support.loops import LoopThread, run

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("then", ["collected-outside-a-loop", "collected-in-a-later-loop"])
def test_streams_left_open_at_the_loop_end_are_collected_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, then: str,
) -> None:
    unraisable: list[str] = []

    def hook(u: Any) -> None:
        unraisable.append(f"{u.exc_type.__name__}: {u.exc_value} in {u.object!r}")

    monkeypatch.setattr(sys, "unraisablehook", hook)
    where = tmp_path / "reg"
    server_loop = LoopThread()  # the server outlives the client's loop: streams stay open

    async def start() -> tuple[meshkit.MeshServer, LocalRegistry]:
        reg = LocalRegistry(LocalOptions(path=where, ttl_s=15.0))
        server = meshkit.MeshServer(
            "streams", [add_echo("s1")], registry=reg,
            options=meshkit.ServeOptions(insecure=True, admin=None, drain_delay_s=0,
                                         grace_s=0.5))
        await server.start()
        return server, reg

    async def client() -> None:
        reg = LocalRegistry(LocalOptions(path=where, ttl_s=15.0))
        channel = meshkit.dial("streams", registry=reg,
                               options=meshkit.DialOptions(insecure=True))
        stream = channel.unary_stream(method("ServerStream"))(b"100000", timeout=30)
        assert await stream.read() == b"s1|0"
        bidi = channel.stream_stream(method("Bidi"))(timeout=30)
        await bidi.write(b"a")
        assert await bidi.read() == b"s1|a"
        # returns with the channel, its registry and both streams open

    started_later: list[str] = []

    async def later_loop() -> None:
        gc.collect()
        me = asyncio.current_task()
        started_later.extend(getattr(t.get_coro(), "__qualname__", "?")
                             for t in asyncio.all_tasks() if t is not me)
        await asyncio.sleep(0.05)

    server, reg = server_loop.run(start())
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            run(client())
            if then == "collected-in-a-later-loop":
                run(later_loop())
            gc.collect()
            run(later_loop())  # (anything a later loop would run)
            gc.collect()
        never_awaited = [str(w.message) for w in seen if "never awaited" in str(w.message)]
        assert never_awaited == []
        assert unraisable == []
        # not started in a later loop either, for a pool closed with the old one
        assert started_later == []
    finally:
        server_loop.run(server.drain(), timeout_s=30)
        server_loop.run(reg.close())
        server_loop.close()
