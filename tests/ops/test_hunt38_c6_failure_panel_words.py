"""deploy/grafana's "Failure ratio per endpoint" says what its series counts.

What a user saw: the panel's description read "Failed attempts over attempts sent to each
endpoint: what ejection reacts to", but ``meshkit_client_endpoint_failures_total``
counts every attempt that ended non-OK (an application's ``NOT_FOUND``, a rate limit's
``RESOURCE_EXHAUSTED``), while outlier ejection counts only
``OutlierOptions.failure_codes`` (UNAVAILABLE, INTERNAL, DEADLINE_EXCEEDED, UNKNOWN,
DATA_LOSS by default): an endpoint at 100 % on the panel was never ejected, and an
operator reading the panel waited for an ejection that could not come. Shown with a
real channel and server.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

import meshkit
from meshkit.balancer import OutlierOptions
from meshkit.discovery import LocalOptions, LocalRegistry
from tests.ops import grafana
from tests.support.echo import mesh_echo, method

pytestmark = pytest.mark.timeout(60)


async def test_application_errors_fill_the_failure_ratio_but_eject_nothing(
        tmp_path: Path) -> None:
    """Twelve ``NOT_FOUND`` answers (more than ``consecutive_failures``): every attempt a
    failure in the series the panel reads, no ejection; the panel's description says so
    rather than calling the ratio what ejection reacts to."""
    opts = LocalOptions(path=tmp_path / "reg", ttl_s=1.0, poll_interval_s=0.05)
    client_reg = LocalRegistry(opts)
    try:
        async with mesh_echo("appd", "a1", LocalRegistry(opts)), \
                meshkit.dial("appd", registry=client_reg, options=meshkit.DialOptions(
                    insecure=True, outlier=OutlierOptions(consecutive_failures=5))) as ch:
            await ch.wait_for_endpoints(timeout_s=10)
            for _ in range(12):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await ch.unary_unary(method("Fail"))(b"NOT_FOUND", timeout=5)
                assert info.value.code() is grpc.StatusCode.NOT_FOUND
            stats = ch.stats()
    finally:
        await client_reg.close()
    [ep] = stats.endpoints
    assert (ep.calls, ep.failures, ep.ejected, stats.ejections) == (12, 12, False, 0)
    [panel] = [p for p in grafana.dashboard()["panels"]
               if p["title"] == "Failure ratio per endpoint"]
    words = panel["description"]
    assert "what ejection reacts to" not in words, words
    assert "failure_codes" in words and "NOT_FOUND" in words, words
