"""CPU per call of each mesh layer, per side, over a null transport.

``python -m benchmarks.layers`` (about a minute) measures what issue 11's target "every
single layer <= 15 us of CPU per call per side" is about, without grpc's own cost and its
noise (~250 us of CPU per call per side on loopback here, which moves by more than a layer
from run to run):

* **client**: a real :func:`meshkit.dial` channel (discovery, balancer, per-call chain, call
  objects) whose endpoints' sub-channels are replaced by a *null transport*: a
  multicallable that answers at once. Everything meshkit does per call runs; grpc's
  network path does not. (``attempt_interceptors`` installed on real sub-channels are
  bypassed; meshkit installs none by default.)
* **server**: the interceptor chain :func:`meshkit.server.server_chain` builds for a
  :class:`meshkit.ServeOptions`, applied as ``serve()`` applies it: once per method
  (:func:`meshkit._handlers.handler_resolver`, a dict lookup per call), or per call
  through each interceptor's ``intercept_service`` when the chain cannot be resolved
  per method; then the wrapped behaviour runs against a
  null servicer context that answers what the checks ask (metadata, peer, deadline,
  client certificate).

Each variant adds one layer to the bare mesh (``bare``: round robin, no retries, no
ejection, no telemetry; the server with no check and no telemetry); rounds alternate the
variants; the figure is the median CPU time (``time.process_time``) per call over rounds,
and what the layer adds is the median of its per-round differences with the bare
variant's run of the same round. Tracing samples 100 % into an SDK
provider whose exporter drops spans; access lines go through ``configure_logging()`` to
``/dev/null``.

``--instructions [VARIANTS]`` counts instructions per call instead (``valgrind
--tool=callgrind``, about 40 s a variant): each variant of each side runs in a child
process with 300 and with 1,300 calls, and the difference over 1,000 is its count, the same
on a busy or a quiet machine. CPU figures above move with the VM (2-3x between a quiet and
a throttled afternoon here); instruction counts decide whether a change made a layer
cheaper.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from benchmarks._paired import medians, paired_added

__all__ = ["client_layers", "main", "server_layers"]


def _settle_heap() -> None:
    """Collect, then freeze what survived the warm-up (imports, channels, caches): a
    full collection then walks only what the measured calls allocate. Otherwise one
    more or one fewer full collection in a run (a walk over every module's objects)
    moved a variant by tens of thousands of instructions per call."""
    gc.collect()
    gc.freeze()


# -- client ----------------------------------------------------------------------------------
class _NullCall:
    """A finished unary call: awaiting it gives the response at once."""

    __slots__ = ("_response",)

    def __init__(self, response: bytes) -> None:
        self._response = response

    def __await__(self) -> Any:
        return self._response
        yield  # pragma: no cover - makes this a generator

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK

    async def details(self) -> str:
        return ""

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        callback(self)


class _NullChannel:
    """A sub-channel that is always READY and answers every unary call at once."""

    def unary_unary(self, *args: Any, **kwargs: Any) -> Callable[..., _NullCall]:
        def call(request: Any, **kw: Any) -> _NullCall:
            return _NullCall(b"ok")

        return call

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return grpc.ChannelConnectivity.READY

    async def wait_for_state_change(self, last: grpc.ChannelConnectivity) -> None:
        await asyncio.Event().wait()

    async def close(self, grace: float | None = None) -> None:
        return None


def _client_variants(provider: Any) -> dict[str, dict[str, Any]]:
    from meshkit.balancer import P2C, OutlierOptions, RoundRobin
    from meshkit.observability import TelemetryOptions
    from meshkit.resilience import RetryOptions, RetryPolicy

    bare: dict[str, Any] = {"balancer": RoundRobin, "retry": None, "outlier": None,
                            "telemetry": None}
    retry = RetryOptions(methods={"/bench.Svc/M": RetryPolicy(idempotent=True)})

    def tel(**kw: Any) -> TelemetryOptions:
        base = {"tracing": False, "metrics": False, "access_log": False}
        return TelemetryOptions(**{**base, **kw})

    return {
        "bare": bare,
        "+p2c": {**bare, "balancer": P2C},
        "+outlier": {**bare, "outlier": OutlierOptions()},
        "+retry": {**bare, "retry": retry},
        "+tracing": {**bare, "telemetry": tel(tracing=True, tracer_provider=provider)},
        "+metrics": {**bare, "telemetry": tel(metrics=True)},
        "+accesslog": {**bare, "telemetry": tel(access_log=True)},
        "defaults": {},
        "full": {"retry": retry, "telemetry": TelemetryOptions(tracer_provider=provider)},
    }


async def _client_run(options: dict[str, Any], registry: Any, calls: int) -> float:
    import meshkit
    from benchmarks.stacks import flush_spans
    from meshkit.observability import flush_logs

    ch = meshkit.dial("bench", registry=registry,
                      options=meshkit.DialOptions(insecure=True, **options))
    ch._pool._make_channel = lambda address: _NullChannel()  # type: ignore[assignment,return-value]
    try:
        await ch.wait_for_endpoints(2)
        call = ch.unary_unary("/bench.Svc/M")
        for _ in range(200):
            await call(b"x", timeout=5)
        flush_logs()  # the warm-up's access lines are written before the window
        _settle_heap()
        t0 = time.process_time()
        for _ in range(calls):
            await call(b"x", timeout=5)
        flush_spans(options.get("telemetry"))  # the export of the spans counts too
        flush_logs()  # and the run's last access lines (else the next variant's window)
        return (time.process_time() - t0) / calls * 1e6
    finally:
        gc.unfreeze()
        await ch.close()


async def client_layers(rounds: int, calls: int, provider: Any) -> dict[str, list[float]]:
    """CPU us per call of each client variant in each of ``rounds`` alternating rounds
    (see the module docstring), in round order (:func:`table` pairs them by round)."""
    from meshkit.discovery import Instance, LocalOptions, LocalRegistry

    with tempfile.TemporaryDirectory() as d:
        registry = LocalRegistry(LocalOptions(path=Path(d) / "r"))
        for i in (1, 2):
            await registry.register(Instance(service="bench", instance_id=f"b{i}",
                                             host="127.0.0.1", port=i))
        variants = _client_variants(provider)
        got: dict[str, list[float]] = {k: [] for k in variants}
        try:
            for r in range(rounds):
                order = list(variants) if r % 2 == 0 else list(reversed(variants))
                for name in order:
                    got[name].append(await _client_run(variants[name], registry, calls))
        finally:
            await registry.close()
    return got


# -- server ----------------------------------------------------------------------------------
class _NullContext:
    """What a servicer context answers the mesh's checks, without a call behind it."""

    def __init__(self, metadata: tuple[tuple[str, str], ...], cert_pem: bytes | None) -> None:
        self._md = metadata
        self._auth = ({"x509_pem_cert": [cert_pem], "transport_security_type": [b"ssl"]}
                      if cert_pem else {})

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._md

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def time_remaining(self) -> float:
        return 5.0

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def peer_identities(self) -> None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str = "", *a: Any) -> None:
        raise RuntimeError(f"refused: {code} {details}")

    def set_trailing_metadata(self, md: Any) -> None:
        return None

    def set_code(self, code: Any) -> None:
        return None

    def set_details(self, details: Any) -> None:
        return None

    def code(self) -> None:
        return None

    def details(self) -> None:
        return None

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False


