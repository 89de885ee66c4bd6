"""``meshkit services``, ``meshkit call`` and ``meshkit prometheus-targets`` as a user runs
them (the installed command in a subprocess) against real in-process servers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import duration_pb2, wrappers_pb2
from grpc_health.v1 import health_pb2

import meshkit
from meshkit.auth import (
    AuthOptions,
    IssuerOptions,
    JWTVerifier,
    KeySet,
    TokenIssuer,
    VerifierOptions,
)
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

protos, services = grpc.protos_and_services("tests/cli/greeter.proto")
_T = TypeVar("_T")


class Greeter(services.GreeterServicer):  # type: ignore[misc,name-defined]
    """Greets; the name ``missing`` is NOT_FOUND."""

    async def SayHello(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.name == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such person")
        return protos.HelloReply(message=f"Hello, {request.name}!",
                                 peers=[request.name] * request.times)


class Echoer(services.EchoerServicer):  # type: ignore[misc,name-defined]
    """A second service with a method of the same name; ``Headers`` answers the request
    metadata it received (a binary value as ``BIN:<hex>``); ``Wrap`` answers an ``Any``
    holding a ``HelloReply`` with the request's ``Any`` type URL as its message, but for an
    empty request a ``Duration`` of 3 s (a well-known type the proto does not import), and
    for a ``StringValue`` "unknown" a ``grpc.health.v1.HealthCheckResponse`` (SERVING), a
    type of a file the service's proto does not import (the server's reflection describes
    it: ``serve()`` serves health)."""

    async def SayHello(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return protos.HelloReply(message=request.name)

    async def Headers(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return protos.HeadersReply(md={
            k: v if isinstance(v, str) else "BIN:" + v.hex()
            for k, v in context.invocation_metadata() or ()})

    async def Wrap(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        out = protos.Wrapped()
        text = wrappers_pb2.StringValue()
        if not request.payload.type_url:
            out.payload.Pack(duration_pb2.Duration(seconds=3))
        elif request.payload.Unpack(text) and text.value == "unknown":
            out.payload.Pack(health_pb2.HealthCheckResponse(status=1))
        else:
            out.payload.Pack(protos.HelloReply(message=request.payload.type_url))
        return out


def uri(registry: LocalRegistry) -> str:
    """The registry's URI with its test timings."""
    o = registry.options
    return f"local://{o.path}?ttl_s={o.ttl_s}&poll_interval_s={o.poll_interval_s}"


