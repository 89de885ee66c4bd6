"""meshkit's unary handler wraps, handed to grpc.aio as ``_GrpcAsync`` (a
``functools.partial`` since 8596fb3e / 629f4251), still copy and name themselves as the
plain coroutine functions they were.

An interceptor placed before meshkit's own on a ``grpc.aio`` server (as
``meshkit.observability.server_interceptors`` documents for a plain server) gets the
wrap as ``handler.unary_unary``. Measured after those commits: ``copy.deepcopy`` of it
(or of the method handler holding it) raised ``TypeError: cannot pickle '_thread.lock'
object`` (a partial is copied through its ``__dict__``, which holds the request gate's
fusing partial and, in it, the reporter), where a function is returned as it is;
``copy.copy`` made a second object; ``behaviour.__name__`` (a logging interceptor's
read) raised ``AttributeError`` (a partial has none; the function's was
``behavior``).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from meshkit.observability import TelemetryOptions, server_interceptors

_SVC = "hunt41.v1.Copied"


async def _uu(request: bytes, context: Any) -> bytes:
    return b"uu|" + request


class _Keep(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Keeps each method handler it is handed, and names its behaviour as a logging
    interceptor would."""

    def __init__(self) -> None:
        self.handlers: list[Any] = []
        self.names: list[str] = []

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        self.handlers.append(handler)
        self.names.append(handler.unary_unary.__name__)
        return handler


@pytest.mark.parametrize("metrics", [True, False], ids=["metrics", "access-log-only"])
async def test_the_wrap_copies_and_names_itself_as_a_function(metrics: bool) -> None:
    keep = _Keep()
    options = TelemetryOptions(
        registry=CollectorRegistry(),
        tracing=False,
        metrics=metrics,
        access_log=True,
    )
    server = grpc.aio.server(interceptors=[keep, *server_interceptors("copied", options)])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                _SVC, {"UU": grpc.unary_unary_rpc_method_handler(_uu)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = await channel.unary_unary(f"/{_SVC}/UU")(b"x", timeout=30)
    finally:
        await server.stop(None)
    assert answer == b"uu|x"
    handler = keep.handlers[0]
    wrap = handler.unary_unary
    assert inspect.iscoroutinefunction(wrap)  # (meshkit's, not the servicer's own)
    assert wrap is not _uu
    assert keep.names == [wrap.__name__] == ["behavior"]
    assert wrap.__qualname__.endswith(".behavior")
    assert copy.copy(wrap) is wrap
    assert copy.deepcopy(wrap) is wrap
    assert copy.deepcopy(handler).unary_unary is wrap
