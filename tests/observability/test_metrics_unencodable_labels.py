"""A method name no exposition can carry is counted as "other", and /metrics stays up.

A client call whose method name holds a lone surrogate (a generic proxy passing on a name
decoded with ``surrogateescape``) fails in grpc (``UnicodeEncodeError``), but its
telemetry had bound a record labelled with that name first: from then on every scrape of
the registry failed with ``UnicodeEncodeError`` (the admin server's /metrics answered
500, Prometheus saw the whole process down).
"""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.parser import text_string_to_metric_families

from meshkit.observability._metrics import OTHER_METHOD, rpc_metrics
from meshkit.observability._semconv import MethodNames
from tests.observability.conftest import ChainFactory


def test_a_surrogate_in_a_method_name_is_counted_as_other() -> None:
    """The record is the grpc_type's "other" one; both expositions render and parse."""
    registry = CollectorRegistry()
    metrics = rpc_metrics(registry)
    bad = metrics.bind_client(MethodNames("/pkg.S/Say\udc80", "unary"))
    bad.start()
    bad.finished(grpc.StatusCode.INTERNAL, 0.001, 1)
    metrics.bind_client(MethodNames("/pkg.S/Good", "unary")).start()
    assert bad.labels == ("unary", OTHER_METHOD, OTHER_METHOD)
    text = generate_latest(registry).decode()
    openmetrics_latest(registry)
    started = {tuple(sorted(s.labels.items())): s.value
               for fam in text_string_to_metric_families(text)
               if fam.name == "grpc_client_started" for s in fam.samples
               if s.name.endswith("_total")}
    assert started == {
        (("grpc_method", "Good"), ("grpc_service", "pkg.S"), ("grpc_type", "unary")): 1.0,
        (("grpc_method", "other"), ("grpc_service", "other"), ("grpc_type", "unary")): 1.0,
    }


async def test_metrics_stay_up_after_a_call_with_such_a_name(
        chain: ChainFactory, prom: CollectorRegistry) -> None:
    """A real channel's call with such a name fails, and the channel's registry still
    renders (it raised UnicodeEncodeError on every scrape before)."""
    c = await chain()
    with pytest.raises(UnicodeEncodeError):  # grpc refuses to send the name
        await c.client.unary_unary("/pkg.S/Say\udc80")(b"", timeout=2)
    assert "grpc_client_started_total" in generate_latest(prom).decode()
