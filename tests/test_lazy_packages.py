"""meshkit.observability and meshkit.auth import their names on first read (PEP 562): what
their eager imports gave must still hold: the names ``import *`` and ``dir()`` give, a clear
error for a name that is not there, ``importlib.reload``, pickling of their objects,
first reads from several threads at once, and the log lines written at the exit of a
program that configures logging and tracing. Each check runs in a fresh interpreter
(the first read is the subject)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(120)

# __all__ of both packages as their eager imports had it (68a7551), the SDK installed
OBSERVABILITY_ALL = sorted([
    "DURATION_BUCKETS_S", "AdminOptions", "AdminServer", "AttemptSpanInterceptor",
    "BufferedLineWriter", "Handler", "Implementation", "MeshCollector", "PeerIdentityFunc",
    "RpcMetrics", "TelemetryClientInterceptor", "TelemetryOptions",
    "TelemetryServerInterceptor", "access_logger", "add_trace_context",
    "attempt_interceptors", "client_interceptors", "configure_logging", "configure_tracing",
    "default_registry", "ended", "extract_context", "flush_logs", "inject_context",
    "is_sensitive_key", "live_channel_stats", "live_server_stats",
    "otel_client_interceptors", "otel_server_interceptor", "redact_secrets", "rpc_metrics",
    "server_interceptors", "set_certificate_expiry", "tracing_from_env", "track",
    "JsonLinesSpanExporter", "load_spans", "render_trace"])
AUTH_ALL = sorted([
    "AuthError", "AuthOptions", "AuthzInterceptor", "AuthzPolicy", "CertificateError",
    "CertificateInfo", "ChannelCredentialsReloader", "Claims", "DEFAULT_TRUST_DOMAIN",
    "Decision", "IdentityMatcher", "InvalidTokenError", "IssuerOptions", "JWKSClient",
    "JWKSClientOptions", "JWKSError", "JWKSServer", "JWTAuthInterceptor", "JWTAuthOptions",
    "JWTVerifier", "KeyExistsError", "KeySet", "KeySource", "PeerIdentity",
    "PeerIdentityInterceptor", "PeerVerifier", "PermissionDeniedError", "Rule",
    "SigningKey", "SpiffeId", "TLSMaterial", "TLSOptions", "TokenForwarder", "TokenIssuer",
    "TokenVerifier", "UnauthenticatedError", "VerificationKey", "VerifiedTokenCache",
    "VerifierOptions", "WorkloadFiles", "check_server_identity", "create_ca",
    "current_claims", "current_peer", "default_peer_verifier", "describe_certificate",
    "extract_bearer", "identity_dns_name", "init_ca_dir", "issue_into_dir",
    "issue_workload", "load_certificate", "load_private_key", "load_workload_key",
    "parse_jwks", "tls_from_dir", "workload_id", "write_certificate", "write_private_key"])


def run_python(code: str, *, env: dict[str, str] | None = None,
               timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter from the checkout; its stdout, stderr and status."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full.pop("MESHKIT_TRACE_FILE", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=timeout_s, check=False)


def test_import_star_and_dir_give_the_names_the_eager_packages_exported() -> None:
    """``from ... import *`` binds exactly the names __all__ had before, each the object
    its submodule defines; ``dir()`` lists them all."""
    done = run_python("""
        import json
        obs, auth = {}, {}
        exec("from meshkit.observability import *", obs)
        exec("from meshkit.auth import *", auth)
        import meshkit.observability as o, meshkit.auth as a
        from meshkit.observability import _logging
        from meshkit.auth import _tls
        assert obs["configure_logging"] is _logging.configure_logging
        assert auth["TLSOptions"] is _tls.TLSOptions
        print(json.dumps([sorted(k for k in obs if k != "__builtins__"),
                          sorted(k for k in auth if k != "__builtins__"),
                          sorted(o.__all__), sorted(a.__all__),
                          sorted(set(o.__all__) - set(dir(o))),
                          sorted(set(a.__all__) - set(dir(a)))]))
    """)
    assert done.returncode == 0, done.stderr

    star_obs, star_auth, all_obs, all_auth, undir_obs, undir_auth = json.loads(done.stdout)
    assert star_obs == all_obs == OBSERVABILITY_ALL
    assert star_auth == all_auth == AUTH_ALL
    assert undir_obs == [] and undir_auth == []


def test_a_missing_name_reload_and_pickling() -> None:
    """A name neither package has: AttributeError / ImportError naming it; reload keeps the
    names; objects of their modules pickle and copy (by their defining module)."""
    done = run_python("""
        import copy, importlib, pickle
        import meshkit.observability as o, meshkit.auth as a
        for mod in (o, a):
            try:
                getattr(mod, "no_such_name")
            except AttributeError as exc:
                assert "no_such_name" in str(exc) and mod.__name__ in str(exc), exc
            else:
                raise AssertionError("no AttributeError")
        try:
            from meshkit.observability import no_such_name
        except ImportError as exc:
            assert "no_such_name" in str(exc), exc
        else:
            raise AssertionError("no ImportError")
        opts = o.TelemetryOptions()
        assert pickle.loads(pickle.dumps(o.TelemetryOptions)) is o.TelemetryOptions
        assert type(copy.deepcopy(opts)) is o.TelemetryOptions
        sid = a.SpiffeId.parse("spiffe://meshkit.local/ns/default/sa/orders")
        assert pickle.loads(pickle.dumps(sid)) == sid
        configure = o.configure_logging
        for mod in (importlib.reload(o), importlib.reload(a)):
            assert sorted(mod.__all__) == sorted(set(mod.__all__))
        assert o.configure_logging is configure
        assert a.SpiffeId is type(sid)
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_first_reads_from_several_threads_at_once_all_succeed() -> None:
    """Threads reading names of ``meshkit`` and both packages for the first time at the
    same moment each get their name. The packages' names' modules import a common package
    (meshkit.resilience): imported concurrently it raised _DeadlockError or
    KeyError('meshkit.resilience') (about one round in three, each round in a fresh set of
    meshkit modules), where the eager packages imported everything in one thread under
    their import lock. ``meshkit``'s own names take the same lock (a reviewer saw
    ``_DeadlockError('meshkit.discovery._types')`` once in 20 rounds on the old tree)."""
    done = run_python("""
        import sys, threading
        sys.setswitchinterval(1e-6)  # threads switch often: the race shows every few rounds
        NAMES = [("meshkit", "registry_from_uri"), ("meshkit", "dial"),
                 ("meshkit", "serve"), ("meshkit", "Instance"),
                 ("meshkit.observability", "client_interceptors"),
                 ("meshkit.observability", "TelemetryServerInterceptor"),
                 ("meshkit.observability", "server_interceptors"),
                 ("meshkit.observability", "configure_tracing"),
                 ("meshkit.observability", "AdminServer"),
                 ("meshkit.auth", "AuthzInterceptor"),
                 ("meshkit.auth", "TLSOptions")]
        errors = []
        for round_ in range(24):
            for name in [m for m in sys.modules if m == "meshkit" or m.startswith("meshkit.")]:
                del sys.modules[name]  # a fresh first read: the modules imported again
            import importlib
            packages = {p: importlib.import_module(p) for p, _ in NAMES}
            barrier = threading.Barrier(len(NAMES))

            def read(package, name, packages=packages, barrier=barrier, round_=round_):
                barrier.wait()
                try:
                    assert getattr(packages[package], name) is not None
                except BaseException as exc:
                    errors.append(f"round {round_} {package}.{name}: {exc!r}")

            threads = [threading.Thread(target=read, args=pair) for pair in NAMES]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        print(len(errors))
        print("\\n".join(errors[:5]))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "0", done.stdout


EXIT_PROGRAM = """
import atexit, sys, time
from concurrent.futures import ThreadPoolExecutor
import structlog
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

log = structlog.get_logger("app")
atexit.register(lambda: log.warning("hook-before-import"))

class LoggingExporter(SpanExporter):
    def export(self, spans):
        log.info("exported", spans=len(spans))
        return SpanExportResult.SUCCESS

    def shutdown(self):
        log.info("exporter-shutdown")  # the provider's own atexit shutdown

import meshkit.observability as obs
atexit.register(lambda: log.warning("hook-before-first-read"))
if sys.argv[1] == "tracing-first":
    from meshkit.observability import configure_tracing, configure_logging
else:
    from meshkit.observability import configure_logging, configure_tracing
provider = configure_tracing("exit-test", exporters=[LoggingExporter()])
configure_logging("INFO", json=True, access_log_flush_interval_s=30)
with provider.get_tracer("t").start_as_current_span("s"):
    log.info("in-span")
obs.access_logger().info("access", method="/x.Y/Z")  # buffered for up to 30 s
for i in range(int(sys.argv[2])):  # more than a pipe holds: queued for the writer thread
    log.info("bulk", i=i, pad="x" * 100)
pool = ThreadPoolExecutor(1)
pool.submit(lambda: (time.sleep(0.3), log.info("pool-worker")))  # joined at exit
log.info("last")
"""


@pytest.mark.parametrize("order", ["tracing-first", "logging-first"])
def test_a_program_that_configures_logging_and_tracing_loses_no_line_at_exit(
        order: str, tmp_path: Path) -> None:
    """The log writer's exit flush (meshkit.observability._logging's atexit and threading
    hooks) now registers when a name is first read, not at the package import: after an
    atexit hook registered in between, after or before the tracing provider's. Every
    line still reaches stderr: logged at exit by the program's hooks (either side of the
    import), by the span exporter's shutdown, by a pool worker, the access log's pending
    batch, and 2,000 lines queued behind a reader that starts reading 0.5 s late."""
    script = tmp_path / "prog.py"
    script.write_text(EXIT_PROGRAM)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MESHKIT_TRACE_FILE", None)
    proc = subprocess.Popen([sys.executable, str(script), order, "2000"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)  # the pipe fills: lines queue for meshkit's writer thread
        err = proc.stderr.read().decode() if proc.stderr else ""
        assert proc.wait(timeout=60) == 0, err[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert events.count("bulk") == 2000, err[-2000:]
    for event in ("in-span", "access", "last", "pool-worker", "exported", "exporter-shutdown",
                  "hook-before-first-read", "hook-before-import"):
        assert events.count(event) == 1, (event, events[-12:])
    assert "dropped" not in err