async def meshkit_cli(*args: str, stdin: bytes | None = None,
                      env_extra: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``meshkit ARGS`` (the CLI module of this checkout) with no ``MESHKIT_*`` from the
    caller's environment but ``env_extra``; (status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env.update(env_extra or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshkit.cli", *args, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def at_once(*runs: Awaitable[_T], limit: int = 4) -> list[_T]:
    """``runs`` (commands: independent subprocesses) run together, at most ``limit`` at a
    time (a loaded 2-core box starts a few Pythons at once well, not a dozen); their
    results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(run: Awaitable[_T]) -> _T:
        async with gate:
            return await run

    return list(await asyncio.gather(*(one(r) for r in runs)))


@pytest.fixture
async def greeter(registry: LocalRegistry) -> AsyncIterator[meshkit.MeshServer]:
    """A plaintext ``greeter`` instance serving Greeter and Echoer, with its admin server."""
    server = meshkit.MeshServer(
        "greeter", [(services.add_GreeterServicer_to_server, Greeter()),
                    (services.add_EchoerServicer_to_server, Echoer())],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="greeter-1",
                                     drain_delay_s=0, grace_s=1))
    await server.start()
    yield server
    await server.drain()


@pytest.fixture
async def jwt_greeter(registry: LocalRegistry) -> AsyncIterator[tuple[meshkit.MeshServer, str]]:
    """A plaintext ``greeter`` whose every method (reflection's too) needs a bearer token
    (meshkit's JWT auth with its defaults), and a valid token for it."""
    issuer, audience = "https://issuer.clitest", "greeter"
    keys = KeySet.generate()
    verifier = JWTVerifier(VerifierOptions(issuer=issuer, audience=audience), keys)
    token = TokenIssuer(keys, IssuerOptions(issuer=issuer, audience=audience)).issue("ops")
    server = meshkit.MeshServer(
        "greeter", [(services.add_GreeterServicer_to_server, Greeter()),
                    (services.add_EchoerServicer_to_server, Echoer())],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="greeter-jwt",
                                     drain_delay_s=0, grace_s=1,
                                     auth=AuthOptions(verifier=verifier, check_peers=False)))
    await server.start()
    yield server, token
    await server.drain()


async def test_call_resolves_each_target_form(greeter: meshkit.MeshServer,
                                              registry: LocalRegistry) -> None:
    """``SERVICE/pkg.Svc/Method``, ``SERVICE/Svc/Method`` and ``/pkg.Svc/Method`` (the mesh
    service found by reflection) each make the call and print the response as JSON; the
    request may come from stdin."""
    reg = ["--registry", uri(registry), "--insecure"]
    full, short, found = await at_once(
        meshkit_cli("call", "greeter/meshkit.clitest.Greeter/SayHello",
                    '{"name": "Ada", "times": 2}', *reg),
        meshkit_cli("call", "greeter/Echoer/SayHello", "-", *reg, stdin=b'{"name": "echo"}'),
        meshkit_cli("call", "/meshkit.clitest.Greeter/SayHello", '{"name": "Bo"}', *reg))
    code, out, err = full
    assert code == 0, err
    assert json.loads(out) == {"message": "Hello, Ada!", "peers": ["Ada", "Ada"]}
    code, out, err = short
    assert (code, json.loads(out)) == (0, {"message": "echo"}), err
    code, out, err = found
    assert (code, json.loads(out)) == (0, {"message": "Hello, Bo!"}), err


async def test_call_failures_exit_non_zero_with_the_status(greeter: meshkit.MeshServer,
                                                           registry: LocalRegistry) -> None:
    """A failed call exits 64 + its gRPC code with the status on stderr; an ambiguous,
    unknown or streaming method, bad JSON and missing transport security are usage
    errors (2) saying what is wrong."""
    reg = ["--registry", uri(registry), "--insecure"]
    cases = {
        ("greeter/SayHello", "{}"): "ambiguous",
        ("greeter/Greeter/Nope", "{}"): "serves no method 'Nope'",
        ("greeter/Greeter/SayHellos", "{}"): "streaming method",
        ("greeter/Greeter/SayHello", '{"nom": 1}'): "not a valid meshkit.clitest.HelloRequest",
        ("greeter", "{}"): "target must be",
    }
    failed, no_security, *usage = await at_once(
        meshkit_cli("call", "greeter/Greeter/SayHello", '{"name": "missing"}', *reg),
        meshkit_cli("call", "greeter/Greeter/SayHello", "--registry", uri(registry)),
        *(meshkit_cli("call", target, body, *reg) for target, body in cases))
    code, out, err = failed
    assert (code, out) == (64 + 5, "") and "NOT_FOUND: no such person" in err
    for ((target, _), says), (code, _, err) in zip(cases.items(), usage, strict=True):
        assert code == 2 and says in err, (target, err)
    code, _, err = no_security
    assert code == 2 and "MESHKIT_CERT_DIR" in err


async def test_services_lists_ready_and_failing_instances(greeter: meshkit.MeshServer,
                                                          registry: LocalRegistry) -> None:
    """The live instance is listed with its admin URL and ``ready``; an instance whose
    heartbeat stopped without a deregistration (its process died) shows as ``failing``;
    a deregistered one is not listed."""
    dead_reg = LocalRegistry(LocalOptions(path=registry.options.path, ttl_s=0.5))
    dead = Instance(service="greeter", instance_id="greeter-dead", host="127.0.0.1",
                    port=9, meta={"admin_port": "9"})
    gone = Instance(service="other", instance_id="other-1", host="127.0.0.1", port=9)
    await dead_reg.register(dead)
    await dead_reg.register(gone)
    await dead_reg.deregister(gone)
    await dead_reg.close()  # stops the heartbeat, as SIGKILL would
    await until(lambda: _failing(registry), timeout_s=5, what="the heartbeat to lapse")
    (code, out, err), as_json = await at_once(
        meshkit_cli("services", "--registry", uri(registry)),
        meshkit_cli("services", "--registry", uri(registry), "--json"))
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["SERVICE", "INSTANCE", "ADDRESS", "HEALTH", "ADMIN"]
    assert rows[1:] == [
        ["greeter", "greeter-1", greeter.instance.address, "ready",  # type: ignore[union-attr]
         f"http://127.0.0.1:{greeter.admin.port}"],  # type: ignore[union-attr]
        ["greeter", "greeter-dead", "127.0.0.1:9", "failing", "http://127.0.0.1:9"],
    ], out
    code, out, _ = as_json
    assert code == 0 and [r["instance_id"] for r in json.loads(out)] == [
        "greeter-1", "greeter-dead"]


async def test_prometheus_targets_watch_ctrl_c_is_one_line_and_130(tmp_path: Path) -> None:
    """Ctrl-C on ``meshkit prometheus-targets --watch`` ended it with status 0 and nothing
    on stderr, like SIGTERM, so a script could not tell an interrupted watcher from one
    that finished. It now stops as cleanly (the pass under way ends, the registry is
    closed) and then reports the interrupt as every command does: one line on stderr and
    status 130. SIGTERM, a supervisor's stop, still ends it with 0."""
    out = tmp_path / "targets.json"
    existing = LocalRegistry(LocalOptions(path=tmp_path / "reg"))  # a missing one: a line
    await existing.services()
    await existing.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshkit.cli", "prometheus-targets", "--registry",
        f"local://{tmp_path / 'reg'}", "--out", str(out), "--watch", "--interval-s", "0.2",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await until(out.exists, timeout_s=30, what="the watcher's first pass")
        proc.send_signal(signal.SIGINT)  # its handlers are in place: the pass is written
        stdout, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert (proc.returncode, stdout) == (130, b""), err
    assert err.decode().splitlines() == ["meshkit: interrupted"], err


async def _failing(registry: LocalRegistry) -> bool:
    return bool(await registry.failing("greeter"))


async def test_prometheus_targets_one_shot_and_watch(greeter: meshkit.MeshServer,
                                                     registry: LocalRegistry,
                                                     tmp_path: Path) -> None:
    """One pass writes each instance's admin address with its labels; ``--watch`` follows
    the registry: a second instance appears, a drained one leaves at once, and SIGTERM
    ends it with status 0."""
    out = tmp_path / "targets.json"
    code, _, err = await meshkit_cli("prometheus-targets", "--registry", uri(registry),
                                     "--out", str(out))
    assert code == 0, err
    assert json.loads(out.read_text()) == [{
        "targets": [f"127.0.0.1:{greeter.admin.port}"],  # type: ignore[union-attr]
        "labels": {"mesh_service": "greeter", "mesh_instance": "greeter-1",
                   "__meta_meshkit_health": "passing"}}]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    watch = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshkit.cli", "prometheus-targets", "--registry",
        uri(registry), "--out", str(out), "--watch", "--interval-s", "0.1", env=env)

    def instances() -> list[str]:
        try:
            return [g["labels"]["mesh_instance"] for g in json.loads(out.read_text())]
        except (OSError, ValueError):  # never half a file: a failure here is a bug
            raise AssertionError(f"unreadable targets file: {out.read_text()!r}") from None

    second = meshkit.MeshServer("greeter", [(services.add_GreeterServicer_to_server,
                                             Greeter())], registry=registry,
                                options=meshkit.ServeOptions(insecure=True,
                                                             instance_id="greeter-2",
                                                             drain_delay_s=0, grace_s=1))
    try:
        await second.start()
        # the second server shares this process's admin server: one target, both named
        await until(lambda: instances() == ["greeter-1,greeter-2"], timeout_s=10,
                    what="the second instance in the targets")
        await second.drain()
        await until(lambda: instances() == ["greeter-1"], timeout_s=10,
                    what="the drained instance to leave the targets")
    finally:
        watch.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(watch.wait(), 10) == 0


async def test_services_on_an_unreadable_registry_is_one_line(tmp_path: Path) -> None:
    """A registry that cannot be read (its directory is a file) ends ``meshkit services``
    with one line saying so and exit 1, with or without ``--service``: no traceback."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    bad = ["--registry", f"local://{blocker / 'registry'}", "--timeout-s", "1"]
    onlys: tuple[list[str], ...] = ([], ["--service", "greeter"])
    results = await at_once(*(meshkit_cli("services", *bad, *only) for only in onlys))
    for only, (code, out, err) in zip(onlys, results, strict=True):
        assert (code, out) == (1, ""), (only, err)
        assert "Traceback" not in err, (only, err)
        assert "the registry cannot be read: local registry" in err.splitlines()[-1], err


async def test_an_unreadable_registry_is_one_line_on_stderr(tmp_path: Path) -> None:
    """A local registry whose file is no database: ``meshkit services`` and
    ``prometheus-targets`` exit 1 with one line on stderr (the README: "one line on
    stderr"); the library's own watch warning came first, a second line (it shows with
    ``MESHKIT_LOG_LEVEL=WARNING``)."""
    bad = tmp_path / "reg"
    bad.mkdir()
    (bad / "registry.db").write_bytes(b"this is not an SQLite database file" * 200)
    registry = ["--registry", f"local://{bad}", "--timeout-s", "2"]
    commands = (["services"], ["prometheus-targets", "--out", str(tmp_path / "t.json")])
    results = await at_once(*(meshkit_cli(*command, *registry) for command in commands))
    for command, (code, out, err) in zip(commands, results, strict=True):
        lines = [line for line in err.splitlines() if line.strip()]
        assert (code, out, len(lines)) == (1, "", 1), (command, lines)


async def test_a_bad_meshkit_log_level_is_a_usage_error(tmp_path: Path) -> None:
    """``MESHKIT_LOG_LEVEL=verbose`` ends each command with one line naming the log level
    and exit 2 (a usage error), not a ConfigError traceback and exit 1 (for ``services``:
    "no instance or the registry cannot be read")."""
    env = {"MESHKIT_LOG_LEVEL": "verbose"}
    reg = ["--registry", f"local://{tmp_path / 'reg'}", "--timeout-s", "2"]
    commands = (["call", "greeter/Greeter/SayHello", "{}", "--insecure"], ["services"],
                ["prometheus-targets", "--out", str(tmp_path / "t.json")])
    results = await asyncio.gather(*(meshkit_cli(*c, *reg, env_extra=env) for c in commands))
    for command, (code, out, err) in zip(commands, results, strict=True):
        assert (code, out) == (2, ""), (command, code, err[-400:])
        assert len(err.splitlines()) == 1 and "log level" in err.lower(), (command, err)
    assert not (tmp_path / "t.json").exists()


async def test_an_empty_meshkit_log_level_is_unset(tmp_path: Path) -> None:
    """An empty ``MESHKIT_LOG_LEVEL`` (``MESHKIT_LOG_LEVEL= meshkit services``) is unset,
    as an empty ``MESHKIT_REGISTRY`` is: the commands' quiet default (ERROR) holds, so an
    unreadable registry is the command's one line, not the library's warning first."""
    bad = tmp_path / "reg"
    bad.mkdir()
    (bad / "registry.db").write_bytes(b"this is not an SQLite database file" * 200)
    code, out, err = await meshkit_cli("services", "--registry", f"local://{bad}",
                                       "--timeout-s", "2", env_extra={"MESHKIT_LOG_LEVEL": ""})
    lines = [line for line in err.splitlines() if line.strip()]
    assert (code, out) == (1, ""), err
    assert len(lines) == 1 and "registry cannot be read" in lines[0], lines


async def test_call_any_fields_use_the_server_types(greeter: meshkit.MeshServer,
                                                    registry: LocalRegistry) -> None:
    """A ``google.protobuf.Any`` of a type the server's reflection described is parsed in
    the request and printed in the response (``@type`` and the fields)."""
    body = json.dumps({"payload": {"@type": "type.googleapis.com/meshkit.clitest.HelloRequest",
                                   "name": "x"}})
    code, out, err = await meshkit_cli("call", "greeter/Echoer/Wrap", body, "--registry",
                                       uri(registry), "--insecure")
    assert code == 0, err
    assert json.loads(out) == {"payload": {
        "@type": "type.googleapis.com/meshkit.clitest.HelloReply",
        "message": "type.googleapis.com/meshkit.clitest.HelloRequest"}}


async def test_call_headers(greeter: meshkit.MeshServer, registry: LocalRegistry) -> None:
    """``-H`` sends text metadata as typed and a ``-bin`` key's value base64-decoded
    (standard or URL-safe alphabet, padding optional), as grpcurl does. A value that is not
    base64, a key gRPC cannot send (a reserved ``grpc-`` one included) and a header
    without ``:`` are usage errors (2) that name the key (one of a key's shape) and never
    print a value (it is often a bearer token)."""
    reg = ["--registry", uri(registry), "--insecure"]
    secret = "eyJhbGciOiJFUzI1NiJ9.c2VjcmV0.SIGNATURE-do-not-print"
    cases = {("-H", f"authorization=Bearer {secret}"): "'authorization'",
             ("-H", f"Bearer {secret}"): "no ':'",
             ("-H", f"x-bin: {secret}!"): "'x-bin'",
             ("-H", f"x trace: {secret}"): "(not quoted: it holds ' ')",
             ("-H", f"x-text: {secret}\u00e9"): "'x-text'",
             ("-H", f"Grpc-Status: {secret}"): "'grpc-status'",
             ("-H", f"grpc-trace-bin: {secret}"): "'grpc-trace-bin'"}
    (code, out, err), *refused = await at_once(
        meshkit_cli("call", "greeter/Headers", *reg, "-H", "X-Text: a b",
                    "-H", "trace-bin: AAEC", "-H", "url-bin: -_8"),
        *(meshkit_cli("call", "greeter/Headers", *reg, *header) for header in cases))
    assert code == 0, err
    md = json.loads(out)["md"]
    assert (md["x-text"], md["trace-bin"], md["url-bin"]) == ("a b", "BIN:000102", "BIN:fbff")
    for (header, says), (code, out, err) in zip(cases.items(), refused, strict=True):
        assert (code, out) == (2, ""), (header, err)
        assert says in err and secret not in err, (header, err)


async def test_call_header_error_never_prints_part_of_a_value(tmp_path: Path) -> None:
    """``-H 'authorization=Bearer <id>:<secret>'`` (``=`` for ``:``, with a token that
    holds a ``:``: an API key ``id:secret``, a Basic pair not yet base64-encoded) splits at
    that ``:``, so the "key" is ``authorization=bearer <id>``: the usage error describes it
    without quoting it (it printed the token's first part, lower-cased), and still says
    what is wrong with it. A key of a key's shape is still quoted."""
    first, rest = "s3cr3tkeyid", "s3cr3tvalue"
    reg = ["--registry", f"local://{tmp_path / 'reg'}", "--insecure"]
    cases = {f"authorization=Bearer {first}:{rest}": "'='",
             f"Bearer {first}:{rest}": "' '",
             f"grpc-x=Bearer {first}:{rest}": "'='",
             f"x=Bearer {first}-bin:{rest}": "'='",
             f"Authorization: {first}\u00e9": "'authorization'"}
    results = await asyncio.gather(*(
        meshkit_cli("call", "greeter/SayHello", "{}", *reg, "-H", header) for header in cases))
    for (header, says), (code, out, err) in zip(cases.items(), results, strict=True):
        assert (code, out) == (2, ""), (header, err)
        assert first not in err.lower() and rest not in err.lower(), (header, err)
        assert "Traceback" not in err and says in err, (header, err)


async def test_usage_errors_exit_2(tmp_path: Path) -> None:
    """A bad registry URI and a ``--timeout-s`` that is not a positive finite number of
    seconds are usage errors (exit 2, one line naming the problem) for ``meshkit call`` and
    ``meshkit services``."""
    call = ["call", "greeter/SayHello", "{}", "--insecure"]
    empty = f"local://{tmp_path / 'r'}"
    cases = [(*call, "--registry", "bogus://nowhere"), ("services", "--registry", "bogus://x")]
    cases += [(*cmd, "--registry", empty, "--timeout-s", bad)
              for cmd in (call, ["services"]) for bad in ("inf", "nan", "-1", "0", "soon")]
    results = await asyncio.gather(*(meshkit_cli(*args) for args in cases))
    for args, (code, out, err) in zip(cases, results, strict=True):
        assert (code, out) == (2, ""), (args, err)
        assert "Traceback" not in err, (args, err)
        assert ("unknown registry URI" in err if "--timeout-s" not in args
                else "--timeout-s" in err), (args, err)


async def test_an_unbalanced_bracket_in_the_registry_uri_is_a_usage_error() -> None:
    """``meshkit services --registry 'consul://[::1:8500'`` (a typo'd IPv6 literal)
    printed a traceback ending in urllib's ``ValueError: Invalid IPv6 URL``; it is a usage
    error (exit 2, one line quoting the URI) as any other bad registry URI."""
    cases = [("services", "--registry", "consul://[::1:8500"),
             ("services", "--registry", "etcd://root:SECRETXYZ@[::1:2379")]
    results = await asyncio.gather(*(meshkit_cli(*args, "--timeout-s", "2")
                                     for args in cases))
    for args, (code, out, err) in zip(cases, results, strict=True):
        assert (code, out) == (2, ""), (args, err)
        assert "Traceback" not in err and "SECRETXYZ" not in err, (args, err)
        assert "[::1:" in err and len(err.strip().splitlines()) == 1, (args, err)


async def test_registry_usage_errors_never_print_a_password() -> None:
    """A registry URI or address refused for its form is quoted with its user info and
    the values of query keys that are no option masked: ``--registry
    https://root:<password>@host:2379`` (an unknown scheme), ``etcd://root:<password>@...``
    (etcdctl's ``--user`` moved into the URI), ``etcd://...?password=...`` and
    ``ETCDCTL_ENDPOINTS`` or ``CONSUL_HTTP_ADDR`` with user info printed the password on
    stderr."""
    secret = "S3cretPw-do-not-print"
    cases: list[tuple[tuple[str, ...], dict[str, str], str]] = [
        (("--registry", f"https://root:{secret}@127.0.0.1:2379"), {}, "unknown registry URI"),
        (("--registry", f"etcds://root:{secret}@127.0.0.1:2379"), {}, "unknown registry URI"),
        (("--registry", f"etcd://root:{secret}@127.0.0.1:2379"), {}, "user info"),
        (("--registry", f"etcd://127.0.0.1:2379?ttl_s=5&password={secret}"), {},
         "unknown option 'password'"),
        (("--registry", "etcd://"), {"ETCDCTL_ENDPOINTS": f"http://root:{secret}@127.0.0.1:2379"},
         "must be host:port"),
        (("--registry", "consul://"), {"CONSUL_HTTP_ADDR": f"http://acl:{secret}@127.0.0.1:8500"},
         "must be host:port"),
    ]
    results = await asyncio.gather(*(
        meshkit_cli("services", *args, "--timeout-s", "2", env_extra=env)
        for args, env, _ in cases))
    for (args, env, says), (code, out, err) in zip(cases, results, strict=True):
        assert (code, out) == (2, ""), (args, env, err)
        assert secret not in err, (args, env, err)
        assert says in err and "***" in err, (args, env, err)


async def test_prometheus_targets_durations_are_usage_errors(tmp_path: Path) -> None:
    """``prometheus-targets`` refuses ``--timeout-s``/``--interval-s`` that are not positive
    finite seconds and a ``--keep-failing-s`` below 0 or NaN: usage errors (exit 2), no
    file written (NaN was taken as no bound)."""
    out = tmp_path / "targets.json"
    base = ["prometheus-targets", "--registry", f"local://{tmp_path / 'r'}", "--out", str(out)]
    cases = [["--timeout-s", "nan"], ["--timeout-s", "-1"], ["--interval-s", "inf"],
             ["--interval-s", "0"], ["--keep-failing-s", "nan"], ["--keep-failing-s", "-1"]]
    results = await asyncio.gather(*(meshkit_cli(*base, *case) for case in cases))
    for case, (code, _, err) in zip(cases, results, strict=True):
        assert code == 2 and case[0] in err, (case, err)
    assert not out.exists()


async def _into_closed_pipe(*args: str) -> tuple[int, str]:
    """Run ``meshkit ARGS`` with stdout a pipe whose reader is gone (``| head -0``);
    (status, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    r, w = os.pipe()
    os.close(r)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshkit.cli", *args, env=env, stdout=w,
            stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    finally:
        os.close(w)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_a_closed_stdout_pipe_ends_quietly_with_141(greeter: meshkit.MeshServer,
                                                          registry: LocalRegistry) -> None:
    """``meshkit ... | head -1``: when the reader of stdout is gone, every command ends
    with status 141 (128 + SIGPIPE, as a shell reports a filter killed by SIGPIPE) and
    nothing on stderr: no BrokenPipeError traceback, not even at the interpreter's exit."""
    reg = ["--registry", uri(registry)]
    commands = (("call", "greeter/Greeter/SayHello", '{"name": "Ada"}', *reg, "--insecure"),
                ("services", *reg), ("services", "--json", *reg), ("version",),
                ("--help",))
    *results, (code, err) = await at_once(
        *(_into_closed_pipe(*args) for args in commands),
        _into_closed_pipe("services", "--help"))  # argparse drops the error
    for args, result in zip(commands, results, strict=True):
        assert result == (141, ""), (args, result)
    assert (code, err) in ((0, ""), (141, "")), (code, err)


class _NeverAnswers(grpc.GenericRpcHandler):
    """Every method (reflection's too) takes the call and never answers; ``called`` is set
    once a call has come."""

    def __init__(self) -> None:
        self.called = asyncio.Event()

    def service(self, handler_call_details: Any) -> Any:
        async def wait(requests: Any, context: Any) -> Any:
            self.called.set()
            await asyncio.sleep(3600)
            yield b""  # pragma: no cover - never reached

        return grpc.stream_stream_rpc_method_handler(wait)


def _ctrl_c_armed_env(tmp_path: Path, sitecustomize: str = "") -> dict[str, str]:
    """The environment, without ``MESHKIT_*``, of a child whose SIGINT is armed even when
    this process inherited it ignored: ``sitecustomize`` (default :data:`_CTRL_C_ARMED`)
    is written to ``tmp_path``, which leads ``PYTHONPATH``."""
    (tmp_path / "sitecustomize.py").write_text(sitecustomize or _CTRL_C_ARMED)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path),
                                                      env.get("PYTHONPATH", "")]))
    return env