class _Details:
    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


def _server_variants(provider: Any, secrets: Any) -> dict[str, tuple[dict[str, Any], bool]]:
    from benchmarks.stacks import ALLOW_ALL_RULE, AUDIENCE, IDENTITY, ISSUER, _tls
    from meshkit.auth import AuthOptions, JWTVerifier, KeySet, SigningKey, VerifierOptions
    from meshkit.observability import TelemetryOptions
    from meshkit.resilience import DeadlineOptions, RateLimitOptions

    keys = KeySet([SigningKey.from_pem(secrets.jwt_key.read_bytes())])
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)
    tls = _tls(IDENTITY, secrets)
    bare: dict[str, Any] = {"telemetry": None, "deadline": None}

    def tel(**kw: Any) -> TelemetryOptions:
        base = {"tracing": False, "metrics": False, "access_log": False}
        return TelemetryOptions(**{**base, **kw})

    return {
        "bare": (bare, False),
        "+deadline": ({**bare, "deadline": DeadlineOptions()}, False),
        "+peer": ({**bare, "tls": tls, "auth": AuthOptions()}, True),
        "+jwt": ({**bare, "auth": AuthOptions(verifier=verifier)}, False),
        "+ratelimit": ({**bare, "rate_limit": RateLimitOptions(default_rule=ALLOW_ALL_RULE)},
                       False),
        "+tracing": ({**bare, "telemetry": tel(tracing=True, tracer_provider=provider)}, False),
        "+metrics": ({**bare, "telemetry": tel(metrics=True)}, False),
        "+accesslog": ({**bare, "telemetry": tel(access_log=True)}, False),
        "defaults": ({}, False),
        "full": ({"telemetry": TelemetryOptions(tracer_provider=provider), "tls": tls,
                  "auth": AuthOptions(verifier=verifier),
                  "rate_limit": RateLimitOptions(default_rule=ALLOW_ALL_RULE)}, True),
    }


