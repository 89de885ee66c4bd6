"""Why an mTLS endpoint cannot be connected, where an operator looks.

A channel dialed with ``DialOptions(tls=...)`` to a server holding another workload's
certificate, one from another CA, an expired one, a plaintext server, or a TLS server
that refuses the client's certificate: the endpoint went ``FAILING`` and calls failed
``UNAVAILABLE`` "service 'whod': all 1 endpoints are failing", nothing in ``stats()``,
``/debug/mesh`` or meshkit's log saying why (grpcio exposes no sub-channel's connection
error; grpc core wrote it on stderr at its own verbosity, if at all). Now, when such an
endpoint goes ``TRANSIENT_FAILURE``, meshkit probes it once with Python's ssl (same CA
bundle, client certificate and expected identity name; rate-limited per endpoint,
bounded, off the call path) and the reason shows in ``EndpointStats.connect_error``, in
the status of a call no endpoint can take, and in one warning per change of reason.
All on real grpc.aio servers on loopback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

import meshkit
from meshkit.auth import issue_into_dir
from meshkit.auth._probe import HandshakeDiagnosis, handshake_problem
from meshkit.discovery import Instance, LocalRegistry
from tests.auth.conftest import TD, Pki, StartServer
from tests.support.wait import until

pytestmark = pytest.mark.timeout(90)


def _server_credentials(pki: Pki, service: str, *, client_ca: Pki | None = None,
                        now: dt.datetime | None = None) -> grpc.ServerCredentials:
    """Credentials of a plain grpc.aio mTLS server with ``service``'s certificate of
    ``pki`` (issued at ``now``, 1 h), verifying clients against ``client_ca``'s CA
    (default ``pki``'s)."""
    files = issue_into_dir(pki.dir, service, ttl_h=1.0, dns=("localhost",),
                           ips=("127.0.0.1",), now=now, overwrite=True)
    roots = ((client_ca or pki).dir / "ca.pem").read_bytes()
    return grpc.ssl_server_credentials(
        [(files.key_file.read_bytes(), files.cert_file.read_bytes())],
        root_certificates=roots, require_client_auth=True)


# case -> (server credentials from (pki, other_pki) or None for plaintext, what the
# reason must say)
_Creds = Callable[[Pki, Pki], "grpc.ServerCredentials | None"]
CASES: dict[str, tuple[_Creds, tuple[str, ...]]] = {
    "another_identity": (
        lambda pki, other: _server_credentials(pki, "otherd"),
        ("peer identity spiffe://meshkit.test/svc/otherd is not the expected "
         "spiffe://meshkit.test/svc/whod", "lacks the DNS name whod.svc.meshkit.test")),
    "unknown_ca": (
        lambda pki, other: _server_credentials(other, "whod", client_ca=pki),
        ("certificate verify failed: unable to get local issuer certificate",
         "spiffe://meshkit.test/svc/whod", "which no CA of ")),
    "expired": (
        lambda pki, other: _server_credentials(
            pki, "whod", now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)),
        ("certificate verify failed: certificate has expired",
         "the server's certificate spiffe://meshkit.test/svc/whod expired at ")),
    "plaintext": (
        lambda pki, other: None,
        ("the server answered without TLS (a plaintext server?)",)),
    "refuses_client_certificate": (
        lambda pki, other: _server_credentials(pki, "whod", client_ca=other),
        ("refused this client's certificate spiffe://meshkit.test/svc/clientd",)),
}


async def _call(ch: meshkit.MeshChannel) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await ch.unary_unary("/test.Auth/Whoami")(b"", timeout=5)
    return info.value