async def test_call_interrupted_by_ctrl_c_is_one_line_and_130(tmp_path: Path) -> None:
    """Ctrl-C while ``meshkit call`` waits on a server that never answers ends it with one
    line on stderr and status 130 (128 + SIGINT), no traceback, nothing on stdout. (The
    server speaks HTTP/2 and holds every call: a listener that never speaks it fails the
    connection on a loaded machine before the signal comes. The signal is sent once the
    server holds the command's first call: a fixed delay could land in the command's
    start-up on a loaded machine, which the next test covers.)"""
    server = grpc.aio.server()
    hole = _NeverAnswers()
    server.add_generic_rpc_handlers((hole,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=5.0, poll_interval_s=0.05))
    try:
        await reg.register(Instance(service="hole", instance_id="h1", host="127.0.0.1",
                                    port=port))
        env = _ctrl_c_armed_env(tmp_path)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshkit.cli", "call", "hole/Anything", "{}",
            "--registry", f"local://{tmp_path / 'reg'}", "--insecure", "--timeout-s", "30",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(30):
            await hole.called.wait()
        await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        await reg.close()
        await server.stop(None)
    assert (proc.returncode, out) == (130, b""), err
    assert err.decode().splitlines() == ["meshkit: interrupted"], err


# A command started in the background of a non-interactive shell (``make test &``, a CI
# runner's job) inherits SIGINT ignored (POSIX), and Python and ``meshkit`` keep it so, as a
# one-shot command should. On PYTHONPATH, Python's ``site`` imports it at start-up and arms
# SIGINT as a terminal's foreground command has it, so the Ctrl-C tests do not depend on
# how the suite was started.
_CTRL_C_ARMED = """
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)
"""

