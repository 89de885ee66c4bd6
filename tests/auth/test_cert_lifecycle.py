"""The certificate files' and the expiry gauge's life cycle: what the CLI's ``certs``
commands leave after a failed write or a workload named like the CA, and where serve()
publishes ``meshkit_certificate_expiry_timestamp_seconds``. Real files, a real CLI process,
real serve()/dial() pairs on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

import meshkit
from meshkit.auth import init_ca_dir, load_certificate, load_private_key
from meshkit.auth.cli import main as certs_main
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions
from tests.auth.conftest import SERVICE, TD, Pki, auth_handler
from tests.support.wait import until

_REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A fresh mesh CA for trust domain ``meshkit.test`` (as tests/auth/conftest.py's)."""
    init_ca_dir(tmp_path / "pki", trust_domain=TD, ttl_days=2)
    return Pki(tmp_path / "pki")


def _later() -> dt.datetime:
    """An issue time 2 s from now: a certificate issued with it has a later notBefore
    (whole seconds) than one issued now, and is already valid (issuing backdates it by
    5 minutes for clock skew)."""
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)


def test_a_failed_first_write_leaves_no_truncated_key_behind(tmp_path: Path) -> None:
    """A key written for the first time goes to a temporary file, then into place: a write
    that fails part-way (here EFBIG at 100 bytes, as a full disk) leaves no truncated key
    that would make every retry refuse to overwrite it."""
    d = tmp_path / "pki"
    assert certs_main(["certs", "init", "--dir", str(d), "--trust-domain", TD]) == 0
    # A real failing write: the file-size limit makes write(2) fail with EFBIG at 100 bytes
    # (a PKCS#8 P-256 key is ~241), like a full disk would.
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from meshkit.auth.cli import main
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, resource.RLIM_INFINITY))
        sys.exit(main(["certs", "issue", "orderd", "--dir", {str(d)!r}]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=_REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr  # the failed write is reported
    key = d / "orderd.key"
    if key.exists():  # atomic: either no file, or the whole key
        load_private_key(key)
    # and the operator can simply run the command again
    assert certs_main(["certs", "issue", "orderd", "--dir", str(d)]) == 0


def test_issue_never_writes_over_the_mesh_ca(tmp_path: Path) -> None:
    """A workload named ``ca`` would get the CA's own file names: ``certs issue ca --force``
    is refused instead of replacing the CA key with a leaf's."""
    d = tmp_path / "pki"
    assert certs_main(["certs", "init", "--dir", str(d), "--trust-domain", TD]) == 0
    ca_key, ca_pem = (d / "ca.key").read_bytes(), (d / "ca.pem").read_bytes()
    certs_main(["certs", "issue", "ca", "--dir", str(d), "--force"])
    assert (d / "ca.key").read_bytes() == ca_key, "the CA private key was replaced"
    assert (d / "ca.pem").read_bytes() == ca_pem, "the CA certificate was replaced"
    # the CA still issues
    assert certs_main(["certs", "issue", "orderd", "--dir", str(d)]) == 0
    assert load_certificate(d / "orderd.pem").issuer == load_certificate(d / "ca.pem").subject


async def _get(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        assert resp.status == 200
        return await resp.text()


async def test_certificate_expiry_gauge_is_on_the_served_metrics_registry(
        pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With its own telemetry registry (the one /metrics serves), serve() publishes the
    certificate expiry gauge there, not in the process default registry."""
    monkeypatch.delenv("MESHKIT_ADMIN_PORT", raising=False)
    server_tls = pki.issue("userd")
    client_tls = pki.issue("orderd")
    reg = LocalRegistry(meshkit.discovery.LocalOptions(path=tmp_path / "reg", ttl_s=2.0,
                                                       poll_interval_s=0.05))

    def add(_s: object, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((auth_handler(),))

    own = CollectorRegistry()
    srv = meshkit.MeshServer("userd", [(add, None)], registry=reg, options=meshkit.ServeOptions(
        tls=server_tls, drain_delay_s=0, grace_s=0.5, telemetry=TelemetryOptions(registry=own)))
    await asyncio.wait_for(srv.start(), 10)
    try:
        async with meshkit.dial("userd", registry=reg,
                                options=meshkit.DialOptions(tls=client_tls)) as ch:
            await ch.unary_unary(f"/{SERVICE}/Whoami")(b"", timeout=5)
        assert srv.admin is not None
        text = await asyncio.wait_for(_get(f"http://127.0.0.1:{srv.admin.port}/metrics"), 5)
        assert 'grpc_method="Whoami"' in text  # /metrics serves the telemetry registry
        samples: dict[str, Any] = {}
        for line in text.splitlines():
            if line.startswith("meshkit_certificate_expiry_timestamp_seconds{"):
                labels, value = line.rsplit(" ", 1)
                samples[labels] = float(value)
        assert samples.get('meshkit_certificate_expiry_timestamp_seconds{service="userd"}') \
            == server_tls.read().not_after, samples
    finally:
        await asyncio.wait_for(srv.drain(), 10)
        await reg.close()


async def test_certificate_gauges_follow_a_renewal_on_disk_while_connections_stay_open(
        pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator renews a server's workload certificate the documented way (re-issue
    with ``--force``; on Kubernetes, a replaced Secret) while its clients stay connected,
    as gRPC clients do (an HTTP/2 connection lives for hours); here one connection keeps
    calling and no new one is made.

    The server's TLS reloader looks at the files only when grpc asks it before a *new*
    handshake, and only then updated ``meshkit_certificate_expiry_timestamp_seconds``: with
    no new connection the gauge kept the old notAfter for as long as the clients stayed
    connected, so ``MeshkitCertificateExpiringSoon`` (renewal did not happen) fired
    although it had, and the dashboard showed the old certificate. The gauges (notAfter
    and notBefore) now follow the certificate on disk within ``reload_interval_s``
    (0.2 s here; checked with a 10 s margin)."""
    from meshkit.auth import describe_certificate

    monkeypatch.delenv("MESHKIT_ADMIN_PORT", raising=False)
    server_tls = dataclasses.replace(pki.issue("renewd", ttl_h=2), reload_interval_s=0.2)
    client_tls = pki.issue("callerd")
    reg = LocalRegistry(meshkit.discovery.LocalOptions(path=tmp_path / "reg", ttl_s=2.0,
                                                       poll_interval_s=0.05))

    def add(_s: object, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((auth_handler(),))

    own = CollectorRegistry()
    srv = meshkit.MeshServer("renewd", [(add, None)], registry=reg, options=meshkit.ServeOptions(
        tls=server_tls, drain_delay_s=0, grace_s=0.5, telemetry=TelemetryOptions(registry=own)))
    await asyncio.wait_for(srv.start(), 10)

    def gauges() -> tuple[float | None, float | None]:
        return (own.get_sample_value("meshkit_certificate_not_before_timestamp_seconds",
                                     {"service": "renewd"}),
                own.get_sample_value("meshkit_certificate_expiry_timestamp_seconds",
                                     {"service": "renewd"}))

    try:
        first = describe_certificate(load_certificate(server_tls.cert_file))
        assert gauges() == (first.not_before.timestamp(), first.not_after.timestamp())
        assert srv.instance is not None
        async with grpc.aio.secure_channel(
                f"127.0.0.1:{srv.instance.port}", client_tls.channel_credentials(),
                options=client_tls.channel_options("renewd")) as ch:
            call = ch.unary_unary(f"/{SERVICE}/Whoami")
            await call(b"", timeout=5)
            handshakes = srv.stats().tls_handshakes
            # issued 2 s ahead, not after a 1.1 s wait: a later notBefore (whole seconds),
            # still 5 minutes before now (issue backdates for clock skew)
            pki.issue("renewd", ttl_h=30, overwrite=True, now=_later())
            renewed = describe_certificate(load_certificate(server_tls.cert_file))
            want = (renewed.not_before.timestamp(), renewed.not_after.timestamp())
            assert want[1] > first.not_after.timestamp() + 20 * 3600  # 28 h later
            assert want[0] > first.not_before.timestamp()

            async def follows() -> bool:
                await call(b"", timeout=5)  # the client keeps calling meanwhile
                return gauges() == want

            await until(follows, timeout_s=10, interval_s=0.1,
                        what=f"the gauges on the renewed certificate {want}, not {gauges()}")
            assert srv.stats().tls_handshakes == handshakes  # no new connection needed
    finally:
        await asyncio.wait_for(srv.drain(), 10)
        await reg.close()


async def test_certificate_gauges_of_a_drained_server_are_not_left_on_metrics(
        pki: Pki, registry: LocalRegistry, tmp_path: Path) -> None:
    """A process that served ``echo`` over mTLS and drained that server (a reload that
    replaced it, a process that goes on as a client, one of two servers of the process
    stopped) kept exporting ``meshkit_certificate_expiry_timestamp_seconds{service=
    "echo"}`` and ``..._not_before_...`` with the notAfter of a certificate nothing served
    any more and nothing followed on disk: two thirds into its life
    ``MeshkitCertificateExpiringSoon`` fired for it. README: a server that stops "leaves
    the gauges". Now the drain withdraws them; while another live server of the same
    service publishes into the registry, they stay, on that server's certificate."""
    first_tls = pki.issue("echo", ttl_h=1.0)
    own = CollectorRegistry()

    def add(_s: object, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((auth_handler(),))

    def server(tls: Any, instance_id: str) -> meshkit.MeshServer:
        return meshkit.MeshServer("echo", [(add, None)], registry=registry,
                                  options=meshkit.ServeOptions(
                                      tls=tls, instance_id=instance_id, drain_delay_s=0,
                                      grace_s=0.5, admin=None,
                                      telemetry=TelemetryOptions(registry=own)))

    def gauges() -> tuple[float | None, float | None]:
        return (own.get_sample_value("meshkit_certificate_not_before_timestamp_seconds",
                                     {"service": "echo"}),
                own.get_sample_value("meshkit_certificate_expiry_timestamp_seconds",
                                     {"service": "echo"}))

    first = server(first_tls, "e1")
    await asyncio.wait_for(first.start(), 10)
    try:
        assert gauges()[1] == first_tls.read().not_after
        assert own.get_sample_value("meshkit_server_ready", {"service": "echo"}) == 1
    finally:
        await asyncio.wait_for(first.drain(), 10)
    assert own.get_sample_value("meshkit_server_ready", {"service": "echo"}) is None
    assert gauges() == (None, None)  # the server's gauges left, its certificate's too

    # two servers of the service, each with a certificate of its own: the gauges stay
    # while one serves, on its certificate
    kept = tmp_path / "kept"
    kept.mkdir()
    for src in (first_tls.ca_file, first_tls.cert_file, first_tls.key_file):
        shutil.copy(src, kept / Path(src).name)
    old_tls = dataclasses.replace(first_tls, ca_file=kept / Path(first_tls.ca_file).name,
                                  cert_file=kept / Path(first_tls.cert_file).name,
                                  key_file=kept / Path(first_tls.key_file).name)
    new_tls = pki.issue("echo", ttl_h=5.0, overwrite=True, now=_later())  # a later notBefore
    old, new = server(old_tls, "e2"), server(new_tls, "e3")
    await asyncio.wait_for(old.start(), 10)
    try:
        await asyncio.wait_for(new.start(), 10)
        try:
            assert gauges()[1] == new_tls.read().not_after  # the latest published
        finally:
            await asyncio.wait_for(new.drain(), 10)
        assert gauges()[1] == old_tls.read().not_after  # the one still served
    finally:
        await asyncio.wait_for(old.drain(), 10)
    assert gauges() == (None, None)


# An mTLS server of "echo" (certificates from meshkit's own CA helpers) started, called once
# and drained, in a child process (prometheus-client's multiprocess mode is process-wide);
# prints DRAIN returned once drain() returned and STOPPED once the server reports itself
# stopped, then the application's own exposition of the multiprocess directory.
_TLS_SERVE_AND_DRAIN = """
import asyncio, sys, tempfile
from pathlib import Path
import meshkit
from meshkit.auth import TLSOptions, init_ca_dir, issue_into_dir
from meshkit.discovery import LocalOptions, LocalRegistry
from tests.support.echo import add_echo, method

def tls(files):
    return TLSOptions(ca_file=files.ca_file, cert_file=files.cert_file,
                      key_file=files.key_file)

async def main():
    d = Path(tempfile.mkdtemp())
    init_ca_dir(d / "pki", trust_domain="meshkit.test", ttl_days=2)
    srv_files = issue_into_dir(d / "pki", "echo", ttl_h=1.0, dns=("localhost",),
                               ips=("127.0.0.1",))
    cli_files = issue_into_dir(d / "pki", "client", ttl_h=1.0)
    reg = LocalRegistry(LocalOptions(path=d / "reg", ttl_s=30.0, poll_interval_s=0.05))
    srv = meshkit.MeshServer("echo", [add_echo("e1", registered=True)], registry=reg,
                             options=meshkit.ServeOptions(tls=tls(srv_files), instance_id="e1",
                                                          drain_delay_s=0, grace_s=1.0))
    await srv.start()
    async with meshkit.dial("echo", registry=reg,
                            options=meshkit.DialOptions(tls=tls(cli_files))) as ch:
        assert await ch.unary_unary(method("Unary"))(b"hi", timeout=5) == b"e1|hi"
    try:
        await asyncio.wait_for(srv.drain(), 10)
        print("DRAIN returned")
    except Exception as exc:
        print("DRAIN raised", type(exc).__name__, exc)
    try:
        await asyncio.wait_for(srv._stopped.wait(), 3)
        print("STOPPED")
    except asyncio.TimeoutError:
        print("NOT STOPPED")
    await reg.close()

asyncio.run(main())
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
app = CollectorRegistry()
multiprocess.MultiProcessCollector(app)  # the application's own /metrics
print(generate_latest(app).decode())
"""


def _multiprocess_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run :data:`_TLS_SERVE_AND_DRAIN` with ``PROMETHEUS_MULTIPROC_DIR`` set (as under
    gunicorn), Python options ``args``; it must exit 0."""
    import os

    mp = tmp_path / "prom"
    mp.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "MESHKIT_", "PROMETHEUS_", "PYTHONASYNCIO"))}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(mp)
    proc = subprocess.run([sys.executable, *args, "-c", _TLS_SERVE_AND_DRAIN],
                          capture_output=True, text=True, timeout=60, check=False, cwd=_REPO,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_multiprocess_mode_keeps_no_certificate_gauges_of_a_stopped_server(
        tmp_path: Path) -> None:
    """Under prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set, as
    under gunicorn, the application exposing ``MultiProcessCollector`` over that
    directory) meshkit's certificate gauges were prometheus-client ``Gauge`` s, written to
    the shared directory, where withdrawing them when the server stops is impossible
    (prometheus-client only warns "Removal of labels has not been implemented in
    multi-process mode yet"): the application's exposition reported
    ``meshkit_certificate_expiry_timestamp_seconds{service="echo"}`` for a server that
    had stopped (and for every dead worker, for ever), and
    ``MeshkitCertificateExpiringSoon`` fired for a certificate nothing served with. They
    are now rendered by meshkit's collector at scrape from the live servers, like its
    other families: nothing in the directory, nothing to remove, no warning."""
    proc = _multiprocess_run(tmp_path)
    out = proc.stdout.splitlines()
    assert "STOPPED" in out, proc.stdout + proc.stderr[-2000:]
    stale = [ln for ln in out if ln.startswith("meshkit_certificate_")]
    assert not stale, f"a stopped server's certificate gauges in the directory: {stale}"
    assert "Removal of labels has not been implemented" not in proc.stderr, proc.stderr


def test_a_drain_under_warnings_as_errors_in_multiprocess_mode_ends_stopped(
        tmp_path: Path) -> None:
    """In multiprocess mode the withdrawal of the certificate gauges at drain made
    prometheus-client issue a ``UserWarning``; with warnings turned into errors
    (``python -W error``, pytest's ``filterwarnings = error``) ``drain()`` raised it, and
    since the withdrawal ran first in the drain's ``finally``, the rest never ran: the
    server was never marked stopped (its waiters waited for ever), the "stopped" line and
    the access log's last batch were not written, its final counters not recorded. There
    is no withdrawal any more, and a failing end-of-drain step is logged instead of
    skipping the others (tests/test_server.py)."""
    proc = _multiprocess_run(tmp_path, "-W", "error::UserWarning")
    out = proc.stdout.splitlines()
    assert "DRAIN returned" in out and "STOPPED" in out, (out, proc.stderr[-2000:])


# -- broken certificate files for a long time: one warning, reminders, one recovery line ----

def _break(path: Path) -> bytes:
    """Overwrite ``path`` with something that is no PEM; its old content."""
    data = path.read_bytes()
    path.write_bytes(b"not a certificate\n")
    return data


def _restore(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.utime(path)


def _events(logs: list[MutableMapping[str, Any]], level: str, needle: str) -> list[str]:
    return [e["event"] for e in logs if e.get("log_level") == level and needle in e["event"]]


@contextlib.asynccontextmanager
async def _renewd(tmp_path: Path, tls: Any,
                  ) -> AsyncIterator[tuple[meshkit.MeshServer, LocalRegistry]]:
    """A started ``renewd`` MeshServer with ``tls`` answering ``Whoami``, registered in a
    local registry under ``tmp_path`` (2 s TTL, 0.05 s polls): (server, registry), both
    drained and closed on the way out."""
    def add(_s: object, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((auth_handler(),))

    reg = LocalRegistry(meshkit.discovery.LocalOptions(path=tmp_path / "reg", ttl_s=2.0,
                                                       poll_interval_s=0.05))
    srv = meshkit.MeshServer("renewd", [(add, None)], registry=reg, options=meshkit.ServeOptions(
        tls=tls, drain_delay_s=0, grace_s=0.5, admin=None))
    try:
        await srv.start()
        yield srv, reg
    finally:
        await srv.drain()
        await reg.close()


async def test_dial_logs_broken_certificate_files_once_and_their_recovery(
        pki: Pki, tmp_path: Path) -> None:
    """A client ``dial()``s over mTLS (``DialOptions(tls=...)``, files re-read every
    ``reload_interval_s``, 5 s by default) and its workload certificate and key files turn
    unreadable for a long time (a Secret unmounted, a renewal agent that crashed after
    writing a bad pair), then are put back.

    Before: ``"client certificate reload skipped"`` at WARNING at every reload interval for
    as long as it lasted (49 in 2.5 s at 0.05 s; 720 an hour per dial() at 5 s) and no line
    when the files read again. Now: one warning when they break (reminders at most every
    60 s, with the count of failed reads), and one info line ``"certificate files readable
    again"`` when they read again. Calls keep working on the current credentials. (Broken
    here for 1 s and 20 calls at least: about 20 reload intervals, against the bound of 3
    warnings.)"""
    stls = pki.issue("renewd")
    ctls = dataclasses.replace(pki.issue("callerd"), reload_interval_s=0.05)
    async with (asyncio.timeout(40), _renewd(tmp_path, stls) as (_srv, reg),
                meshkit.dial("renewd", registry=reg,
                             options=meshkit.DialOptions(tls=ctls)) as ch):
        call = ch.unary_unary(f"/{SERVICE}/Whoami", _registered_method=True)
        await call(b"", timeout=5)
        files = [Path(ctls.cert_file), Path(ctls.key_file)]
        with capture_logs() as logs:
            saved = {f: _break(f) for f in files}
            loop = asyncio.get_running_loop()
            end, calls = loop.time() + 1.0, 0
            while loop.time() < end or calls < 20:
                await call(b"", timeout=5)  # still served on the old credentials
                calls += 1
                await asyncio.sleep(0.05)
            for f, data in saved.items():
                _restore(f, data)
            await until(lambda: bool(_events(logs, "info", "readable again")),
                        what="the recovery line")
            await call(b"", timeout=5)
    warnings = _events(logs, "warning", "certificate reload")
    assert 1 <= len(warnings) <= 3, warnings
    assert _events(logs, "info", "readable again") == ["certificate files readable again"]


async def test_server_logs_a_broken_ca_bundle_once_and_its_recovery(
        pki: Pki, tmp_path: Path) -> None:
    """A ``MeshServer`` serves mTLS (``ServeOptions(tls=...)``) and its mounted CA bundle
    turns unreadable for a long time (a bad ConfigMap/Secret update) while clients keep
    opening connections, then the bundle is put back.

    Before: two warnings per reload interval for as long as it lasted, from the handshake
    reloader ("certificate reload skipped") and the peer verifier's CA poll ("CA bundle
    reload skipped") (~90 in 3 s at 0.1 s; 1,440 an hour at 5 s), and no line when the
    bundle read again. Now: one warning from each when the bundle breaks (reminders at most
    every 60 s), and one info line each when it reads again. The server keeps serving with
    the bundle it had. (Broken here for 1.2 s and 12 connections at least: about 12 reload
    intervals with handshakes, against the bound of 4 warnings.)"""
    stls = dataclasses.replace(pki.issue("renewd"), reload_interval_s=0.1)
    ctls = pki.issue("callerd")
    async with asyncio.timeout(40), _renewd(tmp_path, stls) as (srv, _reg):
        assert srv.instance is not None
        target = f"127.0.0.1:{srv.instance.port}"
        creds, copts = ctls.channel_credentials(), ctls.channel_options("renewd")
        ca = Path(stls.ca_file)
        connections = 0
        with capture_logs() as logs:
            saved = _break(ca)
            loop = asyncio.get_running_loop()
            end = loop.time() + 1.2
            while loop.time() < end or connections < 12:
                async with grpc.aio.secure_channel(target, creds, options=copts) as ch:
                    await ch.unary_unary(f"/{SERVICE}/Whoami")(b"", timeout=5)
                connections += 1
                await asyncio.sleep(0.05)
            _restore(ca, saved)
            await asyncio.sleep(0.2)
            for _ in range(2):  # a new handshake and a call after the interval
                async with grpc.aio.secure_channel(target, creds, options=copts) as ch:
                    await ch.unary_unary(f"/{SERVICE}/Whoami")(b"", timeout=5)
                await asyncio.sleep(0.2)
    warnings = _events(logs, "warning", "reload skipped")
    assert connections >= 10, connections
    assert sorted(set(warnings)) == ["CA bundle reload skipped", "certificate reload skipped"]
    assert len(warnings) <= 4, warnings
    assert sorted(_events(logs, "info", "readable again")) == [
        "CA bundle readable again", "certificate files readable again"]