@pytest.mark.parametrize("case", sorted(CASES))
async def test_why_an_mtls_endpoint_fails_is_in_stats_status_and_log(
    case: str, pki: Pki, other_pki: Pki, registry: LocalRegistry,
    start_server: StartServer,
) -> None:
    make_credentials, expected = CASES[case]
    client_tls = pki.issue("clientd")
    port = await start_server(make_credentials(pki, other_pki))
    await registry.register(Instance(service="whod", instance_id="w1", host="127.0.0.1",
                                     port=port))
    opts = meshkit.DialOptions(tls=client_tls, retry=None, outlier=None)
    with capture_logs() as logs:
        async with meshkit.dial("whod", registry=registry, options=opts) as ch:
            first = await _call(ch)
            assert first.code() is grpc.StatusCode.UNAVAILABLE

            def reason() -> str | None:
                return ch.stats().endpoints[0].connect_error

            await until(lambda: reason() is not None, timeout_s=30,
                        what="the endpoint's connect_error")
            why = reason()
            assert why is not None
            for part in expected:
                assert part in why, (part, why)
            assert "PRIVATE KEY" not in why
            assert ch.stats().as_dict()["endpoints"][0]["connect_error"] == why
            # a call no endpoint can take says why
            later = await _call(ch)
            assert later.code() is grpc.StatusCode.UNAVAILABLE
            assert f"(w1 at 127.0.0.1:{port}: {why})" in (later.details() or "")
    warned = [e for e in logs if e["event"] == "endpoint cannot be connected"]
    assert len(warned) == 1, warned
    assert warned[0]["reason"] == why and warned[0]["instance_id"] == "w1"


async def test_a_healthy_endpoint_has_no_connect_error_and_a_fixed_one_loses_it(
    pki: Pki, registry: LocalRegistry, start_server: StartServer,
) -> None:
    """A server that works reads ``connect_error`` None; an endpoint that failed (a
    plaintext server) and is replaced at the same instance id by a working one connects,
    and its reason is gone."""
    client_tls = pki.issue("clientd")
    good = await start_server(_server_credentials(pki, "whod"))
    plain = await start_server(None)
    await registry.register(Instance(service="whod", instance_id="w1", host="127.0.0.1",
                                     port=plain))
    opts = meshkit.DialOptions(tls=client_tls, retry=None, outlier=None)
    async with meshkit.dial("whod", registry=registry, options=opts) as ch:
        await _call(ch)
        await until(lambda: ch.stats().endpoints[0].connect_error is not None,
                    timeout_s=30, what="the plaintext endpoint's connect_error")
        await registry.register(Instance(service="whod", instance_id="w1",
                                         host="127.0.0.1", port=good))
        await until(lambda: ch.endpoints() and ch.endpoints()[0].address.endswith(f":{good}"),
                    timeout_s=10, what="the endpoint at its new address")
        assert await ch.unary_unary("/test.Auth/Whoami")(b"", timeout=5)
        assert ch.stats().endpoints[0].connect_error is None


async def test_probes_are_rate_limited_per_endpoint_and_forgotten_when_ready() -> None:
    """At most one probe per endpoint per ``interval_s``, one warning per change of
    reason, the reason gone when the endpoint is READY."""
    now = [100.0]
    reasons = ["connection refused"]
    probed: list[tuple[str, int]] = []

    async def probe(host: str, port: int) -> str | None:
        probed.append((host, port))
        return reasons[0]

    diagnosis = HandshakeDiagnosis("whod", probe, interval_s=30.0, clock=lambda: now[0])
    failing = grpc.ChannelConnectivity.TRANSIENT_FAILURE

    async def fail(key: str = "w1", address: str = "127.0.0.1:7") -> bool:
        run: Any = diagnosis.observe(key, address, failing)
        if run is None:
            return False
        await run
        return True

    with capture_logs() as logs:
        assert await fail()
        assert diagnosis.reason("w1") == "connection refused"
        now[0] += 29.0
        assert not await fail()  # within the interval: no probe
        now[0] += 2.0
        assert await fail()  # the same reason: no second warning
        reasons[0] = "the server answered without TLS (a plaintext server?)"
        now[0] += 31.0
        assert await fail()
        assert await fail("w2", "[::1]:8")  # another endpoint: its own interval
        assert diagnosis.observe("w1", "127.0.0.1:7", grpc.ChannelConnectivity.READY) is None
        assert diagnosis.reason("w1") is None
        assert diagnosis.reason("w2") is not None
        # CONNECTING, IDLE: no probe
        assert diagnosis.observe("w3", "127.0.0.1:9",
                                 grpc.ChannelConnectivity.CONNECTING) is None
    assert probed == [("127.0.0.1", 7)] * 3 + [("::1", 8)]
    warned = [e["reason"] for e in logs if e["event"] == "endpoint cannot be connected"]
    assert warned == ["connection refused", reasons[0], reasons[0]]
    assert [e["event"] for e in logs if e["log_level"] == "info"] == ["endpoint connected"]