# With _CTRL_C_ARMED: when the command's imports reach ``grpc`` the process sends itself
# SIGINT, a Ctrl-C while the command is still loading.
_CTRL_C_DURING_IMPORT = _CTRL_C_ARMED + """
import os, sys

class _CtrlC:
    fired = False

    def find_spec(self, name, path=None, target=None):
        if name == "grpc" and not _CtrlC.fired:
            _CtrlC.fired = True
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, _CtrlC())
"""


async def test_ctrl_c_while_the_command_loads_is_one_line_and_130(tmp_path: Path) -> None:
    """A Ctrl-C while ``meshkit`` is still loading (grpc, aiohttp, cryptography: a third of
    a second unloaded, seconds on a loaded machine) ends it like one while it runs: one
    line, status 130. It was a KeyboardInterrupt traceback and status -2, since the
    console script's ``from meshkit.cli import main`` ran ``meshkit/__init__``, which
    loaded all of them, before ``main()``'s ``try``; ``import meshkit`` now loads nothing
    until a name is used. Run as the installed console script runs it."""
    env = _ctrl_c_armed_env(tmp_path, _CTRL_C_DURING_IMPORT)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from meshkit.cli import main; sys.exit(main())",
        "services", "--registry", f"local://{tmp_path / 'reg'}", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = err.decode(errors="replace").splitlines()
    assert (proc.returncode, out, lines) == (130, b"", ["meshkit: interrupted"]), \
        (proc.returncode, out, lines[-3:])


