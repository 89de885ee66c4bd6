"""Unary-unary attempts run in the caller's task (meshkit/_inline.py), against real servers:
the path is taken on this grpcio, and where it is not taken (compression, grpc.aio
interceptors on the sub-channels, ``MESHKIT_INLINE_CALLS=0``) calls behave the same."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import grpc
import pytest

import meshkit
from meshkit._inline import InlineUnaryUnary, InlineUnaryUnaryCall, inline_unary_unary
from meshkit.discovery import LocalRegistry
from meshkit.interceptors import ClientCallDetails, ClientInterceptor, UnaryProceed
from tests.conftest import EchoFactory
from tests.support.echo import method


class _LastCall(ClientInterceptor):
    """Records the grpc call object of each call's answering attempt."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    async def intercept_unary(self, details: ClientCallDetails, request: Any,
                              proceed: UnaryProceed) -> Any:
        try:
            return await proceed(details, request)
        finally:
            self.calls.append(details.last_call)


class _PassAttempt(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any,
                                    request: Any) -> Any:
        return await continuation(details, request)


def _opts(**kw: Any) -> meshkit.DialOptions:
    return meshkit.DialOptions(insecure=True, retry=None, **kw)


async def test_unary_attempts_run_inline_on_this_grpcio(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """On the grpcio meshkit is tested with, an attempt is an InlineUnaryUnaryCall (if this
    fails after a grpcio upgrade, meshkit/_inline.py no longer recognises grpc.aio's
    internals and calls take the slower public path: adapt it)."""
    await echo_servers("e1")
    seen = _LastCall()
    async with meshkit.dial("echo", registry=registry, options=_opts(interceptors=(seen,))) as ch:
        assert await ch.unary_unary(method("Unary"))(b"x", timeout=5) == b"e1|x"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary(method("Fail"))(b"NOT_FOUND:2", timeout=5)
    assert [type(c) for c in seen.calls] == [InlineUnaryUnaryCall] * 2
    e = err.value
    assert e.code() is grpc.StatusCode.NOT_FOUND and "asked to fail" in (e.details() or "")
    assert ("retry-after", "2") in list(e.trailing_metadata())
    ok, failed = seen.calls
    assert await ok.code() is grpc.StatusCode.OK and ok.done()
    assert await failed.code() is grpc.StatusCode.NOT_FOUND


async def test_a_deadline_ends_an_inline_attempt_deadline_exceeded(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts()) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary(method("Sleep"))(b"3000", timeout=0.2)
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_cancelling_the_awaiting_task_cancels_the_call_on_the_server(
    registry: LocalRegistry
) -> None:
    """The attempt runs in the caller's task: cancelling that task must end the RPC (the
    server's handler sees the cancellation), as grpc.aio's own task would."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def hold(request: bytes, context: Any) -> bytes:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return b""

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "hold.Hold", {"Hold": grpc.unary_unary_rpc_method_handler(hold)}),))

    server = meshkit.MeshServer("hold", [(add, None)], registry=registry, options=(
        meshkit.ServeOptions(insecure=True, instance_id="h1", drain_delay_s=0, grace_s=1.0)))
    await server.start()
    try:
        async with meshkit.dial("hold", registry=registry, options=_opts()) as ch:
            task = asyncio.ensure_future(ch.unary_unary("/hold.Hold/Hold")(b"", timeout=20))
            await asyncio.wait_for(started.wait(), 5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(cancelled.wait(), 5)
    finally:
        await server.drain()


async def test_calls_with_compression_or_attempt_interceptors_take_grpcs_path(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    await echo_servers("e1")
    seen = _LastCall()
    async with meshkit.dial("echo", registry=registry, options=_opts(interceptors=(seen,))) as ch:
        assert await ch.unary_unary(method("Unary"))(
            b"z", timeout=5, compression=grpc.Compression.Gzip) == b"e1|z"
    opts = _opts(interceptors=(seen,), attempt_interceptors=(_PassAttempt(),))
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        assert await ch.unary_unary(method("Unary"))(b"w", timeout=5) == b"e1|w"
    assert len(seen.calls) == 2
    assert not any(isinstance(c, InlineUnaryUnaryCall) for c in seen.calls)
    assert [await c.code() for c in seen.calls] == [grpc.StatusCode.OK] * 2


_INLINE_SWITCH = """
import json, os
from meshkit.errors import ConfigError
out = {}
for value in json.loads(os.environ["VALUES"]):
    os.environ["MESHKIT_INLINE_CALLS"] = value
    try:
        out[value] = {"available": inline_calls_enabled()}
    except ConfigError as e:
        out[value] = {"raised": str(e)}
os.environ.pop("MESHKIT_INLINE_CALLS")
out["unset"] = {"available": inline_calls_enabled()}
print(json.dumps(out))
"""


@pytest.mark.timeout(60)
def test_the_environment_can_turn_inline_calls_off() -> None:
    """``MESHKIT_INLINE_CALLS`` is a boolean as Kubernetes manifests spell one (``0``,
    ``false``, ``off``, ``no``; ``1``, ``true``, ``on``, ``yes``; any case, blanks
    around ignored; empty or unset: on). Only exactly ``"0"`` used to turn it off: every
    other value (``false``, ``off``, ``" 0"``) silently left grpc.aio's internals in use.
    A value that is neither is refused, naming the variable and quoting the value, at the
    first ``dial()`` (not at ``import meshkit``: the ``meshkit`` command reports it as a
    usage error, one line, exit 2, where a failing import gave a traceback)."""
    values = {"0": False, "false": False, "off": False, " 0": False, "0\n": False,
              "No": False, "FALSE": False, "1": True, "true": True, " on ": True,
              "yes": True, "": True, "  ": True}
    bad = ["maybe", "2", "0 1"]
    check = "from meshkit._inline import inline_calls_enabled\n" + _INLINE_SWITCH
    dial = ("import meshkit\nfrom meshkit.discovery import LocalOptions, LocalRegistry\n"
            "reg = LocalRegistry(LocalOptions(path='/nonexistent/never-opened'))\n"
            "meshkit.dial('echo', registry=reg, options=meshkit.DialOptions(insecure=True))")
    # the five processes (each its own environment) run side by side, judged in turn
    procs = {
        name: subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, **env})
        for name, args, env in (
            ("check", [sys.executable, "-c", check],
             {"VALUES": json.dumps([*values, *bad])}),
            # what the module reads, once
            ("off", [sys.executable, "-c", "import meshkit._inline as m; print(m.available())"],
             {"MESHKIT_INLINE_CALLS": "off"}),
            (" 1", [sys.executable, "-c", "import meshkit._inline as m; print(m.available())"],
             {"MESHKIT_INLINE_CALLS": " 1"}),
            ("dial", [sys.executable, "-c", dial], {"MESHKIT_INLINE_CALLS": "maybe"}),
            ("cli", [sys.executable, "-m", "meshkit.cli", "services", "--registry",
                     "local:///nonexistent/never-opened"], {"MESHKIT_INLINE_CALLS": "2"}),
        )
    }
    done: dict[str, subprocess.CompletedProcess[str]] = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=50)
            done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    done["check"].check_returncode()
    out = json.loads(done["check"].stdout)
    assert {v: out[v] for v in values} == {v: {"available": on} for v, on in values.items()}
    assert out["unset"] == {"available": True}
    for value in bad:
        assert "MESHKIT_INLINE_CALLS" in out[value]["raised"], out[value]
        assert repr(value) in out[value]["raised"], out[value]
    # what the module reads, once
    for value, expected in (("off", "False"), (" 1", "True")):
        done[value].check_returncode()
        assert done[value].stdout.strip() == expected
    refused = done["dial"]
    assert refused.returncode != 0
    assert "ConfigError" in refused.stderr and "MESHKIT_INLINE_CALLS" in refused.stderr
    cli = done["cli"]
    assert cli.returncode == 2 and "Traceback" not in cli.stderr, cli.stderr[-2000:]
    assert "MESHKIT_INLINE_CALLS" in cli.stderr and "'2'" in cli.stderr


async def test_an_inline_call_awaited_again_or_twice_at_once_gives_one_outcome(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """As grpc.aio's own call: every await of the call gives the same response or raises
    the same status, whether it comes after the first or alongside it (one RPC is sent)."""
    server = await echo_servers("e1")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        start = inline_unary_unary(channel.unary_unary(method("Sleep")))
        assert isinstance(start, InlineUnaryUnary)
        call = start(b"50", timeout=5)

        async def awaited() -> Any:
            return await call

        # two awaiting tasks (gather(call, call) would wrap the one object once)
        first, second = await asyncio.gather(awaited(), awaited())
        assert first == second == b"e1" and await call == b"e1"
        assert await call.code() is grpc.StatusCode.OK
        fail = inline_unary_unary(channel.unary_unary(method("Fail")))(b"ABORTED", timeout=5)

        async def failed() -> grpc.StatusCode:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await fail
            return err.value.code()

        assert await asyncio.gather(failed(), failed()) == [grpc.StatusCode.ABORTED] * 2
        assert await failed() is grpc.StatusCode.ABORTED


async def test_wait_for_connection_starts_an_inline_call_nothing_awaited_yet(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """grpc.aio's call runs whether awaited or not, so its wait_for_connection() returns
    once it ends; an inline call must start itself there rather than wait forever."""
    server = await echo_servers("e1")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = inline_unary_unary(channel.unary_unary(method("Unary")))(b"w", timeout=5)
        await asyncio.wait_for(call.wait_for_connection(), 5)
        assert call.done() and await call == b"e1|w"
        fail = inline_unary_unary(channel.unary_unary(method("Fail")))(b"ABORTED", timeout=5)
        with pytest.raises(grpc.aio.AioRpcError):
            await asyncio.wait_for(fail.wait_for_connection(), 5)