async def _server_run(options: dict[str, Any], with_cert: bool, secrets: Any, token: str,
                      calls: int) -> float:
    import meshkit
    from benchmarks.stacks import flush_spans
    from meshkit._handlers import fuse_interceptors, handler_resolver
    from meshkit.observability import flush_logs
    from meshkit.server import server_chain

    opts = meshkit.ServeOptions(**({"insecure": True} if "tls" not in options else {}),
                                **options)
    chain = fuse_interceptors(server_chain("bench", opts))

    async def behaviour(request: bytes, context: Any) -> bytes:
        return request

    base = grpc.unary_unary_rpc_method_handler(behaviour)
    method = "/bench.Svc/M"
    md = (("authorization", f"Bearer {token}"),)
    cert = (secrets.pki / "bench-client.pem").read_bytes().split(b"-----END CERTIFICATE-----")[0]
    cert += b"-----END CERTIFICATE-----\n"
    details = _Details(method, md)

    # serve() applies a chain that only transforms handlers once per method where the
    # handler is looked up (meshkit._handlers.handler_resolver; a call then costs one
    # dict lookup); any other chain runs per call through grpc.aio's interceptor path
    per_method = handler_resolver(chain)
    resolved: dict[str, Any] = {}

    async def resolve(i: int, d: Any) -> Any:
        if i == len(chain):
            return base
        return await chain[i].intercept_service(lambda d2: resolve(i + 1, d2), d)

    async def one() -> None:
        # grpc.aio runs each call in its own task: context variables set by the checks
        # (deadline, span) live and die with it, as here.
        ctx = _NullContext(md, cert if with_cert else None)
        if per_method is None:
            handler = await resolve(0, details)
        else:
            handler = resolved.get(method)
            if handler is None:
                handler = resolved[method] = per_method(method, base)
        await handler.unary_unary(b"x", ctx)

    for _ in range(200):
        await asyncio.get_running_loop().create_task(one())
    flush_logs()  # the warm-up's access lines are written before the window
    _settle_heap()
    t0 = time.process_time()
    loop = asyncio.get_running_loop()
    for _ in range(calls):
        await loop.create_task(one())
    flush_spans(options.get("telemetry"))
    flush_logs()  # and the run's last access lines (else the next variant's window)
    spent = (time.process_time() - t0) / calls * 1e6
    gc.unfreeze()
    return spent


