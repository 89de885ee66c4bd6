"""An etcd watch whose creation etcd refuses (``created`` and ``canceled`` in one answer,
etcd's v3rpc ``recvLoop``: a read the user may not do, ``permission denied``, or any
error of ``watchStream.Watch``) is a failed read, retried with backoff, not a stream
followed in silence."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from meshkit.discovery import EtcdOptions, EtcdRegistry
from tests.discovery.conformance import Collector
from tests.discovery.test_etcd import FAST, _loopback_gateway
from tests.support.wait import until


async def test_a_watch_created_and_canceled_at_once_is_a_failed_read() -> None:
    """etcd answered the watch request with ``created: true, canceled: true`` and a
    ``cancel_reason`` (here ``permission denied``, then the stream stays open without a
    watcher): the watch took the ``created`` for success and waited on the stream until
    it had been quiet for ``ttl_s``, again and again, while ``status()`` said readable
    and no change could ever come. It is now a failed read: ``readable`` False, the
    reason in ``last_error``, and the watch asks again with backoff."""
    watches = 0
    header = {"cluster_id": "1", "member_id": "1", "revision": "5", "raft_term": "2"}

    async def range_(_request: web.Request) -> web.Response:
        return web.json_response({"header": header})

    async def watch(request: web.Request) -> web.StreamResponse:
        nonlocal watches
        watches += 1
        resp = web.StreamResponse(status=200)
        await resp.prepare(request)
        message = {"result": {"header": header, "watch_id": "0", "created": True,
                              "canceled": True,
                              "cancel_reason": "etcdserver: permission denied"}}
        await resp.write(json.dumps(message).encode() + b"\n")
        await asyncio.Event().wait()  # the stream stays open, nothing more comes
        return resp

    async with _loopback_gateway({"/v3/kv/range": range_, "/v3/watch": watch}) as port:
        reg = EtcdRegistry(EtcdOptions(endpoints=(f"127.0.0.1:{port}",),
                                       **{**FAST, "ttl_s": 30}))
        try:
            watcher = Collector(reg, "svc")
            assert await watcher.next() == frozenset()
            await until(lambda: reg.status().readable is False, timeout_s=10,
                        what="the refused watch counted as a failed read")
            assert "permission denied" in (reg.status().last_error or "")
            await until(lambda: watches >= 2, timeout_s=10, what="the watch to ask again")
            await watcher.stop()
        finally:
            await reg.close()
