"""A client call refused for its metadata lost its access-log line when ``log_metadata``
was set.

A channel with ``TelemetryOptions(log_metadata=(...))`` writes each call's values of
those keys in its access line (:func:`meshkit._metadata.logged_metadata`), which
unpacked every item of the call's metadata as a ``(key, value)`` pair. A call whose
metadata holds something else, the very calls the mesh refuses for it (metadata given as
a ``dict``, whose keys the channel keeps; a pair with a third item; a one-item tuple),
then raised ``ValueError`` in the telemetry's completion: the warning "telemetry
completion failed error=ValueError" and no access line for the call, the refused calls
missing from the log an operator reads to find them. Now ``logged_metadata`` passes over
an item that is no pair (it never raises for the metadata's shape) and the line is
written, with the values of the pairs that are there; the call's own error is as
before. A real grpc.aio server on loopback behind ``dial()``."""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

import meshkit
from meshkit._metadata import logged_metadata
from meshkit.discovery import Instance, LocalRegistry
from meshkit.observability import TelemetryOptions, _logging
from meshkit.observability._logging import _AccessLog
from tests.support.echo import handler, method, raw_server
from tests.support.wait import until

_SECRET = "s3cret-token"

BAD = [
    ({"authorization": f"Bearer {_SECRET}"}, None),
    ([("x-user", "u1", "extra")], None),
    ([("x-user", "u2"), ("x-odd",)], {"x-user": "u2"}),
]


def test_logged_metadata_passes_over_what_is_no_pair() -> None:
    md: list[Any] = ["authorization", ("x-user", "a", "b"), ("x-user",), 7, None,
                     ("x-user", "ok")]
    assert logged_metadata(md, ("x-user", "authorization")) == {"x-user": "ok"}
    assert logged_metadata(list({"x-user": "v"}), ("x-user",)) is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("md", "logged"), BAD, ids=["dict", "three-items", "one-item"])
async def test_a_call_refused_for_its_metadata_keeps_its_access_line(
    registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, md: Any, logged: dict[str, str] | None,
) -> None:
    monkeypatch.setattr(_AccessLog, "logger", None)
    monkeypatch.setattr(_logging, "_structlog_configured", lambda: False)
    # (the handler takes the level set last: the access log's INFO)
    caplog.set_level(logging.WARNING, logger="meshkit.observability")
    caplog.set_level(logging.INFO, logger="meshkit.access")
    telemetry = TelemetryOptions(tracing=False, registry=CollectorRegistry(),
                                 log_metadata=("x-user",))
    opts = meshkit.DialOptions(insecure=True, retry=None, telemetry=telemetry)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(r.getMessage()) for r in caplog.records
                if r.name == "meshkit.access"]

    async with raw_server(handler("e1")) as (_, port):
        await registry.register(
            Instance(service="echo", instance_id="e1", host="127.0.0.1", port=port))
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            unary = ch.unary_unary(method("Unary"))
            assert await unary(b"x", timeout=10, metadata=(("x-user", "u0"),)) == b"e1|x"
            await until(lambda: len(lines()) == 1, timeout_s=10.0)
            assert lines()[0]["md"] == {"x-user": "u0"}
            with pytest.raises((grpc.aio.AioRpcError, ValueError)) as err:
                await unary(b"x", timeout=10, metadata=md)
            assert _SECRET not in str(err.value)
            with pytest.raises((grpc.aio.AioRpcError, ValueError)):
                async for _ in ch.unary_stream(method("ServerStream"))(
                        b"1", timeout=10, metadata=md):
                    pass
            await until(lambda: len(lines()) >= 3, timeout_s=5.0)
    failed = [r.getMessage() for r in caplog.records
              if r.name == "meshkit.observability" and "telemetry" in r.getMessage()]
    assert failed == [], failed
    got = lines()
    assert len(got) == 3, got
    for line in got[1:]:
        assert line["code"] != "OK" and line["attempts"] == 0, line
        assert line.get("md") == logged, line
        assert _SECRET not in json.dumps(line)