async def server_layers(rounds: int, calls: int, provider: Any) -> dict[str, list[float]]:
    """CPU us per call of each server variant in each of ``rounds`` alternating rounds
    (see the module docstring), in round order (:func:`table` pairs them by round)."""
    from benchmarks.stacks import Secrets, bench_token

    with tempfile.TemporaryDirectory() as d:
        secrets = Secrets(Path(d))
        notes = secrets.create()
        if notes:
            raise RuntimeError("; ".join(notes))
        token = bench_token(secrets.jwt_key)
        variants = _server_variants(provider, secrets)
        got: dict[str, list[float]] = {k: [] for k in variants}
        for r in range(rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                options, with_cert = variants[name]
                got[name].append(await _server_run(options, with_cert, secrets, token, calls))
    return got


# -- entry point -----------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Access lines and warnings to /dev/null while measuring (restored after)."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def table(side: str, rounds: dict[str, list[float]], limit_us: float = 15.0) -> str:
    """A Markdown table of one side: the median CPU us per call of each variant and what
    it adds to ``bare``, the median of its per-round differences with the ``bare`` run of
    the same round (not the difference of the medians, which come from different rounds).

    Args:
        side: ``"client"`` or ``"server"`` (the header's word).
        rounds: variant -> CPU us per call in each round, round order, ``bare`` among them.
        limit_us: the single-layer target (15 us, issue 11's); ``+<layer>`` rows are judged.
    """
    mid, added_by = medians(rounds), paired_added(rounds, "bare")
    lines = [f"| {side} variant | CPU us/call | added us/call | single layer <= {limit_us:g} us |",
             "|---|---:|---:|---:|"]
    for name, v in mid.items():
        added = added_by[name]
        single = name.startswith("+")
        verdict = ("met" if added <= limit_us else "**missed**") if single else ""
        lines.append(f"| {name} | {v:.1f} | {added:+.1f} | {verdict} |")
    return "\n".join(lines)


def _child(side: str, variant: str, calls: int) -> None:
    """One variant of one side, ``calls`` calls after the warm-up (what callgrind runs)."""
    from benchmarks.stacks import (
        NULL_TRANSPORT_QUEUE,
        Secrets,
        bench_token,
        tracer_provider,
    )
    from meshkit.discovery import Instance, LocalOptions, LocalRegistry
    from meshkit.observability import configure_logging, flush_logs

    provider = tracer_provider(1.0, max_queue_size=NULL_TRANSPORT_QUEUE)

    async def run() -> None:
        configure_logging("INFO", json=True)
        with tempfile.TemporaryDirectory() as d:
            if side == "server":
                secrets = Secrets(Path(d))
                secrets.create()
                options, with_cert = _server_variants(provider, secrets)[variant]
                await _server_run(options, with_cert, secrets, bench_token(secrets.jwt_key),
                                  calls)
            else:
                registry = LocalRegistry(LocalOptions(path=Path(d) / "r", ttl_s=3600.0,
                                                      poll_interval_s=600.0))
                for i in (1, 2):
                    await registry.register(Instance(service="bench", instance_id=f"b{i}",
                                                     host="127.0.0.1", port=i))
                await _client_run(_client_variants(provider)[variant], registry, calls)
        flush_logs()

    with _quiet_stderr():
        asyncio.run(run())
        provider.shutdown()


def instructions(side: str, variant: str, low: int = 300, high: int = 1300) -> float:
    """Instructions per call of one variant of one side, counted by callgrind: the
    difference of a ``high``-call and a ``low``-call run over ``high - low`` (set-up,
    warm-up and shutdown cancel out). Load-independent, unlike the CPU figures."""
    from benchmarks.instructions import callgrind_total

    with tempfile.TemporaryDirectory() as tmp:
        a, b = (callgrind_total(["benchmarks.layers", "--child", side, variant, str(n)],
                                tmp, f"{side}.{n}") for n in (low, high))
    return (b - a) / (high - low)


def main(argv: list[str] | None = None) -> int:
    """Run both sides and print their tables."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.layers", description=__doc__)
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    p.add_argument("--calls", type=int, default=4000, help="calls per variant per round")
    p.add_argument("--instructions", metavar="VARIANTS", nargs="?", const="all",
                   help="count instructions per call under callgrind instead of CPU time "
                        "(about 40 s a variant; comma-separated variants, default all)")
    p.add_argument("--child", nargs=3, metavar=("SIDE", "VARIANT", "CALLS"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child[0], args.child[1], int(args.child[2]))
        return 0
    if args.rounds < 1 or args.calls < 1:
        p.error(f"need --rounds >= 1 and --calls >= 1, got --rounds {args.rounds}, "
                f"--calls {args.calls}")
    if args.instructions:
        if args.instructions != "all":
            known = {n for names in _variant_names().values() for n in names}
            unknown = [v for v in args.instructions.split(",") if v and v not in known]
            if unknown:
                p.error(f"--instructions: unknown variants {', '.join(map(repr, unknown))}; "
                        f"choose from {', '.join(sorted(known))}")
        return _print_instructions(args.instructions)
    from benchmarks.stacks import NULL_TRANSPORT_QUEUE, tracer_provider
    from meshkit.observability import configure_logging, flush_logs

    provider = tracer_provider(1.0, max_queue_size=NULL_TRANSPORT_QUEUE)

    async def run() -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        with _quiet_stderr():
            configure_logging("INFO", json=True)
            client = await client_layers(args.rounds, args.calls, provider)
            server = await server_layers(args.rounds, args.calls, provider)
            flush_logs()  # the access log's last batch, still into /dev/null
            provider.shutdown()
        return client, server

    client, server = asyncio.run(run())
    print(f"CPU per call over a null transport, medians of {args.rounds} alternating rounds "
          f"of {args.calls} calls (added: median of per-round differences with bare)\n")
    print(table("client", client))
    print()
    print(table("server", server))
    sys.stdout.flush()
    return 0


def _variant_names() -> dict[str, list[str]]:
    """The variants of each side (``client``, ``server``), in table order."""
    from benchmarks.stacks import Secrets

    with tempfile.TemporaryDirectory() as d:
        secrets = Secrets(Path(d))
        secrets.create()
        server_names = list(_server_variants(None, secrets))
    return {"client": list(_client_variants(None)), "server": server_names}


def _print_instructions(which: str) -> int:
    """``--instructions``: a table per side of instructions per call and what each variant
    adds to ``bare``."""
    sides = _variant_names()
    wanted = None if which == "all" else set(which.split(","))
    print("Instructions per call over a null transport (callgrind, 1300 - 300 calls)\n")
    for side, names in sides.items():
        picked = [n for n in names if wanted is None or n in wanted or n == "bare"]
        got = {n: instructions(side, n) for n in picked}
        bare = got["bare"]
        print(f"| {side} variant | instructions/call | added to bare |\n|---|---:|---:|")
        for n, v in got.items():
            print(f"| {n} | {v:,.0f} | {v - bare:+,.0f} |")
        print()
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