async def test_a_probe_answer_after_the_endpoint_connected_is_dropped() -> None:
    """A probe still running when its endpoint connects records nothing (no stale reason
    on a READY endpoint); a probe that finds nothing wrong forgets the reason found
    before; probes beyond those running and waiting their turn are not started."""
    from meshkit.auth._probe import PROBES_AT_ONCE, PROBES_WAITING

    gate = asyncio.Event()
    answers: list[str | None] = ["connection refused"]

    async def probe(host: str, port: int) -> str | None:
        await gate.wait()
        return answers[0]

    now = [0.0]
    diagnosis = HandshakeDiagnosis("whod", probe, interval_s=30.0, clock=lambda: now[0])
    failing = grpc.ChannelConnectivity.TRANSIENT_FAILURE
    ready = grpc.ChannelConnectivity.READY

    async def probe_now() -> None:
        run = diagnosis.observe("w1", "127.0.0.1:7", failing)
        assert run is not None
        await asyncio.wait_for(run, 10)

    run: Any = diagnosis.observe("w1", "127.0.0.1:7", failing)
    task = asyncio.ensure_future(run)
    await asyncio.sleep(0)
    assert diagnosis.observe("w1", "127.0.0.1:7", ready) is None
    gate.set()
    await asyncio.wait_for(task, 10)
    assert diagnosis.reason("w1") is None
    now[0] += 31.0
    await probe_now()
    assert diagnosis.reason("w1") == "connection refused"
    answers[0] = None
    now[0] += 31.0
    await probe_now()
    assert diagnosis.reason("w1") is None

    gate.clear()
    runs = [diagnosis.observe(f"e{i}", f"127.0.0.1:{1000 + i}", failing)
            for i in range(PROBES_AT_ONCE + PROBES_WAITING + 5)]
    started = [r for r in runs if r is not None]
    assert len(started) == PROBES_AT_ONCE + PROBES_WAITING
    tasks = [asyncio.ensure_future(r) for r in started]
    gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)


async def test_a_probe_is_bounded_in_time(pki: Pki) -> None:
    """A server that accepts the connection and never answers the handshake: the probe
    ends after its ``timeout_s`` with that reason."""
    client = pki.issue("clientd")

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(60)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        why = await asyncio.wait_for(handshake_problem(
            "127.0.0.1", port, ca_file=str(client.ca_file), cert_file=str(client.cert_file),
            key_file=str(client.key_file), server_name=f"whod.svc.{TD}",
            expected_id=f"spiffe://{TD}/svc/whod", client_id=client.spiffe_id,
            timeout_s=0.5), 30)
        assert why == "no TLS handshake within 0.5s"
        missing = await handshake_problem(
            "127.0.0.1", port, ca_file=str(client.ca_file), cert_file="/nonexistent.pem",
            key_file="/nonexistent.key", server_name=f"whod.svc.{TD}", expected_id="x",
            client_id="y", timeout_s=5)
        assert missing is not None and "could not be loaded" in missing
    finally:
        server.close()
