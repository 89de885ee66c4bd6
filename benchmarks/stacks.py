"""The table of layers: what each benchmark contender runs, as ServeOptions/DialOptions.

A *layer* is one policy measured on its own in the overhead scenario and combined into the
full stack. Each is one :class:`Layer` entry in :data:`LAYERS`: a name, a ``probe`` that
says whether the code it needs exists (``None`` when it does, else the reason it is
skipped), and two steps that add to a :class:`Build` on the server side and the client
side (interceptors with their place in the chain, ``ServeOptions``/``DialOptions``
fields, call metadata). Adding a layer, e.g. once :mod:`meshkit.observability` ships
metrics, is one entry here.

Contenders are built from layers in worker processes (:mod:`benchmarks._worker`):

* ``raw``: a plain ``grpc.aio`` server and channel (the baseline);
* ``mesh``: ``serve()``/``dial()`` with ``retry=None, outlier=None`` and
  :class:`~meshkit.balancer.RoundRobin`, plus the named layers;
* ``hand``: what a user would assemble instead (opentelemetry-instrumentation-grpc
  interceptors, a grpc-interceptor JWT check with PyJWT, tenacity retries, ``limits``).

Server chain order (as :mod:`meshkit.observability` documents it): telemetry (tracing,
metrics and access log fused in one interceptor) -> authn (peer, JWT) -> authz -> rate
limit -> deadline -> handler; lower :data:`ORDER` values are outermost. The three
telemetry layers switch parts of one :class:`meshkit.observability.TelemetryOptions`, so
the full stack has one telemetry interceptor per side, as an application would.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tests.support import echo

__all__ = [
    "AUDIENCE",
    "FULL_LAYERS",
    "ISSUER",
    "LAYERS",
    "METHOD",
    "NULL_TRANSPORT_QUEUE",
    "ORDER",
    "POLICY_LAYERS",
    "SAMPLED_RATIO",
    "Build",
    "Layer",
    "LayerUnavailable",
    "Secrets",
    "build_mesh",
    "flush_spans",
    "hand_client",
    "hand_server_interceptors",
    "layer_note",
    "mesh_dial_options",
    "mesh_serve_options",
    "tracer_provider",
]

METHOD = echo.method("Unary")
"""The method every overhead call goes to: ``/meshkit.test.Echo/Unary``."""
IDENTITY = "echo"
"""Workload name in the server's certificate (the mTLS identity the client checks)."""
CLIENT_IDENTITY = "bench-client"
ISSUER = "https://bench.meshkit.local"
AUDIENCE = "bench"
ALLOW_ALL_RULE = "1000000/second"
"""Rate-limit rule that is counted on every call but never refuses one."""

ORDER = {"telemetry": 10, "deadline": 20, "peer": 50, "jwt": 60, "authz": 70, "ratelimit": 80}
"""Position of each server interceptor in the hand-assembled chains (the order serve() uses
for meshkit's own checks); lower runs first (outermost)."""


class LayerUnavailable(Exception):
    """A layer cannot be built here (its module is missing or has no such API yet)."""


@dataclass(frozen=True, slots=True)
class Secrets:
    """Key material shared by the runner and the workers, in one directory.

    Attributes:
        dir: the directory; ``jwt.pem`` (ES256 signing key) and ``pki/`` (mesh CA with
            ``echo`` and ``bench-client`` workload certificates) live in it.
    """

    dir: Path

    @property
    def jwt_key(self) -> Path:
        """The JWT signing key (PKCS#8 PEM)."""
        return self.dir / "jwt.pem"

    @property
    def pki(self) -> Path:
        """The ``meshkit certs`` directory."""
        return self.dir / "pki"

    def create(self) -> list[str]:
        """Write the key and certificates (runner only); returns notes on what is missing."""
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            from meshkit.auth import KeySet, init_ca_dir, issue_into_dir
        except Exception as exc:  # the auth package is optional for the suite
            return [f"meshkit.auth not importable ({exc!r}): JWT and mTLS layers skipped"]
        notes: list[str] = []
        try:
            key = KeySet.generate("ES256").current
            self.jwt_key.write_bytes(key.private_pem())
            self.jwt_key.chmod(0o600)
        except Exception as exc:
            notes.append(f"cannot create a JWT key ({exc!r}): JWT layer skipped")
        try:
            init_ca_dir(self.pki, trust_domain="bench.meshkit", ttl_days=2)
            for name in (IDENTITY, CLIENT_IDENTITY):
                issue_into_dir(self.pki, name, ttl_h=24, dns=("localhost",), ips=("127.0.0.1",))
        except Exception as exc:
            notes.append(f"cannot create certificates ({exc!r}): mTLS layer skipped")
        return notes