async def test_call_request_must_be_a_json_object(greeter: meshkit.MeshServer,
                                                  registry: LocalRegistry) -> None:
    """A request that is JSON but not an object (``[]``, ``""``, ``1``, ``null``) is a
    usage error (exit 2, one line naming the message type): nothing is sent."""
    reg = ["--registry", uri(registry), "--insecure"]
    bodies = ("[]", '""', "1", "null", "[1")
    results = await at_once(*(meshkit_cli("call", "greeter/Greeter/SayHello", body, *reg)
                              for body in bodies))
    for body, (code, out, err) in zip(bodies, results, strict=True):
        assert (code, out) == (2, ""), (body, code, out, err)
        assert len(err.splitlines()) == 1 and "request" in err, (body, err)


async def test_call_request_nested_too_deeply_is_a_usage_error(
        greeter: meshkit.MeshServer, registry: LocalRegistry) -> None:
    """A request nested deeper than Python's JSON parser (or protobuf's) goes is a usage
    error (exit 2, one line), not a RecursionError traceback."""
    reg = ["--registry", uri(registry), "--insecure"]
    deep_struct = '{"payload": {"@type": "type.googleapis.com/google.protobuf.Struct", ' \
        '"value": ' + '{"a": ' * 900 + "1" + "}" * 900 + "}}"
    cases = (("greeter/Greeter/SayHello", b"[" * 100_000),
             ("greeter/Echoer/Wrap", deep_struct.encode()))
    results = await at_once(*(meshkit_cli("call", target, "-", *reg, stdin=body)
                              for target, body in cases))
    for (target, _), (code, out, err) in zip(cases, results, strict=True):
        assert (code, out) == (2, ""), (target, code, err[-500:])
        assert len(err.splitlines()) == 1 and "request" in err, (target, err[-500:])


