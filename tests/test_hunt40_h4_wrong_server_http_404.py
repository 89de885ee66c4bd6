"""A registry entry whose address another HTTP/2 server took, one that speaks no gRPC (an
h2c web server, a proxy with no route for the path): it answers HTTP 404 with no
``grpc-status``, which grpc core reports as ``UNIMPLEMENTED`` "Received http2 header with
status: 404" (gRPC's HTTP to gRPC status mapping). No gRPC server answers so (a gRPC
server refuses an unknown method with HTTP 200 and ``grpc-status: 12``), so none of the
call ran: it is the wrong-server case of commit c10 (a gRPC server of another service,
"Method not found!"), which sends such a unary call once to another READY endpoint and,
when that one serves the method, counts the refusing endpoint failing and names it in a
warning. The 404 was not taken for such a refusal: the caller got ``UNIMPLEMENTED`` for
every call picked there while a right endpoint stood READY, and the endpoint, never
counted failing and answering fastest, drew P2C's picks (measured with P2C, one echo
server and one raw h2 server answering 404: 83 of 200 calls failed ``UNIMPLEMENTED``,
in runs of up to 50 in a row, the 404 endpoint never ejected). Served with ``h2``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import grpc
import h2.connection
import pytest
import structlog

import meshkit
from meshkit.balancer import Done, Endpoint, EndpointState, OutlierOptions
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from meshkit.resilience import RetryOptions
from tests.support.echo import add_echo, method
from tests.support.raw_h2 import RawServer

pytestmark = pytest.mark.timeout(60)


class _PreferWrong:
    """Picks endpoint ``wrong`` while it is READY and not excluded, else any READY one (every
    call tries the wrong server first, as P2C does for the fastest answers)."""

    def __init__(self) -> None:
        self._eps: tuple[Endpoint, ...] = ()

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        self._eps = tuple(endpoints)

    def pick(
        self, key: str | None = None, exclude: Collection[Endpoint] = ()
    ) -> tuple[Endpoint, Done] | None:
        ready = [ep for ep in self._eps if ep.state is EndpointState.READY and ep not in exclude]
        ready.sort(key=lambda ep: ep.key != "wrong")
        return (ready[0], _noop) if ready else None


def _noop(code: grpc.StatusCode, latency_s: float) -> None:
    pass


def _not_found(with_body: bool) -> object:
    def respond(conn: h2.connection.H2Connection, sid: int, headers: object, body: bytes) -> None:
        if with_body:
            conn.send_headers(sid, [(":status", "404"), ("content-type", "text/html")])
            conn.send_data(sid, b"<html>404 Not Found</html>", end_stream=True)
        else:
            conn.send_headers(sid, [(":status", "404")], end_stream=True)

    return respond


def _dial(reg: LocalRegistry, retry: RetryOptions | None) -> meshkit.MeshChannel:
    return meshkit.dial(
        "echo",
        registry=reg,
        options=meshkit.DialOptions(
            insecure=True,
            balancer=_PreferWrong,
            retry=retry,
            telemetry=None,
            outlier=OutlierOptions(consecutive_failures=3, base_ejection_s=30),
        ),
    )


@pytest.mark.parametrize("with_body", [True, False], ids=["html-body", "headers-only"])
@pytest.mark.parametrize("retry", [RetryOptions(), None], ids=["retry", "no-retry"])
async def test_calls_go_on_to_the_grpc_endpoint_and_the_404_one_is_ejected(
    tmp_path: Path, with_body: bool, retry: RetryOptions | None
) -> None:
    reg = LocalRegistry(LocalOptions(path=tmp_path / "r", ttl_s=30.0, poll_interval_s=0.05))
    good = meshkit.MeshServer(
        "echo",
        [add_echo("good")],
        registry=reg,
        options=meshkit.ServeOptions(
            insecure=True, instance_id="good", drain_delay_s=0, grace_s=1.0
        ),
    )
    try:
        async with RawServer(_not_found(with_body)) as wrong:  # type: ignore[arg-type]
            await good.start()
            await reg.register(
                Instance(service="echo", instance_id="wrong", host="127.0.0.1", port=wrong.port)
            )
            async with _dial(reg, retry) as ch:
                await ch.wait_for_endpoints(2, timeout_s=10)
                call = ch.unary_unary(method("Unary"))
                with structlog.testing.capture_logs() as logs:
                    for i in range(6):
                        assert await call(b"%d" % i, timeout=10) == b"good|%d" % i
                stats = {ep.instance_id: ep for ep in ch.stats().endpoints}
                assert stats["wrong"].ejected, stats
                assert stats["wrong"].failures == 3
                assert len(wrong.requests) == 3  # none sent there once ejected
                assert not stats["good"].ejected and stats["good"].failures == 0
                said = [
                    e
                    for e in logs
                    if e["log_level"] == "warning"
                    and e["event"].startswith("endpoint does not serve the method")
                    and e.get("instance_id") == "wrong"
                    and "status: 404" in str(e.get("details", ""))
                ]
                assert said, logs
    finally:
        await good.drain()
        await reg.close()


async def test_a_404_from_every_endpoint_ends_unimplemented_and_ejects_nobody(
    tmp_path: Path,
) -> None:
    reg = LocalRegistry(LocalOptions(path=tmp_path / "r", ttl_s=30.0, poll_interval_s=0.05))
    try:
        async with (
            RawServer(_not_found(True)) as a,
            RawServer(  # type: ignore[arg-type]
                _not_found(False)  # type: ignore[arg-type]
            ) as b,
        ):
            for name, srv in (("wrong", a), ("other", b)):
                await reg.register(
                    Instance(service="echo", instance_id=name, host="127.0.0.1", port=srv.port)
                )
            async with _dial(reg, RetryOptions()) as ch:
                await ch.wait_for_endpoints(2, timeout_s=10)
                call = ch.unary_unary(method("Unary"))
                for i in range(5):
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await call(b"%d" % i, timeout=10)
                    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
                    assert "status: 404" in (err.value.details() or "")
                stats = {ep.instance_id: ep for ep in ch.stats().endpoints}
                assert not any(ep.ejected for ep in stats.values()), stats
    finally:
        await reg.close()