@dataclass
class Build:
    """What a contender's layers add, filled in by the :class:`Layer` steps.

    Attributes:
        server_interceptors: ``(order, grpc.aio.ServerInterceptor)`` pairs, sorted later.
        client_interceptors: ``(order, meshkit ClientInterceptor)`` pairs (per call).
        attempt_interceptors: ``grpc.aio.ClientInterceptor`` objects (per attempt).
        serve: extra :class:`meshkit.ServeOptions` fields (``deadline``, ``rate_limit``...).
        auth: :class:`meshkit.auth.AuthOptions` fields, combined by the JWT and mTLS layers.
        dial: extra :class:`meshkit.DialOptions` fields.
        metadata: metadata sent on every call.
        telemetry: telemetry parts switched on (``tracing``, ``metrics``, ``access_log``);
            one fused interceptor per side is built from them at the end.
        service: the mesh service name (the server's access log names it).
    """

    secrets: Secrets
    server_interceptors: list[tuple[int, Any]] = field(default_factory=list)
    client_interceptors: list[tuple[int, Any]] = field(default_factory=list)
    attempt_interceptors: list[Any] = field(default_factory=list)
    serve: dict[str, Any] = field(default_factory=dict)
    auth: dict[str, Any] = field(default_factory=dict)
    dial: dict[str, Any] = field(default_factory=dict)
    metadata: list[tuple[str, str]] = field(default_factory=list)
    telemetry: set[str] = field(default_factory=set)
    service: str = "bench"


Step = Callable[[Build], None]


@dataclass(frozen=True, slots=True)
class Layer:
    """One entry of the layer table.

    Attributes:
        name: short name used on the command line and in results (``"jwt"``).
        summary: what it measures, for the tables.
        probe: ``probe(secrets) -> None`` when the layer can be built, else the reason
            it is skipped (a short sentence).
        server: adds the server half to a :class:`Build` (may raise LayerUnavailable).
        client: adds the client half.
    """

    name: str
    summary: str
    probe: Callable[[Secrets], str | None]
    server: Step | None = None
    client: Step | None = None


# -- probes ----------------------------------------------------------------------------------
def _always(_secrets: Secrets) -> str | None:
    return None


def _module(name: str) -> str | None:
    try:
        importlib.import_module(name)
    except Exception as exc:
        return f"{name} not importable ({type(exc).__name__}: {exc})"
    return None


def _probe_jwt(secrets: Secrets) -> str | None:
    return _module("meshkit.auth") or (
        None if secrets.jwt_key.exists() else "no JWT key was created")


def _probe_mtls(secrets: Secrets) -> str | None:
    return _module("meshkit.auth") or (
        None if (secrets.pki / f"{IDENTITY}.pem").exists() else "no certificates were created")


def _probe_telemetry(_secrets: Secrets) -> str | None:
    why = _module("meshkit.observability")
    if why is not None:
        return why
    mod = importlib.import_module("meshkit.observability")
    missing = [n for n in ("TelemetryOptions", "server_interceptors", "client_interceptors")
               if not hasattr(mod, n)]
    return f"meshkit.observability has no {', '.join(missing)} yet" if missing else None