async def test_call_request_on_stdin_that_is_not_utf8_is_a_usage_error(
        tmp_path: Path) -> None:
    """``meshkit call SERVICE/Method - < request.json`` with a request that is not UTF-8
    (a Latin-1 ``é``) ended in a ``UnicodeDecodeError`` traceback and status 1 in a UTF-8
    locale (``PYTHONIOENCODING=utf-8`` here, the same strict decoding of stdin): the
    command read stdin as text. It now reads the bytes and takes them as UTF-8, as JSON
    text is (RFC 8259 8.1): anything else is a usage error, one line, status 2."""
    code, out, err = await meshkit_cli(
        "call", "greeter/Greeter/SayHello", "-", "--insecure",
        "--registry", f"local://{tmp_path / 'reg'}",
        stdin='{"name": "Jos\u00e9"}'.encode("latin-1"),
        env_extra={"PYTHONIOENCODING": "utf-8"})
    assert (code, out) == (2, ""), (code, err[-500:])
    assert len(err.splitlines()) == 1 and "UTF-8" in err, err


async def test_call_any_of_a_well_known_type_or_one_of_another_file(
        greeter: meshkit.MeshServer, registry: LocalRegistry) -> None:
    """An ``Any`` holding a well-known type (the proto does not import it) is sent and
    printed in the proto3 JSON form; so is a response ``Any`` of a type the server's
    reflection describes in a file the proto does not import (health's: its type is looked
    up through reflection). One of a type nobody describes prints as ``@type`` and the
    base64 ``@value``: tests/cli/test_call_json.py."""
    reg = ["--registry", uri(registry), "--insecure"]
    sent = '{"payload": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "3s"}}'
    other = json.dumps({"payload": {
        "@type": "type.googleapis.com/google.protobuf.StringValue", "value": "unknown"}})
    answered, echoed, health = await at_once(
        *(meshkit_cli("call", "greeter/Echoer/Wrap", body, *reg) for body in ("{}", sent, other)))
    code, out, err = answered
    assert code == 0, err
    assert json.loads(out) == {"payload": {
        "@type": "type.googleapis.com/google.protobuf.Duration", "value": "3s"}}
    code, out, err = echoed
    assert code == 0, err
    assert json.loads(out)["payload"]["message"] == \
        "type.googleapis.com/google.protobuf.Duration"
    code, out, err = health
    assert (code, err) == (0, "")
    assert json.loads(out) == {"payload": {
        "@type": "type.googleapis.com/grpc.health.v1.HealthCheckResponse", "status": "SERVING"}}


