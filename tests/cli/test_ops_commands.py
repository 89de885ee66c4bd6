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
    """A second service with a method of the same name."""

    async def SayHello(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return protos.HelloReply(message=request.name)


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