# -- steps -----------------------------------------------------------------------------------
def _deadline_server(b: Build) -> None:
    from meshkit.resilience import DeadlineOptions

    b.serve["deadline"] = DeadlineOptions()


def _retry_client(b: Build) -> None:
    from meshkit.resilience import RetryOptions, RetryPolicy

    # Armed for the echo method (idempotent, so UNAVAILABLE would be retried) but the
    # server never fails: this measures the bookkeeping of a retry that does not fire.
    b.dial["retry"] = RetryOptions(methods={METHOD: RetryPolicy(idempotent=True)})


def _p2c_client(b: Build) -> None:
    from meshkit.balancer import P2C

    b.dial["balancer"] = P2C


def _p2c_variant(**options: float) -> Step:
    """P2C with non-default :class:`~meshkit.balancer.P2COptions` (diagnostic contenders:
    they show whether a tuning would meet a target the defaults miss)."""

    def step(b: Build) -> None:
        from meshkit.balancer import P2C, P2COptions

        opts = P2COptions(**options)
        b.dial["balancer"] = lambda: P2C(opts)

    return step


def _outlier_client(b: Build) -> None:
    from meshkit.balancer import OutlierOptions

    b.dial["outlier"] = OutlierOptions()


def _jwt_server(b: Build) -> None:
    from meshkit.auth import JWTVerifier, KeySet, SigningKey, VerifierOptions

    keys = KeySet([SigningKey.from_pem(b.secrets.jwt_key.read_bytes())])
    b.auth["verifier"] = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)


@functools.cache
def bench_token(key_file: Path) -> str:
    """An access token for the benchmark client, signed with the shared key (1 h)."""
    from meshkit.auth import IssuerOptions, KeySet, SigningKey, TokenIssuer

    keys = KeySet([SigningKey.from_pem(key_file.read_bytes())])
    issuer = TokenIssuer(keys, IssuerOptions(issuer=ISSUER, audience=AUDIENCE, ttl_s=3600))
    return issuer.issue(CLIENT_IDENTITY, scopes=("echo",))


def _jwt_client(b: Build) -> None:
    b.metadata.append(("authorization", f"Bearer {bench_token(b.secrets.jwt_key)}"))


def _ratelimit_server(b: Build) -> None:
    from meshkit.resilience import RateLimitOptions

    b.serve["rate_limit"] = RateLimitOptions(default_rule=ALLOW_ALL_RULE)


def _tls(name: str, secrets: Secrets) -> Any:
    from meshkit.auth import TLSOptions

    d = secrets.pki
    return TLSOptions(ca_file=d / "ca.pem", cert_file=d / f"{name}.pem",
                      key_file=d / f"{name}.key", reload_interval_s=60.0)


def _server_identity(b: Build) -> str:
    """The workload the server side presents: the contender's own service (its
    certificate issued on first use from the benchmark's CA), or ``echo`` with a meshkit
    that has no ``check_server_identity`` (older trees in an A/B)."""
    try:
        from meshkit.auth import (
            check_server_identity,  # noqa: F401
            issue_into_dir,
        )
    except ImportError:
        return IDENTITY
    if not (b.secrets.pki / f"{b.service}.pem").exists():
        issue_into_dir(b.secrets.pki, b.service, ttl_h=24, dns=("localhost",),
                       ips=("127.0.0.1",))
    return b.service


def _has_field(cls: type, name: str) -> bool:
    return any(f.name == name for f in dataclasses.fields(cls))


def _mtls_server(b: Build) -> None:
    import meshkit

    # serve() refuses a certificate that is not the served service's (every meshkit
    # client would refuse it): each contender's service gets its own, issued here
    name = _server_identity(b)
    tls = _tls(name, b.secrets)
    if _has_field(meshkit.ServeOptions, "tls"):
        b.serve["tls"] = tls
    else:
        b.serve["credentials"] = tls.server_credentials()
    b.auth["check_peers"] = True


