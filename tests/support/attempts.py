"""Pass-through ``grpc.aio`` client interceptors of all four kinds, for
``DialOptions.attempt_interceptors``: a channel with any attempt interceptor keeps
grpc.aio's codecs on its sub-channels (the interceptors see the messages), the path to
test next to the mesh's own."""

from __future__ import annotations

from typing import Any

import grpc


class PassAll(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor,
              grpc.aio.StreamUnaryClientInterceptor, grpc.aio.StreamStreamClientInterceptor):
    """Hands every attempt on unchanged; counts the attempts it saw."""

    def __init__(self) -> None:
        self.attempts = 0

    async def _next(self, continuation: Any, details: Any, request: Any) -> Any:
        self.attempts += 1
        return await continuation(details, request)

    async def intercept_unary_unary(self, continuation: Any, details: Any,
                                    request: Any) -> Any:
        return await self._next(continuation, details, request)

    async def intercept_unary_stream(self, continuation: Any, details: Any,
                                     request: Any) -> Any:
        return await self._next(continuation, details, request)

    async def intercept_stream_unary(self, continuation: Any, details: Any,
                                     request_iterator: Any) -> Any:
        return await self._next(continuation, details, request_iterator)

    async def intercept_stream_stream(self, continuation: Any, details: Any,
                                      request_iterator: Any) -> Any:
        return await self._next(continuation, details, request_iterator)
