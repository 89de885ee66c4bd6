"""deploy/prometheus/ against a real Prometheus and Alertmanager (Debian's packages, from
scripts/install-ops.sh) scraping a running ecom stack found through the registry by
``meshkit prometheus-targets --watch``.

The test renders the deploy files with test timings (1 s scrape and evaluation, ``for:``
1 s, private ports, the test's targets file) and checks: promtool/amtool accept the deploy
files and the rendered config; every target is up; every metric that a recording or alert
rule reads is served by the live stack and scraped by Prometheus; SIGKILLing an instance
fires MeshkitInstanceDown into Alertmanager; every query of deploy/grafana's dashboard
returns data from that Prometheus. Without the binaries it skips, and fails under CI=true.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

import meshkit
from examples.ecom import demo, mesh
from examples.ecom.proto import order_pb2_grpc, user_pb2_grpc
from meshkit.discovery import registry_from_uri
from tests.ops import grafana
from tests.ops.tools import binary
from tests.support.wait import until

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "prometheus"
RULE_FILES = sorted((DEPLOY / "rules").glob("*.yml"))


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rule_exprs() -> dict[str, str]:
    """Every rule's name (record or alert) -> its expression."""
    out = {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out[rule.get("record") or rule["alert"]] = rule["expr"]
    return out


def render(tmp: Path, targets: Path, am_port: int) -> Path:
    """The deploy config with test timings, private ports and ``for: 1s`` rules."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s",
                        "scrape_timeout": "1s"}
    (tmp / "rules").mkdir()
    config["rule_files"] = []
    for path in RULE_FILES:
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = "1s"
        out = tmp / "rules" / path.name
        out.write_text(yaml.safe_dump(doc))
        config["rule_files"].append(str(out))
    config["alerting"]["alertmanagers"][0]["static_configs"] = [
        {"targets": [f"127.0.0.1:{am_port}"]}]
    sd = config["scrape_configs"][0]["file_sd_configs"][0]
    sd["files"] = [str(targets)]
    sd["refresh_interval"] = "1s"
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def promtool_test(tmp: Path, tests: list[dict[str, Any]]) -> tuple[int, str]:
    """Prometheus' own rule unit tests (``promtool test rules``, evaluated every minute)
    on the deploy rule files as shipped, with ``tests``; returns (exit status, output)."""
    doc = {"rule_files": [str(p) for p in RULE_FILES], "evaluation_interval": "1m",
           "tests": tests}
    path = tmp / "unit.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = subprocess.run([binary("promtool"), "test", "rules", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def humanize_duration(seconds: float) -> str:
    """Prometheus' ``humanizeDuration`` template function, for whole seconds >= 60."""
    s = int(seconds)
    days, hours, minutes, secs = s // 86400, s // 3600 % 24, s // 60 % 60, s % 60
    if days:
        return f"{days}d {hours}h {minutes}m {secs}s"
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s"


def exposition(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric ``name`` in a Prometheus text exposition."""
    out = []
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, labels = head.partition("{")
        if metric != name:
            continue
        pairs = {}
        for part in labels.rstrip("}").split(","):
            if part:
                k, _, v = part.partition("=")
                pairs[k] = v.strip('"')
        out.append((pairs, float(value)))
    return out


async def scrape(admin_url: str) -> str:
    """The text of ``admin_url``/metrics."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http, \
            http.get(admin_url + "/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


def check(*cmd: str) -> None:
    """Run a checker; its output is the assertion message."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout}{proc.stderr}"


class Processes:
    """Child processes (output each in its log), all terminated and reaped together at
    :meth:`close`, so that their shutdowns overlap."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, *cmd: str, log: Path) -> asyncio.subprocess.Process:
        """Start ``cmd`` with stdout and stderr in ``log``."""
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=out, stderr=out)
        self.procs.append(proc)
        return proc

    async def close(self) -> None:
        """SIGTERM every one still running, then reap them all (SIGKILL after 10 s)."""
        async def reap(proc: asyncio.subprocess.Process) -> None:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()

        for proc in self.procs:
            if proc.returncode is None:
                proc.terminate()
        await asyncio.gather(*(reap(p) for p in self.procs))


async def get_json(http: aiohttp.ClientSession, url: str, **params: str) -> Any:
    """GET ``url`` as JSON (``None`` when it does not answer yet)."""
    try:
        async with http.get(url, params=params) as resp:
            return await resp.json() if resp.status == 200 else None
    except aiohttp.ClientError:
        return None


async def drive(registry_uri: str, cert_dir: Path) -> None:
    """A small workload through dial(), so every metric family has series."""
    registry = registry_from_uri(registry_uri)
    tls = demo.edge_tls(cert_dir)
    try:
        async with meshkit.dial("userd", registry=registry,
                                options=dataclasses.replace(mesh.USERS, tls=tls)) as uch, \
                meshkit.dial("orderd", registry=registry,
                             options=dataclasses.replace(mesh.ORDERS, tls=tls)) as och:
            await demo.run_workload(user_pb2_grpc.UserServiceStub(uch),
                                    order_pb2_grpc.OrderServiceStub(och),
                                    demo.Workload(budget=16), 2, 5.0)
    finally:
        await registry.close()


def test_deploy_files_pass_promtool_and_amtool() -> None:
    """The deploy files as shipped: rules, config and the Alertmanager config are valid."""
    check(binary("promtool"), "check", "rules", *map(str, RULE_FILES))
    check(binary("promtool"), "check", "config", str(DEPLOY / "prometheus.yml"))
    check(binary("amtool"), "check-config", str(DEPLOY / "alertmanager.yml"))


async def test_prometheus_scrapes_the_mesh_and_alerts_on_a_killed_instance(
        tmp_path: Path) -> None:
    """Both instances are up in Prometheus, every metric the rules read is live, and a
    SIGKILLed orderd fires MeshkitInstanceDown into Alertmanager within seconds."""
    prometheus, alertmanager = binary("prometheus"), binary("prometheus-alertmanager")
    exprs = rule_exprs()
    recorded = {name for name in exprs if ":" in name}
    read = set().union(*map(grafana.names_in, exprs.values()))
    raw = {n for n in read if n.startswith(("grpc_", "meshkit_"))}
    assert {n for n in read if ":" in n} <= recorded  # every recorded series is defined
    assert len(raw) >= 8, raw

    registry_uri = f"local://{tmp_path / 'registry'}?ttl_s=1&poll_interval_s=0.1"
    stack = demo.Stack(tmp_path, registry_uri, None, demo.make_certificates(tmp_path / "certs"))
    targets = tmp_path / "targets.json"
    am_port, prom_port = free_port(), free_port()
    config = render(tmp_path, targets, am_port)
    check(binary("promtool"), "check", "config", str(config))
    am_url, prom_url = f"http://127.0.0.1:{am_port}", f"http://127.0.0.1:{prom_port}"
    children = Processes()
    try:
        # Alertmanager and Prometheus boot while the stack starts and serves the workload:
        # Prometheus has no target to scrape until the watcher below writes the file.
        await children.start(alertmanager, f"--config.file={DEPLOY / 'alertmanager.yml'}",
                             f"--storage.path={tmp_path / 'am'}",
                             f"--web.listen-address=127.0.0.1:{am_port}",
                             "--cluster.listen-address=", log=tmp_path / "am.log")
        await children.start(prometheus, f"--config.file={config}",
                             f"--storage.tsdb.path={tmp_path / 'prom'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}",
                             log=tmp_path / "prometheus.log")
        await asyncio.gather(stack.start("userd", "userd-1"), stack.start("orderd", "orderd-1"))
        await drive(registry_uri, stack.cert_dir)  # type: ignore[arg-type]
        await children.start(sys.executable, "-m", "meshkit.cli", "prometheus-targets",
                             "--registry", registry_uri, "--out", str(targets), "--watch",
                             "--interval-s", "0.2", log=tmp_path / "targets.log")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:

            async def all_up() -> bool:
                body = await get_json(http, f"{prom_url}/api/v1/targets", state="active")
                active = body["data"]["activeTargets"] if body else []
                return len(active) == 2 and all(t["health"] == "up" for t in active)

            await until(all_up, timeout_s=30, interval_s=0.2, what="both targets up")
            body = await get_json(http, f"{prom_url}/api/v1/targets", state="active")
            assert sorted(t["labels"]["mesh_instance"] for t in body["data"]["activeTargets"]) \
                == ["orderd-1", "userd-1"]

            # Every metric a rule reads is served by the stack and scraped by Prometheus.
            served: set[str] = set()
            for t in body["data"]["activeTargets"]:
                async with http.get(t["scrapeUrl"]) as resp:
                    text = await resp.text()
                served |= {line.split("{")[0].split()[0] for line in text.splitlines()
                           if line and not line.startswith("#")}
            assert raw <= served, f"rules read metrics the stack does not serve: {raw - served}"
            query = f'count by (__name__) ({{__name__=~"{"|".join(sorted(raw))}"}})'
            result = (await get_json(http, f"{prom_url}/api/v1/query", query=query))
            scraped = {r["metric"]["__name__"] for r in result["data"]["result"]}
            assert scraped == raw, raw - scraped

            # deploy/grafana: traffic while Prometheus scrapes (so rates are > 0), then
            # every panel query returns data and reads only metrics the stack serves.
            await drive(registry_uri, stack.cert_dir)  # type: ignore[arg-type]
            await grafana.check_live(http, prom_url, served, {"orderd", "userd"})

            stack.kill("orderd-1")

            async def fired() -> bool:
                alerts = await get_json(http, f"{am_url}/api/v2/alerts") or []
                return any(a["labels"].get("alertname") == "MeshkitInstanceDown"
                           and a["labels"].get("mesh_instance") == "orderd-1"
                           and a["status"]["state"] == "active" for a in alerts)

            await until(fired, timeout_s=30, interval_s=0.2,
                        what="MeshkitInstanceDown for orderd-1 in Alertmanager")
            alerts = await get_json(http, f"{am_url}/api/v2/alerts")
            down = {a["labels"].get("mesh_instance") for a in alerts
                    if a["labels"].get("alertname") == "MeshkitInstanceDown"}
            assert down == {"orderd-1"}, alerts
            assert json.loads(targets.read_text())  # the killed one is still a target
    finally:
        await asyncio.gather(children.close(), stack.stop_all())


# -- MeshkitHighLatencyP99: the latency of unary calls, not the lifetime of streams --------

async def test_latency_alert_does_not_fire_on_a_healthy_long_lived_stream(
        tmp_path: Path) -> None:
    """A healthy mesh: unary calls answered in microseconds, and a gRPC client with
    client-side health checking (grpc-go/grpc-java ``healthCheckConfig``) holding a
    ``grpc.health.v1.Health/Watch`` stream open until it closes its channel.

    ``grpc_server_handling_seconds`` records a stream's whole life (1 s here, minutes in
    production). The p99 recording rule took every method, streams included, so
    ``MeshkitHighLatencyP99`` (> 0.5 s for 10m) fired for ``Health/Watch`` (and any stream
    living longer than 0.5 s) while nothing was slow. A stream's duration is its lifetime,
    not a latency: the latency rules select ``grpc_type="unary"`` (as go-grpc-prometheus'
    alerts do). Shown with ``promtool test rules`` on the shipped rule files, fed the
    bucket counts the live server exported for one such stream and for its unary calls,
    repeated every minute."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from meshkit.discovery import LocalOptions, LocalRegistry
    from tests.support.echo import mesh_echo, method

    binary("promtool")
    reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=1.0, poll_interval_s=0.05))
    async with mesh_echo("streamd", "s1", reg) as srv:
        address, admin = srv.stats().address, srv.stats().admin
        assert address and admin
        # the process's registry may hold other servers' calls (earlier tests of this
        # worker): this test's are what it adds from now on
        before = await scrape(admin)
        async with grpc.aio.insecure_channel(address) as ch:
            for _ in range(20):
                await ch.unary_unary(method("Unary"))(b"x", timeout=5)
            watch = health_pb2_grpc.HealthStub(ch).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=30)
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            await asyncio.sleep(1.5)  # the stream's lifetime: well above 0.5 s
            watch.cancel()  # the client closes its channel

        def count(text: str, grpc_method: str) -> float:
            return sum(v for labels, v in exposition(text, "grpc_server_handling_seconds_count")
                       if labels.get("grpc_method") == grpc_method) - sum(
                v for labels, v in exposition(before, "grpc_server_handling_seconds_count")
                if labels.get("grpc_method") == grpc_method)

        text = ""

        async def recorded() -> bool:
            nonlocal text
            text = await scrape(admin)
            return count(text, "Watch") >= 1 and count(text, "Unary") >= 20

        await until(recorded, timeout_s=20, interval_s=0.1, what="the Watch stream counted")

    earlier = {tuple(sorted(labels.items())): v for labels, v in exposition(
        before, "grpc_server_handling_seconds_bucket")}
    buckets = [(labels, v - earlier.get(tuple(sorted(labels.items())), 0.0))
               for labels, v in exposition(text, "grpc_server_handling_seconds_bucket")
               if labels.get("grpc_method") in ("Watch", "Unary")]

    def series_of(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((k, v) for k, v in labels.items() if k != "le"))

    # this test's series: those that grew (an earlier test of this worker may have left a
    # series of the same method with other labels, unchanged since `before`)
    grown = {series_of(labels) for labels, v in buckets if labels["le"] == "+Inf" and v > 0}
    buckets = [(labels, v) for labels, v in buckets if series_of(labels) in grown]
    watch_slow = [v for labels, v in buckets
                  if labels["grpc_method"] == "Watch" and labels["le"] == "0.5"]
    assert watch_slow == [0.0], buckets  # the stream is counted above 0.5 s, as measured
    series = []
    for labels, v in buckets:
        sel = ",".join(f'{k}="{labels[k]}"' for k in sorted(labels))
        # every minute one such stream ends, and the unary calls go on as measured
        series.append({"series": f'grpc_server_handling_seconds_bucket{{job="meshkit",'
                                 f'mesh_service="streamd",mesh_instance="s1",{sel}}}',
                       "values": f"0+{v:.0f}x30"})
    rc, out = promtool_test(tmp_path, [{
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [{"eval_time": "20m", "alertname": "MeshkitHighLatencyP99",
                             "exp_alerts": []}],
    }])
    assert rc == 0, ("MeshkitHighLatencyP99 fires on a mesh whose calls all answer in "
                     f"microseconds, for a health Watch stream's lifetime:\n{out}")


def test_latency_alert_fires_on_slow_unary_calls(tmp_path: Path) -> None:
    """The unary-only latency rule still sees slow unary calls: every call of a method
    taking 0.5..1 s makes ``MeshkitHighLatencyP99`` fire after its ``for: 10m``, with the
    p99 (interpolated in the 0.5..1 s bucket) in the summary."""
    bounds = ["0.1", "0.5", "1", "+Inf"]
    per_minute = {"0.1": 0, "0.5": 0, "1": 60, "+Inf": 60}  # 60 calls a minute, 0.5..1 s
    series = [{"series": 'grpc_server_handling_seconds_bucket{job="meshkit",'
                         'mesh_service="slowd",mesh_instance="w1",grpc_type="unary",'
                         f'grpc_service="x.Slow",grpc_method="Get",le="{le}"}}',
               "values": f"0+{per_minute[le]}x40"} for le in bounds]
    labels = {"severity": "warning", "mesh_service": "slowd", "grpc_service": "x.Slow",
              "grpc_method": "Get"}
    rc, out = promtool_test(tmp_path, [{
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": "MeshkitHighLatencyP99", "exp_alerts": []},
            {"eval_time": "30m", "alertname": "MeshkitHighLatencyP99",
             "exp_alerts": [{"exp_labels": labels, "exp_annotations": {
                 "summary": "x.Slow/Get p99 is 995ms"}}]}],
    }])
    assert rc == 0, out


# -- MeshkitCertificateExpiringSoon: renewal that did not happen --------------------------

_CERT_LABELS = 'job="meshkit",mesh_service="certd",mesh_instance="c1",service="certd"'


async def test_certificate_alert_does_not_fire_on_a_freshly_issued_default_certificate(
        tmp_path: Path) -> None:
    """An operator follows the README: ``meshkit certs init``, ``meshkit certs issue
    certd`` with the default lifetime (24 h, "short-lived on purpose"), and serves with it.

    ``MeshkitCertificateExpiringSoon`` (critical) was ``expiry - time() < 86400`` with no
    ``for``: with the lifetime the tool issues by default it was true from the first
    evaluation, for the whole life of every certificate, renewed or not, though its
    comment says it "fires when renewal did not happen". Shown with ``promtool test
    rules`` on the shipped rule files, fed what the live server exports (its notAfter, and
    its notBefore, which /metrics now carries), evaluated 5 minutes after issue."""
    from meshkit.auth import tls_from_dir
    from meshkit.auth.cli import main as certs_main
    from meshkit.discovery import LocalOptions, LocalRegistry
    from tests.support.echo import add_echo

    binary("promtool")
    certs = tmp_path / "certs"
    assert certs_main(["certs", "init", "--dir", str(certs)]) == 0
    assert certs_main(["certs", "issue", "certd", "--dir", str(certs)]) == 0
    reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=1.0, poll_interval_s=0.05))
    srv = meshkit.MeshServer(
        "certd", [add_echo("c1")], registry=reg,
        options=meshkit.ServeOptions(tls=tls_from_dir(certs, "certd"), instance_id="c1",
                                     drain_delay_s=0.0, grace_s=0.5))
    await srv.start()
    try:
        admin = srv.stats().admin
        assert admin
        text = await scrape(admin)
    finally:
        await srv.drain()
        await reg.close()
    now = time.time()

    def exported(name: str) -> list[float]:
        return [v for labels, v in exposition(text, name) if labels.get("service") == "certd"]

    [not_after] = exported("meshkit_certificate_expiry_timestamp_seconds")
    assert 86000 < not_after - now <= 86400, not_after - now  # the default: 24 h from now
    # Prometheus' clock starts at 0 in a rule unit test: each series holds its time
    # relative to now
    series = [{"series": f"meshkit_certificate_expiry_timestamp_seconds{{{_CERT_LABELS}}}",
               "values": f"{not_after - now:.0f}+0x30"}]
    not_before = exported("meshkit_certificate_not_before_timestamp_seconds")
    series += [{"series": f"meshkit_certificate_not_before_timestamp_seconds{{{_CERT_LABELS}}}",
                "values": f"{v - now:.0f}+0x30"} for v in not_before]
    rc, out = promtool_test(tmp_path, [{
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [{"eval_time": "5m", "alertname": "MeshkitCertificateExpiringSoon",
                             "exp_alerts": []}],
    }])
    assert rc == 0, ("MeshkitCertificateExpiringSoon (critical) fires on a certificate "
                     f"issued 5 minutes ago with meshkit's default lifetime:\n{out}")
    [nb] = not_before  # notBefore is on /metrics beside notAfter
    assert now - 3600 <= nb <= now + 60, nb - now


@pytest.mark.parametrize("lifetime_s", [2 * 3600, 86400, 90 * 86400],
                         ids=["2h", "24h", "90d"])
def test_certificate_alert_fires_once_two_thirds_of_the_lifetime_passed_unrenewed(
        tmp_path: Path, lifetime_s: int) -> None:
    """``MeshkitCertificateExpiringSoon`` is silent on a fresh certificate and at 60 % of
    its life, and fires at 80 % (10 minutes past two thirds, cert-manager's renewal
    point, plus the rule's ``for: 10m`` with margin), for short and long lifetimes alike;
    the summary says the time left."""
    eval_s = 20 * 60  # evaluated 20 minutes into each test

    def case(age_at_eval_s: float, expect: bool) -> dict[str, Any]:
        age0 = age_at_eval_s - eval_s  # the certificate's age at t=0
        assert age0 >= 0
        not_before, not_after = -age0, lifetime_s - age0  # relative to t=0
        alerts = []
        if expect:
            left_s = lifetime_s - age_at_eval_s
            alerts = [{"exp_labels": {"severity": "critical", "mesh_service": "certd",
                                      "mesh_instance": "c1", "service": "certd"},
                       "exp_annotations": {"summary": "c1's workload certificate expires in "
                                                      + humanize_duration(left_s)}}]
        return {
            "interval": "1m",
            "input_series": [
                {"series": f"meshkit_certificate_expiry_timestamp_seconds{{{_CERT_LABELS}}}",
                 "values": f"{not_after:.0f}+0x40"},
                {"series": "meshkit_certificate_not_before_timestamp_seconds"
                           f"{{{_CERT_LABELS}}}", "values": f"{not_before:.0f}+0x40"}],
            "alert_rule_test": [{"eval_time": "20m",
                                 "alertname": "MeshkitCertificateExpiringSoon",
                                 "exp_alerts": alerts}],
        }

    rc, out = promtool_test(tmp_path, [
        case(eval_s + 300, False),  # issued 5 minutes before t=0
        case(0.6 * lifetime_s, False),
        case(0.8 * lifetime_s, True),
    ])
    assert rc == 0, out


def test_certificate_alert_without_not_before_falls_back_to_8_hours_left(
        tmp_path: Path) -> None:
    """A notAfter published without notBefore (``set_certificate_expiry`` called without
    ``not_before_unix_s``): the alert fires with less than 8 h left (a third of the default
    24 h lifetime) for 10 minutes, not with 20 h left."""
    expiry = f"meshkit_certificate_expiry_timestamp_seconds{{{_CERT_LABELS}}}"
    rc, out = promtool_test(tmp_path, [
        {"interval": "1m", "input_series": [{"series": expiry, "values": "72000+0x40"}],
         "alert_rule_test": [{"eval_time": "20m", "alertname": "MeshkitCertificateExpiringSoon",
                              "exp_alerts": []}]},
        {"interval": "1m", "input_series": [{"series": expiry, "values": "25200+0x40"}],
         "alert_rule_test": [{"eval_time": "20m", "alertname": "MeshkitCertificateExpiringSoon",
                              "exp_alerts": [{
                                  "exp_labels": {"severity": "critical",
                                                 "mesh_service": "certd",
                                                 "mesh_instance": "c1", "service": "certd"},
                                  "exp_annotations": {
                                      "summary": "c1's workload certificate expires in "
                                                 + humanize_duration(25200 - 1200)}}]}]},
    ])
    assert rc == 0, out


def test_registry_alert_fires_for_a_server_whose_registration_fails(tmp_path: Path) -> None:
    """``MeshkitRegistryUnhealthy`` covers a serving process's own registry
    (``meshkit_registry_healthy{service=...}``, what a server exports while its heartbeats
    or keep-alives fail) as well as a channel's (``target=...``): 0 for a minute fires."""
    labels = 'job="meshkit",mesh_service="regd",mesh_instance="r1"'
    rc, out = promtool_test(tmp_path, [{
        "interval": "1m",
        "input_series": [
            {"series": f'meshkit_registry_healthy{{{labels},service="regd"}}',
             "values": "1 1 0 0 0 0 0"}],
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "MeshkitRegistryUnhealthy", "exp_alerts": []},
            {"eval_time": "4m", "alertname": "MeshkitRegistryUnhealthy", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "mesh_service": "regd",
                               "mesh_instance": "r1"},
                "exp_annotations": {
                    "summary": "r1 cannot read or write the service registry"}}]}],
    }])
    assert rc == 0, out