def _mtls_client(b: Build) -> None:
    import meshkit

    tls = _tls(CLIENT_IDENTITY, b.secrets)
    if _has_field(meshkit.DialOptions, "tls"):
        b.dial["tls"] = tls  # verifies the server as the dialed service, as serve() issued
    else:
        b.dial["credentials"] = tls.channel_credentials()
        b.dial["channel_options"] = tls.channel_options(IDENTITY)


SAMPLED_RATIO = 0.01
"""The ``sampled`` layer's head-sampling ratio: Istio's default trace sampling rate (1 %)."""


def tracer_provider(ratio: float = 1.0, *, max_queue_size: int = 2048) -> Any:
    """An OpenTelemetry SDK tracer provider exporting to nowhere.

    Spans are built, ended and handed to a batch processor whose exporter drops them, so
    the measured cost is what a production exporter's caller pays on the hot path.

    Args:
        ratio: the fraction of traces sampled; 1.0 (the default) samples every call
            (``ALWAYS_ON``), below that ``ParentBased(TraceIdRatioBased(ratio))`` decides
            at the root (the client) and the server follows the caller's flag.
        max_queue_size: the batch processor's queue (the SDK's default, 2048). A loop over
            a null transport ends spans faster than the processor's thread exports them
            (13 % of the spans of ``benchmarks.micro``'s telemetry rounds were dropped, each
            with a log record): such a harness passes :data:`NULL_TRANSPORT_QUEUE` and calls
            ``force_flush()`` inside its timed region, so every span is exported and counted.
    """
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    class _Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(
        sampler=ALWAYS_ON if ratio >= 1.0 else ParentBased(TraceIdRatioBased(ratio)))
    provider.add_span_processor(BatchSpanProcessor(_Drop(), max_queue_size=max_queue_size))
    return provider


NULL_TRANSPORT_QUEUE = 1 << 16
"""The span queue of :func:`tracer_provider` for a harness without a network: more spans
than one of its timed rounds ends (see ``max_queue_size``)."""


def flush_spans(telemetry: Any) -> None:
    """Export every span queued by ``telemetry`` (a :class:`TelemetryOptions` or ``None``)
    now, in this thread: what a null-transport harness calls inside its timed region."""
    provider = getattr(telemetry, "tracer_provider", None)
    if provider is not None:
        provider.force_flush()


def _probe_inline_completion(secrets: Secrets) -> str | None:
    """Needs telemetry whose completion can be moved before the response."""
    note = _probe_telemetry(secrets)
    if note is not None:
        return note
    from meshkit.observability import TelemetryOptions

    if not _has_field(TelemetryOptions, "complete_after_response_max_in_flight"):
        return "TelemetryOptions has no complete_after_response_max_in_flight"
    return None


def _telemetry(part: str) -> Step:
    """A step switching on one part of the fused telemetry interceptors."""

    def step(b: Build) -> None:
        b.telemetry.add(part)

    return step


def _telemetry_options(b: Build) -> Any:
    """The :class:`meshkit.observability.TelemetryOptions` of the parts switched on, or
    ``None`` when none is."""
    if not b.telemetry:
        return None
    from meshkit.observability import TelemetryOptions

    extra: dict[str, Any] = {}
    if "inline" in b.telemetry:
        extra["complete_after_response_max_in_flight"] = 0
    return TelemetryOptions(
        tracing="tracing" in b.telemetry, metrics="metrics" in b.telemetry,
        access_log="access_log" in b.telemetry,
        tracer_provider=tracer_provider(SAMPLED_RATIO if "sampled" in b.telemetry else 1.0)
        if "tracing" in b.telemetry else None, **extra)


