"""Review of 32673136: an HTTP 404 without grpc-status (a proxy or web server with no
route for the method) behind the only endpoint of a service.

32673136 takes such a 404 for grpc's refusal of a method the server does not serve, so a
unary call is sent once more to another READY endpoint. With one endpoint (a proxy in
front of the whole service answering 404 for a route it lacks) there is no other: the
README says a method no endpoint serves ends ``UNIMPLEMENTED``, each such call making
two attempts, ejecting nobody. Measured here: unary calls with the default retry and with
none, a server stream, on P2C (the default balancer), against a raw h2 server answering
404 with a body and nginx-like headers: each unary call ends ``UNIMPLEMENTED`` quoting
the 404 and the endpoint is not ejected; two requests reach the server per call (the
README's two attempts, a non-idempotent call's too). A server stream meets grpc core's
own ``UNKNOWN`` "Stream removed" for a 404 with a body (plain grpc.aio alike: not taken
for a refusal, a limit of 32673136 left as is), at most two requests too.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import h2.connection
import pytest

import meshkit
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from meshkit.resilience import RetryOptions
from tests.support.echo import method
from tests.support.raw_h2 import RawServer

pytestmark = pytest.mark.timeout(60)


def _not_found(conn: h2.connection.H2Connection, sid: int, headers: object, body: bytes) -> None:
    conn.send_headers(
        sid,
        [
            (":status", "404"),
            ("server", "nginx/1.25.3"),
            ("date", "Mon, 07 Dec 2026 14:00:00 GMT"),
            ("content-type", "text/html"),
            ("content-length", "26"),
        ],
    )
    conn.send_data(sid, b"<html>404 Not Found</html>", end_stream=True)


@pytest.mark.parametrize("retry", [RetryOptions(), None], ids=["retry", "no-retry"])
async def test_the_only_endpoint_answering_404(tmp_path: Path, retry: RetryOptions | None) -> None:
    reg = LocalRegistry(LocalOptions(path=tmp_path / "r", ttl_s=30.0, poll_interval_s=0.05))
    try:
        async with RawServer(_not_found) as proxy:  # type: ignore[arg-type]
            await reg.register(
                Instance(service="echo", instance_id="proxy", host="127.0.0.1", port=proxy.port)
            )
            opts = meshkit.DialOptions(insecure=True, retry=retry, telemetry=None)
            async with meshkit.dial("echo", registry=reg, options=opts) as ch:
                await ch.wait_for_endpoints(1, timeout_s=10)
                unary = ch.unary_unary(method("Unary"))
                for i in range(4):
                    before = len(proxy.requests)
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await unary(b"%d" % i, timeout=10)
                    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED, err.value
                    assert "status: 404" in (err.value.details() or "")
                    # the README's two attempts: the wrong-server resend, once
                    assert len(proxy.requests) - before == 2
                (ep,) = ch.stats().endpoints
                assert not ep.ejected, ep
                # a server stream: grpc core itself reports a 404 with a body as UNKNOWN
                # 'Stream removed' to a stream (plain grpc.aio alike), without one as
                # UNIMPLEMENTED; either way at most one more attempt
                before = len(proxy.requests)
                stream = ch.unary_stream(method("ServerStream"))(b"3", timeout=10)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    [m async for m in stream]
                assert err.value.code() in (
                    grpc.StatusCode.UNIMPLEMENTED,
                    grpc.StatusCode.UNKNOWN,
                ), err.value
                assert 1 <= len(proxy.requests) - before <= 2
    finally:
        await reg.close()
