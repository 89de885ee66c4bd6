"""A downstream admission refusal of a call a handler made under a shorter
``deadline_scope`` of its own is the handler's doing: answered ``UNKNOWN``, as for a
shorter ``timeout`` of its own, not blamed on the caller's deadline.

What was wrong: the mesh channel told a call under the handled call's deadline
(propagated) from one under a deadline of its own by comparing the call's deadline with
``current_deadline()``, which inside a ``deadline_scope`` is the scope's. A handler that
gave a downstream call 0.3 s with ``with deadline_scope(time.monotonic() + 0.3):`` while
its caller gave 5 s, refused by the next hop's ``min_remaining_s=0.5``, answered its
caller ``DEADLINE_EXCEEDED`` "deadline exceeded (too short for a call the handler made
under it)" with the ``meshkit-deadline-refused`` trailer: the caller was told its 5 s
were too short, its mesh channel would not retry it nor count it against the endpoint,
and the server counted ``DeadlineExceeded`` for a fault of its own handler
(``UNKNOWN`` for the same call made with ``timeout=0.3``, README's error table). The
channel now compares with the handled call's deadline (the one in force before the
handler's scopes); with the caller's deadline the shorter one the refusal is still the
caller's.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.resilience import DeadlineOptions, deadline_scope

pytestmark = pytest.mark.timeout(60)


def _service(name: str, behaviour: Any) -> tuple[Any, None]:
    def add(_s: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            name, {"Call": grpc.unary_unary_rpc_method_handler(behaviour)}),))

    return add, None


async def test_a_refusal_under_a_handlers_shorter_scope_is_unknown(
        registry: LocalRegistry) -> None:
    down = meshkit.dial("hop2", registry=registry,
                        options=meshkit.DialOptions(insecure=True, retry=None))

    async def ok(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return b"ok"

    async def relay(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        with deadline_scope(time.monotonic() + 2.0):  # shorter than hop2 admits
            return await down.unary_unary("/hop2/Call")(request)  # type: ignore[no-any-return]

    servers = []
    try:
        for name, behaviour, extra in (
                ("hop2", ok, {"deadline": DeadlineOptions(min_remaining_s=5.0)}),
                ("hop1", relay, {})):
            srv = meshkit.MeshServer(name, [_service(name, behaviour)], registry=registry,
                                     options=meshkit.ServeOptions(
                                         insecure=True, drain_delay_s=0.0, grace_s=0.5,
                                         **extra))
            await srv.start()
            servers.append(srv)
        await down.wait_for_endpoints(1, timeout_s=10)
        async with meshkit.dial("hop1", registry=registry, options=meshkit.DialOptions(
                insecure=True, retry=None)) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            call: Any = ch.unary_unary("/hop1/Call")
            with pytest.raises(grpc.aio.AioRpcError) as own:
                await call(b"", timeout=10.0)
            assert own.value.code() is grpc.StatusCode.UNKNOWN, own.value.details()
            assert not [k for k, _ in own.value.trailing_metadata() or ()
                        if k.startswith("meshkit-")]
            # the caller's deadline the shorter one (the scope does not extend it): the
            # refusal is the caller's
            with pytest.raises(grpc.aio.AioRpcError) as short:
                await call(b"", timeout=1.5)
            assert (short.value.code(), short.value.details()) == (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "deadline exceeded (too short for a call the handler made under it)")
        assert servers[0].stats().deadline_rejections == 2
    finally:
        await down.close()
        for srv in reversed(servers):
            await srv.drain()