def _finish_telemetry(b: Build, side: str) -> None:
    """Where ServeOptions/DialOptions have no ``telemetry`` field, add the fused telemetry
    interceptor of ``side`` by hand (otherwise the options carry it, see
    :func:`mesh_serve_options`)."""
    import meshkit

    cls = meshkit.ServeOptions if side == "server" else meshkit.DialOptions
    if _has_field(cls, "telemetry"):
        return
    opts = _telemetry_options(b)
    if opts is None:
        return
    from meshkit.observability import client_interceptors, server_interceptors

    if side == "server":
        b.server_interceptors.extend(
            (ORDER["telemetry"], i) for i in server_interceptors(b.service, opts))
    else:
        b.client_interceptors.extend((ORDER["telemetry"], i) for i in client_interceptors(opts))


def _limits_server(b: Build) -> None:
    from meshkit.server import ServerLimits

    b.serve["limits"] = ServerLimits()


def _defaults_server(b: Build) -> None:
    b.serve["defaults"] = True


def _defaults_client(b: Build) -> None:
    b.dial["defaults"] = True


LAYERS: dict[str, Layer] = {layer.name: layer for layer in (
    Layer("defaults", "serve()/dial() with their default options (no trace exporter)",
          _always, server=_defaults_server, client=_defaults_client),
    Layer("limits", "server ServerLimits() as shipped (RequestGate reads requests: slots, "
          "eviction, first-message timeout, byte budget)", _always, server=_limits_server),
    Layer("deadline", "server DeadlineInterceptor (admission + propagation)", _always,
          server=_deadline_server),
    Layer("retry", "RetryOptions armed (idempotent method), never firing", _always,
          client=_retry_client),
    Layer("p2c", "P2C over peak EWMA instead of round robin", _always, client=_p2c_client),
    Layer("p2c_decay1s", "P2C with P2COptions(decay_s=1.0) (diagnostic)", _always,
          client=_p2c_variant(decay_s=1.0)),
    Layer("p2c_rtt1ms", "P2C with P2COptions(default_rtt_s=0.001) (diagnostic)", _always,
          client=_p2c_variant(default_rtt_s=0.001)),
    Layer("outlier", "outlier ejection (default OutlierOptions)", _always,
          client=_outlier_client),
    Layer("jwt", "JWT verify (ES256 bearer token, JWTAuthInterceptor)", _probe_jwt,
          server=_jwt_server, client=_jwt_client),
    Layer("ratelimit", f"RateLimitInterceptor memory:// {ALLOW_ALL_RULE}", _always,
          server=_ratelimit_server),
    Layer("tracing", "tracing, 100 % sampled, spans dropped by the exporter",
          _probe_telemetry, server=_telemetry("tracing"), client=_telemetry("tracing")),
    Layer("metrics", "RED metrics (prometheus-client)", _probe_telemetry,
          server=_telemetry("metrics"), client=_telemetry("metrics")),
    Layer("accesslog", "access log, one JSON line per call per side", _probe_telemetry,
          server=_telemetry("access_log"), client=_telemetry("access_log")),
    Layer("inline_completion", "telemetry ends spans and writes access lines before the "
          "response (complete_after_response_max_in_flight=0; diagnostic)",
          _probe_inline_completion,
          server=_telemetry("inline"), client=_telemetry("inline")),
    Layer("sampled", f"tracing samples {SAMPLED_RATIO:.0%} of traces at the client, "
          "the server follows (Istio's default rate; diagnostic)", _probe_telemetry,
          server=_telemetry("sampled"), client=_telemetry("sampled")),
    Layer("mtls", "mTLS with SPIFFE identities (server requires client certificates)",
          _probe_mtls, server=_mtls_server, client=_mtls_client),
)}
"""Every layer by name, in the order the overhead table shows them."""

POLICY_LAYERS = ("deadline", "limits", "retry", "p2c", "outlier", "jwt", "ratelimit",
                 "tracing", "metrics", "accesslog")
