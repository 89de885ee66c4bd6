"""``meshkit services``, ``meshkit call`` and ``meshkit prometheus-targets`` as a user runs
them (the installed command in a subprocess) against real in-process servers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

protos, services = grpc.protos_and_services("tests/cli/greeter.proto")


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
    holding a ``HelloReply`` with the request's ``Any`` type URL as its message."""

    async def SayHello(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return protos.HelloReply(message=request.name)

    async def Headers(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return protos.HeadersReply(md={
            k: v if isinstance(v, str) else "BIN:" + v.hex()
            for k, v in context.invocation_metadata() or ()})

    async def Wrap(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        out = protos.Wrapped()
        out.payload.Pack(protos.HelloReply(message=request.payload.type_url))
        return out


def uri(registry: LocalRegistry) -> str:
    """The registry's URI with its test timings."""
    o = registry.options
    return f"local://{o.path}?ttl_s={o.ttl_s}&poll_interval_s={o.poll_interval_s}"


async def meshkit_cli(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run ``meshkit ARGS`` (the CLI module of this checkout); (status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshkit.cli", *args, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


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


async def test_call_resolves_each_target_form(greeter: meshkit.MeshServer,
                                              registry: LocalRegistry) -> None:
    """``SERVICE/pkg.Svc/Method``, ``SERVICE/Svc/Method`` and ``/pkg.Svc/Method`` (the mesh
    service found by reflection) each make the call and print the response as JSON; the
    request may come from stdin."""
    reg = ["--registry", uri(registry), "--insecure"]
    code, out, err = await meshkit_cli("call", "greeter/meshkit.clitest.Greeter/SayHello",
                                       '{"name": "Ada", "times": 2}', *reg)
    assert code == 0, err
    assert json.loads(out) == {"message": "Hello, Ada!", "peers": ["Ada", "Ada"]}
    code, out, err = await meshkit_cli("call", "greeter/Echoer/SayHello", "-", *reg,
                                       stdin=b'{"name": "echo"}')
    assert (code, json.loads(out)) == (0, {"message": "echo"}), err
    code, out, err = await meshkit_cli("call", "/meshkit.clitest.Greeter/SayHello",
                                       '{"name": "Bo"}', *reg)
    assert (code, json.loads(out)) == (0, {"message": "Hello, Bo!"}), err


async def test_call_failures_exit_non_zero_with_the_status(greeter: meshkit.MeshServer,
                                                           registry: LocalRegistry) -> None:
    """A failed call exits 64 + its gRPC code with the status on stderr; an ambiguous,
    unknown or streaming method, bad JSON and missing transport security are usage
    errors (2) saying what is wrong."""
    reg = ["--registry", uri(registry), "--insecure"]
    code, out, err = await meshkit_cli("call", "greeter/Greeter/SayHello",
                                       '{"name": "missing"}', *reg)
    assert (code, out) == (64 + 5, "") and "NOT_FOUND: no such person" in err
    cases = {
        ("greeter/SayHello", "{}"): "ambiguous",
        ("greeter/Greeter/Nope", "{}"): "serves no method 'Nope'",
        ("greeter/Greeter/SayHellos", "{}"): "streaming method",
        ("greeter/Greeter/SayHello", '{"nom": 1}'): "not a valid meshkit.clitest.HelloRequest",
        ("greeter", "{}"): "target must be",
    }
    for (target, body), says in cases.items():
        code, _, err = await meshkit_cli("call", target, body, *reg)
        assert code == 2 and says in err, (target, err)
    code, _, err = await meshkit_cli("call", "greeter/Greeter/SayHello", "--registry",
                                     uri(registry))
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
    code, out, err = await meshkit_cli("services", "--registry", uri(registry))
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["SERVICE", "INSTANCE", "ADDRESS", "HEALTH", "ADMIN"]
    assert rows[1:] == [
        ["greeter", "greeter-1", greeter.instance.address, "ready",  # type: ignore[union-attr]
         f"http://127.0.0.1:{greeter.admin.port}"],  # type: ignore[union-attr]
        ["greeter", "greeter-dead", "127.0.0.1:9", "failing", "http://127.0.0.1:9"],
    ], out
    code, out, _ = await meshkit_cli("services", "--registry", uri(registry), "--json")
    assert code == 0 and [r["instance_id"] for r in json.loads(out)] == [
        "greeter-1", "greeter-dead"]


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
        await until(lambda: instances() == ["greeter-1", "greeter-2"], timeout_s=10,
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
    for only in ([], ["--service", "greeter"]):
        code, out, err = await meshkit_cli("services", *bad, *only)
        assert (code, out) == (1, ""), (only, err)
        assert "Traceback" not in err, (only, err)
        assert "the registry cannot be read: local registry" in err.splitlines()[-1], err


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
    base64, a key gRPC cannot send and a header without ``:`` are usage errors (2) that
    name the key and never print a value (it is often a bearer token)."""
    reg = ["--registry", uri(registry), "--insecure"]
    code, out, err = await meshkit_cli("call", "greeter/Headers", *reg, "-H", "X-Text: a b",
                                       "-H", "trace-bin: AAEC", "-H", "url-bin: -_8")
    assert code == 0, err
    md = json.loads(out)["md"]
    assert (md["x-text"], md["trace-bin"], md["url-bin"]) == ("a b", "BIN:000102", "BIN:fbff")
    secret = "eyJhbGciOiJFUzI1NiJ9.c2VjcmV0.SIGNATURE-do-not-print"
    cases = {("-H", f"authorization=Bearer {secret}"): "'authorization'",
             ("-H", f"Bearer {secret}"): "no ':'",
             ("-H", f"x-bin: {secret}!"): "'x-bin'",
             ("-H", f"x trace: {secret}"): "'x trace'",
             ("-H", f"x-text: {secret}\u00e9"): "'x-text'"}
    for header, says in cases.items():
        code, out, err = await meshkit_cli("call", "greeter/Headers", *reg, *header)
        assert (code, out) == (2, ""), (header, err)
        assert says in err and secret not in err, (header, err)


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