async def test_timeout_s_bounds_the_registry_listing(tmp_path: Path) -> None:
    """With a registry that accepts connections and never answers (a hung Consul agent),
    ``services`` (with ``--service`` too: no listing first) and ``prometheus-targets``
    give up ``--timeout-s`` in (exit 1, one line: the registry cannot be read), and
    ``call`` exits 78 (UNAVAILABLE) for every target form (not DEADLINE_EXCEEDED for a
    ``SERVICE/...`` one, whose reflection request waited on discovery). Each command is
    timed from its first connection to the registry to its line on stderr (when it gave
    up), within 2.5 s: neither the interpreter's start nor its finalization, which a
    loaded box stretches to seconds, is counted against the bound. (Exit was timed
    before: ``prometheus-targets`` took 5.7 s in a CI run at load ~24 with its line on
    time; finalizing the interpreter after the line is about 150 ms of CPU and no system
    call when quiet, 1.2-1.5 s beside 10 busy loops.) A command that ignored
    ``--timeout-s`` gives up at its default (3, 5, 10 s) and fails the bound. The
    commands run together (at most 3 at a time), each against a hole of its own."""
    loop = asyncio.get_running_loop()
    held: list[asyncio.StreamWriter] = []
    holes: list[asyncio.Server] = []

    async def bounded(*args: str, status: int) -> None:
        connected: list[float] = []

        async def hang(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connected.append(loop.time())
            held.append(writer)  # never answered; closed at the end

        hole = await asyncio.start_server(hang, "127.0.0.1", 0, backlog=64)
        holes.append(hole)
        registry = f"consul://127.0.0.1:{hole.sockets[0].getsockname()[1]}"
        argv = [registry if a == "REGISTRY" else a for a in args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshkit.cli", *argv, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        reading = asyncio.ensure_future(proc.stdout.read())
        said: list[float] = []
        lines: list[bytes] = []
        async with asyncio.timeout(30):
            while line := await proc.stderr.readline():
                said.append(loop.time())
                lines.append(line)
            out = (await reading).decode()
            code = await proc.wait()
        err = b"".join(lines).decode()
        assert (code, out) == (status, ""), (argv, code, err)
        assert connected, f"{args[0]} never connected to the registry: {err}"
        took = said[0] - connected[0]
        assert took < 2.5, f"{args[0]} --timeout-s 1 gave up after {took:.1f} s: {err}"
        assert len(err.splitlines()) == 1 and "registry cannot be read" in err, err

    try:
        await at_once(
            bounded("services", "--registry", "REGISTRY", "--timeout-s", "1", status=1),
            bounded("services", "--service", "greeter", "--registry", "REGISTRY",
                    "--timeout-s", "1", status=1),
            bounded("prometheus-targets", "--registry", "REGISTRY", "--timeout-s", "1",
                    "--out", str(tmp_path / "targets.json"), status=1),
            bounded("call", "/meshkit.clitest.Greeter/SayHello", "{}", "--registry",
                    "REGISTRY", "--insecure", "--timeout-s", "1", status=64 + 14),
            bounded("call", "greeter/meshkit.clitest.Greeter/SayHello", "{}", "--registry",
                    "REGISTRY", "--insecure", "--timeout-s", "1", status=64 + 14),
            bounded("call", "/meshkit.clitest.Greeter/SayHello", "{}", "--service",
                    "greeter", "--registry", "REGISTRY", "--insecure", "--timeout-s", "1",
                    status=64 + 14),
            limit=3)
    finally:
        for writer in held:
            writer.close()
        for hole in holes:
            hole.close()
            await hole.wait_closed()
    assert not (tmp_path / "targets.json").exists()


async def test_services_repeated_service_option_lists_each_instance_once(
        tmp_path: Path) -> None:
    """``--service`` named twice lists each instance once, a failing one included."""
    path = tmp_path / "reg"
    dead = LocalRegistry(LocalOptions(path=path, ttl_s=0.5, poll_interval_s=0.05))
    await dead.register(Instance(service="s", instance_id="s-dead", host="127.0.0.1", port=9))
    await dead.close()  # no heartbeat, no deregistration: it died
    reader = LocalRegistry(LocalOptions(path=path, ttl_s=0.5, poll_interval_s=0.05))
    try:
        async def lapsed() -> bool:
            return bool(await reader.failing("s"))
        await until(lapsed, timeout_s=10, what="the heartbeat to lapse")
    finally:
        await reader.close()
    reg = ["--registry", f"local://{path}?ttl_s=0.5&poll_interval_s=0.05"]
    code, out, err = await meshkit_cli("services", "--service", "s", "--service", "s", *reg)
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()[1:]]
    assert rows == [["s", "s-dead", "127.0.0.1:9", "failing", "-"]], out


async def test_services_with_no_instance_exits_1_with_one_line(tmp_path: Path) -> None:
    """No instance listed: exit 1 and one line on stderr, in table and ``--json`` mode
    (which still prints ``[]``, a JSON document)."""
    reg = ["--registry", f"local://{tmp_path / 'reg'}"]
    cases = (([], ""), (["--json"], "[]\n"))
    results = await at_once(*(meshkit_cli("services", *reg, *extra) for extra, _ in cases))
    for (extra, stdout), (code, out, err) in zip(cases, results, strict=True):
        assert (code, out) == (1, stdout), (extra, err)
        assert len(err.splitlines()) == 1 and "no instance listed" in err, (extra, err)


async def test_call_exit_status_on_an_unreadable_registry_is_78_for_both_forms(
        tmp_path: Path) -> None:
    """A registry that cannot be read ends ``call`` with ``ERROR: UNAVAILABLE: ...`` and
    78 (64 + UNAVAILABLE) whether the target names the mesh service or not."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    reg = ["--registry", f"local://{blocker / 'registry'}", "--insecure", "--timeout-s", "1"]
    targets = ("greeter/meshkit.clitest.Greeter/SayHello", "/meshkit.clitest.Greeter/SayHello")
    results = await at_once(*(meshkit_cli("call", target, "{}", *reg) for target in targets))
    for target, (code, out, err) in zip(targets, results, strict=True):
        assert (code, out) == (64 + 14, ""), (target, err)
        assert err.splitlines()[-1].startswith("ERROR: UNAVAILABLE: "), err
        assert "registry cannot be read" in err.splitlines()[-1], err


async def test_prometheus_targets_replaces_an_out_file_that_is_not_utf8(
        greeter: meshkit.MeshServer, registry: LocalRegistry, tmp_path: Path) -> None:
    """An ``--out`` file holding bytes that are not UTF-8 differs from the targets: it is
    replaced (exit 0), not a UnicodeDecodeError."""
    out = tmp_path / "targets.json"
    out.write_bytes(b"\xff\xfe[\x00]\x00")
    code, _, err = await meshkit_cli("prometheus-targets", "--registry", uri(registry),
                                     "--out", str(out))
    assert code == 0 and "Traceback" not in err, err
    assert [g["labels"]["mesh_instance"] for g in json.loads(out.read_bytes())] == [
        "greeter-1"]


def test_an_admin_port_of_non_ascii_digits_is_no_admin_port() -> None:
    """An ``admin_port`` meta of digits other than ASCII ones (Arabic-Indic, superscript:
    ``str.isdigit()`` takes them) is no admin port: no admin URL, no Prometheus target
    (a URL or target holding them is no address a client can dial)."""
    from meshkit._cli.prometheus import target_groups
    from meshkit._cli.services import admin_url

    for port in ("\u0669\u0661\u0660\u0660", "9\u00b9", "\uff19\uff11\uff10\uff10", ""):
        inst = Instance(service="echo", instance_id="e1", host="127.0.0.1", port=5000,
                        meta={"admin_port": port})
        assert admin_url(inst) is None, port
        assert target_groups([inst], [inst]) == [], port


def test_admin_url_and_target_of_an_ipv6_host_have_one_pair_of_brackets() -> None:
    """An instance whose host is an IPv6 literal, bracketed (what serve() registers for
    ``ServeOptions(host="[::1]")``) or not, gets one pair of brackets in its admin URL and
    its Prometheus target (RFC 3986 IP-literal), as in ``Instance.address``."""
    from meshkit._cli.prometheus import target_groups
    from meshkit._cli.services import admin_url

    for host in ("[::1]", "::1"):
        inst = Instance(service="echo", instance_id="e1", host=host, port=5000,
                        meta={"admin_port": "9100"})
        assert inst.address == "[::1]:5000"
        assert admin_url(inst) == "http://[::1]:9100", host
        assert target_groups([inst], [])[0]["targets"] == ["[::1]:9100"], host


async def test_call_sends_the_headers_on_the_reflection_requests_too(
        jwt_greeter: tuple[meshkit.MeshServer, str], registry: LocalRegistry) -> None:
    """``-H`` metadata goes on the server-reflection requests (and the probes that find the
    mesh service of a ``/pkg.Svc/Method`` target) as on the call, as grpcurl's does: a
    server that wants the bearer token on every method is called with it."""
    _, token = jwt_greeter
    common = ['{"name": "Ada"}', "--registry", uri(registry), "--insecure",
              "-H", f"authorization: Bearer {token}", "--timeout-s", "5"]
    targets = ("greeter/meshkit.clitest.Greeter/SayHello", "/meshkit.clitest.Greeter/SayHello")
    results = await asyncio.gather(*(meshkit_cli("call", t, *common) for t in targets))
    for target, (code, out, err) in zip(targets, results, strict=True):
        assert (code, err) == (0, ""), (target, code, err)
        assert json.loads(out) == {"message": "Hello, Ada!"}, (target, out)


async def test_call_a_refused_reflection_probe_is_its_rpc_status(
        jwt_greeter: tuple[meshkit.MeshServer, str], registry: LocalRegistry) -> None:
    """A ``/pkg.Svc/Method`` target whose service finding fails on a probe's gRPC status
    (here UNAUTHENTICATED: no token) exits 64 + that code with the status on stderr, as
    the ``SERVICE/...`` form of the same call does, not the usage error "no service in
    the registry serves it" (the one service may well serve it)."""
    reg = ["--registry", uri(registry), "--insecure", "--timeout-s", "5"]
    targets = ("/meshkit.clitest.Greeter/SayHello", "greeter/meshkit.clitest.Greeter/SayHello")
    results = await at_once(*(meshkit_cli("call", target, "{}", *reg) for target in targets))
    for target, (code, out, err) in zip(targets, results, strict=True):
        assert (code, out) == (64 + 16, ""), (target, code, err)
        assert err.splitlines()[-1].startswith("ERROR: UNAUTHENTICATED: "), (target, err)


async def test_call_the_health_service_named_in_full(greeter: meshkit.MeshServer,
                                                     registry: LocalRegistry) -> None:
    """The gRPC health service serve() starts is called when named in full (``SERVICE/
    grpc.health.v1.Health/Check``, or ``/grpc.health.v1.Health/Check``); it is left out
    of matching by method or short name only (``greeter/Check`` serves no such method)."""
    reg = ["--registry", uri(registry), "--insecure", "--timeout-s", "5"]
    targets = ("greeter/Check", "greeter/Health/Check")
    *results, unmatched_check, unmatched_health = await at_once(
        meshkit_cli("call", "greeter/grpc.health.v1.Health/Check", "{}", *reg),
        meshkit_cli("call", "/grpc.health.v1.Health/Check", "{}", "--service", "greeter",
                    *reg),
        meshkit_cli("call", "/grpc.health.v1.Health/Check", "{}", *reg),
        *(meshkit_cli("call", target, "{}", *reg) for target in targets))
    for code, out, err in results:
        assert (code, err) == (0, ""), (code, err)
        assert json.loads(out) == {"status": "SERVING"}, out
    for target, (code, out, err) in zip(targets, (unmatched_check, unmatched_health),
                                        strict=True):
        assert (code, out) == (2, "") and "serves no method 'Check'" in err, (target, err)


class _FailingReadHangs:
    """A registry that lists ``greeter`` and answers its watch at once (no instance), but
    whose ``failing()`` read never answers."""

    async def services(self) -> list[str]:
        return ["greeter"]

    async def _watch(self) -> AsyncIterator[frozenset[Instance]]:
        yield frozenset()
        await asyncio.sleep(3600)

    def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        return self._watch()

    async def failing(self, service: str) -> list[Instance]:
        await asyncio.sleep(3600)
        return []

    async def close(self) -> None:
        pass


async def test_the_failing_instances_read_is_bounded_by_timeout_s(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The read of the instances a registry reports failing is bounded by ``--timeout-s``
    like the listing and the watches: ``services`` and ``prometheus-targets`` fail saying
    the registry cannot be read, no file written."""
    from meshkit._cli import services as services_cli
    from meshkit._cli.prometheus import TargetWriter
    from meshkit.errors import MeshError

    hung: Any = _FailingReadHangs()
    monkeypatch.setattr(services_cli, "open_registry", lambda uri: hung)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(SystemExit, match="the registry cannot be read"):
        await services_cli.collect("hung://", [], 0.2)
    writer = TargetWriter(hung, tmp_path / "t.json", keep_failing_s=0, timeout_s=0.2)
    with pytest.raises(MeshError, match="the registry cannot be read"):
        await writer.once()
    assert loop.time() - start < 2.0
    assert not (tmp_path / "t.json").exists()


async def test_call_service_slash_method_skips_a_service_reflection_cannot_describe(
    registry: LocalRegistry,
) -> None:
    """``SERVICE/Method`` looks the method up in every service the server lists; one that
    reflection cannot describe (a generic handler's, which serve() lists too) is skipped,
    not the end of the lookup ("reflection: not found", exit 2) while the method named is
    served and described."""
    from tests.support.echo import add_echo

    server = meshkit.MeshServer(
        "mixed", [(services.add_GreeterServicer_to_server, Greeter()), add_echo("a")],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="mixed-1",
                                     drain_delay_s=0, grace_s=1))
    await server.start()
    try:
        targets = ("mixed/Greeter/SayHello", "mixed/SayHello")
        results = await at_once(*(meshkit_cli("call", target, '{"name": "x"}', "--insecure",
                                              "--registry", uri(registry))
                                  for target in targets))
        for target, (code, out, err) in zip(targets, results, strict=True):
            assert (code, '"Hello, x!"' in out) == (0, True), (target, code, out, err)
    finally:
        await server.drain()


async def test_services_health_is_each_instances_own_while_another_server_drains(
        greeter: meshkit.MeshServer, registry: LocalRegistry, tmp_path: Path) -> None:
    """README, Operating it: "``meshkit services``: health is each instance's admin
    ``/readyz`` (``ready``, ``not-ready`` while draining, ``unreachable``)".

    The servers of one process share its admin server. While server ``a`` of the
    ``greeter`` process drains, the ``greeter`` instance (registered, serving, not
    draining) was listed ``not-ready``: ``/readyz`` answers for the whole process, and an
    operator took a healthy instance for one that is leaving. Each instance's health is
    now its own server's readiness (``/readyz?service=<service>&instance=<id>``): the
    serving one ``ready``, the draining one (still listed by a registry that has not seen
    its deregistration yet: a stale entry) ``not-ready``, and an entry naming a service
    the admin server there does not serve (a stopped server's stale entry, or a port
    another process holds now) ``not-served``."""
    a = meshkit.MeshServer(
        "a", [(services.add_GreeterServicer_to_server, Greeter())], registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="a-1", drain_delay_s=60.0,
                                     grace_s=1.0))
    await a.start()
    assert a.admin is greeter.admin and greeter.admin is not None  # one per process
    admin_port = str(greeter.admin.port)
    draining = asyncio.ensure_future(a.drain())
    stale = LocalRegistry(LocalOptions(path=registry.options.path, ttl_s=5.0))
    try:
        async def deregistered() -> bool:
            return not (await registry.snapshot("a")).live
        await until(deregistered, timeout_s=10, what="a's deregistration")
        # what a registry that has not seen the deregistration yet still lists
        await stale.register(Instance(service="a", instance_id="a-1", host="127.0.0.1",
                                      port=9, meta={"admin_port": admin_port}))
        await stale.register(Instance(service="ghost", instance_id="ghost-1",
                                      host="127.0.0.1", port=9,
                                      meta={"admin_port": admin_port}))
        assert greeter.ready and a.draining
        code, out, err = await meshkit_cli("services", "--registry", uri(registry), "--json")
        assert code == 0, err
        health = {r["instance_id"]: r["health"] for r in json.loads(out)}
        assert health == {"greeter-1": "ready", "a-1": "not-ready",
                          "ghost-1": "not-served"}, out
        assert not draining.done()  # all of it seen while a drained
    finally:
        await stale.close()
        # drain_delay_s is only the window the listing is made in: 60 s, longer than the
        # waits it holds (10 s for the deregistration, meshkit_cli's 30 s), so it cannot
        # close first (12 s did in a CI run at load ~24: the command's interpreter took
        # about 10 s to start, and a-1 read "not-served", its server stopped); once the
        # listing is made, the rest of the delay proves nothing:
        # end it as asyncio.run()'s sweep would, the drain stops the server and closes
        # it (its finally), not a wait of the delay's remaining seconds.
        task = a._drain_task
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=15)
        await asyncio.wait([draining], timeout=15)
        assert a._stopped.is_set() and draining.done()