"""Layers measured one by one on top of ``mesh`` (mTLS is only measured in the full stack)."""
FULL_LAYERS = POLICY_LAYERS
"""The full stack without TLS: every policy layer that is available."""


def layer_note(name: str, secrets: Secrets) -> str | None:
    """``None`` when layer ``name`` can be built here, else why it is skipped."""
    try:
        return LAYERS[name].probe(secrets)
    except Exception as exc:
        return f"probe failed: {exc!r}"


def build_mesh(layers: tuple[str, ...], secrets: Secrets, side: str,
               service: str = "bench") -> Build:
    """Run the ``side`` (``"server"``/``"client"``) steps of ``layers`` into a Build.

    Raises:
        LayerUnavailable: a layer cannot be built (its reason is the message).
    """
    b = Build(secrets, service=service)
    for name in layers:
        layer = LAYERS[name]
        step = layer.server if side == "server" else layer.client
        if step is None:
            continue
        try:
            step(b)
        except LayerUnavailable:
            raise
        except Exception as exc:
            raise LayerUnavailable(f"layer {name!r} failed to build: {exc!r}") from exc
    try:
        _finish_telemetry(b, side)
    except Exception as exc:
        raise LayerUnavailable(f"telemetry failed to build: {exc!r}") from exc
    return b


def mesh_serve_options(b: Build, **kwargs: Any) -> Any:
    """:class:`meshkit.ServeOptions` from a server-side Build plus ``kwargs`` (telemetry off
    unless a telemetry layer is in the Build; with the ``defaults`` layer, serve()'s own
    defaults)."""
    import meshkit

    if b.serve.get("defaults"):
        return meshkit.ServeOptions(insecure=True, **kwargs)

    from meshkit.server import ServerLimits

    # bare: no mesh checks, and grpc.aio reading requests (the limits layer adds the gate)
    opts: dict[str, Any] = {"deadline": None, "limits": ServerLimits(read_requests=False),
                            **kwargs, **b.serve}
    if b.auth:
        from meshkit.auth import AuthOptions

        opts["auth"] = AuthOptions(**{"check_peers": False, **b.auth})
    if _has_field(meshkit.ServeOptions, "telemetry"):
        opts["telemetry"] = _telemetry_options(b)  # None: off unless a layer asks for it
    opts["interceptors"] = tuple(
        i for _, i in sorted(b.server_interceptors, key=lambda p: p[0]))
    plaintext = "tls" not in opts and "credentials" not in opts
    if plaintext and _has_field(meshkit.ServeOptions, "insecure"):
        opts["insecure"] = True
    return meshkit.ServeOptions(**opts)


def mesh_dial_options(b: Build) -> Any:
    """:class:`meshkit.DialOptions` for a client-side Build: the bare channel (round robin,
    no retries, no ejection, no telemetry) with the layers' fields on top."""
    import meshkit
    from meshkit.balancer import RoundRobin

    if b.dial.get("defaults"):
        return meshkit.DialOptions(insecure=True)
    opts: dict[str, Any] = {"retry": None, "outlier": None, "balancer": RoundRobin}
    opts.update(b.dial)
    if _has_field(meshkit.DialOptions, "telemetry"):
        opts["telemetry"] = _telemetry_options(b)  # None: off unless a layer asks for it
    opts["interceptors"] = tuple(
        i for _, i in sorted(b.client_interceptors, key=lambda p: p[0]))
    opts["attempt_interceptors"] = tuple(b.attempt_interceptors)
    plaintext = "tls" not in opts and "credentials" not in opts
    if plaintext and _has_field(meshkit.DialOptions, "insecure"):
        opts["insecure"] = True
    return meshkit.DialOptions(**opts)


