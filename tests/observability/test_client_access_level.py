"""A client's access line for a failed call is a warning, as a server's is: with the
access log at ``WARNING`` (``MESHKIT_LOG_LEVEL=WARNING``, the usual production level) a
call that failed ``UNAVAILABLE`` or ``DEADLINE_EXCEEDED`` on the client (one that never
reached a server among them: no instance, nothing on the server's side to log it) was
written at ``info`` and so dropped: the failure was in no log at all. A successful call,
and one with a code the caller chose (``INVALID_ARGUMENT``), stay ``info``."""
from __future__ import annotations

import io
import json

import grpc
import pytest
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions
from meshkit.observability._logging import BufferedLineWriter, _AccessLog, _AccessWriter
from tests.support.echo import add_echo, method


async def test_failed_client_calls_are_logged_at_warning(registry: LocalRegistry) -> None:
    out = io.StringIO()
    saved = _AccessLog.logger
    _AccessLog.logger = _AccessWriter(BufferedLineWriter(out, flush_interval_s=30), 30)
    opts = TelemetryOptions(registry=CollectorRegistry(), tracing=False)
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0,
                                                          grace_s=1.0, telemetry=opts,
                                                          admin=None))
    await srv.start()
    ch = meshkit.dial("echo", registry=registry,
                      options=meshkit.DialOptions(insecure=True, telemetry=opts))
    nobody = meshkit.dial("nobody", registry=registry,
                          options=meshkit.DialOptions(insecure=True, telemetry=opts))
    try:
        await ch.wait_for_endpoints(1)
        assert await ch.unary_unary(method("Unary"))(b"x", timeout=5) == b"e1|x"
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await ch.unary_unary(method("Fail"))(b"INVALID_ARGUMENT", timeout=5)
        assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as internal:
            await ch.unary_unary(method("Fail"))(b"INTERNAL", timeout=5)
        assert internal.value.code() is grpc.StatusCode.INTERNAL
        with pytest.raises(grpc.aio.AioRpcError) as unreached:
            await nobody.unary_unary(method("Unary"))(b"x", timeout=0.3)
        assert unreached.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                          grpc.StatusCode.DEADLINE_EXCEEDED)
        _AccessLog.logger._writer.flush()
    finally:
        _AccessLog.logger = saved
        await ch.close()
        await nobody.close()
        await srv.drain()
    lines = [json.loads(ln) for ln in out.getvalue().splitlines()]
    clients = [(e["service"] if "service" in e else e.get("target"), e["code"])
               for e in lines if e.get("side") == "client"]
    assert all(e["level"] == "warning" for e in lines), lines
    assert ("nobody", unreached.value.code().name) in clients, lines
    assert ("echo", "INTERNAL") in clients, lines
    assert ("echo", "OK") not in clients and ("echo", "INVALID_ARGUMENT") not in clients
