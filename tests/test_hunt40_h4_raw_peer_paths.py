"""A raw HTTP/2 client's odd ``:path`` values against a MeshServer whose rules name the
real method (h4 hunt: hostile or broken HTTP/2 peers).

grpc core routes a call by its ``:path`` exactly: a case variant, a doubled or missing
slash, a query string, percent-encoding or a 10 kB name reaches no handler, so none runs
the handler of the method an ``AuthzPolicy`` rule (or a rate limit) names: each is answered
``UNIMPLEMENTED`` "Method not found!" before any check, counted in the one
``grpc_type="unknown"`` record (no label per name) and logged with its control characters
escaped. The real path is refused by the rule. Checked with the ``h2`` library (no gRPC
client sends these). Measured, all held before these tests; they keep it so: a
normalisation of paths in a handler lookup, or a per-name label, would fail them.
"""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.auth import AuthOptions, AuthzPolicy, Rule
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions, _logging
from meshkit.observability._logging import _AccessLog
from meshkit.resilience import RateLimitOptions
from tests.support.echo import add_echo, method
from tests.support.raw_h2 import grpc_frame, request_headers, unary_call
from tests.support.wait import until

REAL = method("Unary")
ODD_PATHS = {
    "double-slash": "/" + REAL,
    "no-leading-slash": REAL[1:],
    "slash-inside": REAL.replace("/Unary", "//Unary"),
    "trailing-slash": REAL + "/",
    "method-lower-case": REAL.replace("Unary", "unary"),
    "service-upper-case": REAL.upper(),
    "query": REAL + "?x=1",
    "fragment": REAL + "#f",
    "percent-encoded": REAL.replace("y", "%79"),
    "dot-segment": "/." + REAL,
    "prefix-segment": "/x" + REAL,
    "unicode": REAL.replace("U", "\u00dc"),
    "control-chars": REAL + "\x1b[2J\r\nforged",
    "long": REAL + "A" * 10_000,
}
_UNKNOWN = {"grpc_type": "unknown", "grpc_service": "other", "grpc_method": "other"}


@pytest.mark.timeout(90)
async def test_odd_paths_reach_no_handler_and_no_label_of_their_own(
    registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_AccessLog, "logger", None)
    monkeypatch.setattr(_logging, "_structlog_configured", lambda: False)
    caplog.set_level(logging.INFO, logger="meshkit.access")
    prom = CollectorRegistry()
    served: list[str] = []
    options = meshkit.ServeOptions(
        insecure=True,
        drain_delay_s=0,
        grace_s=1.0,
        # the real method denied to every caller, the rest open to anonymous ones
        auth=AuthOptions(
            policy=AuthzPolicy(rules={REAL: Rule()}, default=Rule(allow_anonymous=True))
        ),
        rate_limit=RateLimitOptions(rules={REAL: "1/hour"}),
        telemetry=TelemetryOptions(tracing=False, registry=prom),
    )
    srv = meshkit.MeshServer(
        "echo", [add_echo("e1", served=served)], registry=registry, options=options
    )
    await srv.start()
    try:
        real = await unary_call(srv.port, request_headers(REAL), grpc_frame(b"x"))
        assert real.get("grpc-status") == "16", real  # UNAUTHENTICATED: the rule applies
        for name, path in ODD_PATHS.items():
            reply = await unary_call(srv.port, request_headers(path), grpc_frame(b"x"))
            assert (reply.get("grpc-status"), reply.get("grpc-message")) == (
                "12",
                "Method not found!",
            ), (name, reply)
        assert served == []  # no handler ran, for the real path nor any other

        await until(
            lambda: (
                prom.get_sample_value(
                    "grpc_server_handled_total", {**_UNKNOWN, "grpc_code": "Unimplemented"}
                )
                == float(len(ODD_PATHS))
            ),
            timeout_s=10.0,
            what="the odd calls counted",
        )
        names = {s.labels.get("grpc_method") for m in prom.collect() for s in m.samples}
        assert names <= {
            None,
            "other",
            "Unary",
            "Sleep",
            "Fail",
            "ServerStream",
            "FailStream",
            "ClientStream",
            "Bidi",
            "Check",
            "List",
            "Watch",
            "ServerReflectionInfo",
        }, names

        def unknown_lines() -> list[dict[str, object]]:
            return [
                json.loads(r.getMessage())
                for r in caplog.records
                if r.name == "meshkit.access" and '"grpc_type":"unknown"' in r.getMessage()
            ]

        await until(
            lambda: len(unknown_lines()) == len(ODD_PATHS),
            timeout_s=10.0,
            what="an access line per odd call",
        )
        logged = {str(line["method"]) for line in unknown_lines()}
        assert REAL + "\\x1b[2J\\r\\nforged" in logged
        assert all(m.isprintable() for m in logged)
        assert not any("\n" in r.getMessage() for r in caplog.records)
    finally:
        await srv.drain()