# -- the hand-assembled stack ----------------------------------------------------------------
def hand_server_interceptors(secrets: Secrets, *, tracing: bool) -> list[Any]:
    """Server interceptors a user would assemble: OpenTelemetry's aio server interceptor,
    a grpc-interceptor JWT check with PyJWT (decoding every call) and ``limits``.

    Raises:
        LayerUnavailable: grpc-interceptor, PyJWT or the JWT key is missing.
    """
    try:
        import jwt
        from grpc_interceptor.server import AsyncServerInterceptor
        from limits import parse
        from limits.aio.storage import MemoryStorage
        from limits.aio.strategies import SlidingWindowCounterRateLimiter
    except ImportError as exc:
        raise LayerUnavailable(f"hand-assembled stack needs {exc.name}") from exc
    if not secrets.jwt_key.exists():
        raise LayerUnavailable("no JWT key was created")
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key(secrets.jwt_key.read_bytes(), password=None)
    public: Any = private.public_key()

    class JwtCheck(AsyncServerInterceptor):
        """Verify ``authorization: Bearer`` with PyJWT on every call."""

        async def intercept(self, method: Any, request: Any, context: Any,
                            method_name: str) -> Any:
            token = ""
            for k, v in context.invocation_metadata() or ():
                if k == "authorization" and isinstance(v, str) and v.startswith("Bearer "):
                    token = v[7:]
            try:
                jwt.decode(token, public, algorithms=["ES256"], audience=AUDIENCE,
                           issuer=ISSUER)
            except jwt.PyJWTError:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")
            return await method(request, context)

    class Limit(AsyncServerInterceptor):
        """Count every call per peer with ``limits`` (sliding window counter, memory)."""

        def __init__(self) -> None:
            self.limiter = SlidingWindowCounterRateLimiter(MemoryStorage())
            self.item = parse(ALLOW_ALL_RULE)

        async def intercept(self, method: Any, request: Any, context: Any,
                            method_name: str) -> Any:
            peer = context.peer().rsplit(":", 1)[0]
            if not await self.limiter.hit(self.item, method_name, peer):
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limited")
            return await method(request, context)

    chain: list[Any] = []
    if tracing:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        chain.append(aio_server_interceptor(  # type: ignore[no-untyped-call]
            tracer_provider=tracer_provider()))
    chain += [JwtCheck(), Limit()]
    return chain


def hand_client(address: str, secrets: Secrets, *,
                tracing: bool) -> tuple[grpc.aio.Channel, Callable[[bytes], Awaitable[bytes]]]:
    """A channel with OpenTelemetry's aio client interceptors and a call function wrapped
    in tenacity retries (UNAVAILABLE, 3 attempts, jittered exponential backoff) that sends
    the bearer token.

    Raises:
        LayerUnavailable: tenacity or the JWT key is missing.
    """
    try:
        from tenacity import (
            retry,
            retry_if_exception,
            stop_after_attempt,
            wait_random_exponential,
        )
    except ImportError as exc:
        raise LayerUnavailable("hand-assembled stack needs tenacity") from exc
    if importlib.util.find_spec("meshkit.auth") is None or not secrets.jwt_key.exists():
        raise LayerUnavailable("no JWT key was created")
    interceptors: list[Any] = []
    if tracing:
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        interceptors = list(aio_client_interceptors(  # type: ignore[no-untyped-call]
            tracer_provider=tracer_provider()))
    channel = grpc.aio.insecure_channel(address, interceptors=interceptors or None)
    mc: Any = channel.unary_unary(METHOD)
    md = (("authorization", f"Bearer {bench_token(secrets.jwt_key)}"),)

    def unavailable(exc: BaseException) -> bool:
        return isinstance(exc, grpc.aio.AioRpcError) and \
            exc.code() is grpc.StatusCode.UNAVAILABLE

    @retry(retry=retry_if_exception(unavailable), stop=stop_after_attempt(3),
           wait=wait_random_exponential(multiplier=0.025, max=1.0), reraise=True)
    async def call(request: bytes) -> bytes:
        return await mc(request, timeout=5.0, metadata=md)  # type: ignore[no-any-return]

    return channel, call
