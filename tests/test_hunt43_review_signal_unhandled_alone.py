"""The downstream-refusal rule (a call the handler made failed ``UNAVAILABLE`` or
``RESOURCE_EXHAUSTED``: answered ``RESOURCE_EXHAUSTED`` "a call the handler made was
refused (<CODE>)" with the trailer ``meshkit-downstream-status: <CODE>``) lives in
meshkit/_unhandled.py itself now: :func:`unhandled_answer`, "the one decision of the code
an escaping exception gets", said ``UNKNOWN`` for it while the server answered otherwise
(server.py wrapped the interceptor, ``_downstream_aware``), and
:class:`UnhandledErrorInterceptor` used alone answered ``UNKNOWN`` with an error
traceback. Both modes (``expose_exception_text``), async and synchronous channels' errors;
a message size limit's ``RESOURCE_EXHAUSTED``, another code, and a code the handler set
stay as they were.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import structlog

from meshkit._unhandled import (
    DOWNSTREAM_STATUS_KEY,
    UnhandledErrorInterceptor,
    unhandled_answer,
)


class _Context:
    """A stand-in handler context: the status it was answered with."""

    def __init__(self, code: grpc.StatusCode | None = None) -> None:
        self.status = code
        self.details = ""
        self.trailers: tuple[tuple[str, str], ...] = (("x-app", "kept"),)

    def code(self) -> grpc.StatusCode | None:
        return self.status

    def time_remaining(self) -> float | None:
        return 5.0

    def set_code(self, code: grpc.StatusCode) -> None:
        self.status = code

    def set_details(self, details: str) -> None:
        self.details = details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.trailers

    def set_trailing_metadata(self, trailers: tuple[tuple[str, str], ...]) -> None:
        self.trailers = tuple(trailers)


class _SyncError(grpc.RpcError, grpc.Call):
    """What a synchronous channel's stub raises (grpc._channel._InactiveRpcError's
    shape: a grpc.RpcError that is a grpc.Call)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return ()

    def initial_metadata(self) -> Any:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


def _error(kind: str, code: grpc.StatusCode, details: str) -> Exception:
    if kind == "aio":
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                    details=details)
    return _SyncError(code, details)


_SECRET = "redis://:hunter2@10.0.0.9:6379 refused"


@pytest.mark.parametrize("kind", ["aio", "sync"], ids=["aio", "sync"])
@pytest.mark.parametrize("expose", [False, True], ids=["hidden", "exposed"])
@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED],
                         ids=["unavailable", "resource-exhausted"])
async def test_the_interceptor_alone_answers_a_downstream_refusal_resource_exhausted(
        kind: str, expose: bool, code: grpc.StatusCode) -> None:
    exc = _error(kind, code, _SECRET)
    assert unhandled_answer(exc, _Context()) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"a call the handler made was refused ({code.name})")
    unhandled = UnhandledErrorInterceptor(expose_exception_text=expose)._unhandled_for(
        "/hunt43.Mid/Call")
    ctx = _Context()
    with structlog.testing.capture_logs() as logs:
        assert await unhandled(exc, ctx) is True
    assert ctx.status is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ctx.details == f"a call the handler made was refused ({code.name})"
    assert ctx.trailers == (("x-app", "kept"), (DOWNSTREAM_STATUS_KEY, code.name))
    assert [(e["event"], e["log_level"], e["method"]) for e in logs] == [
        ("downstream refused a call the handler made", "debug", "/hunt43.Mid/Call")], logs


@pytest.mark.parametrize("kind", ["aio", "sync"], ids=["aio", "sync"])
async def test_what_is_no_downstream_refusal_is_answered_as_before(kind: str) -> None:
    unhandled = UnhandledErrorInterceptor()._unhandled_for("/hunt43.Mid/Call")
    # a message size limit's RESOURCE_EXHAUSTED, another code: UNKNOWN, logged at error
    for code, details in ((grpc.StatusCode.RESOURCE_EXHAUSTED,
                           "Received message larger than max (5000 vs. 4096)"),
                          (grpc.StatusCode.INVALID_ARGUMENT, _SECRET)):
        ctx = _Context()
        assert await unhandled(_error(kind, code, details), ctx) is True
        assert ctx.status is grpc.StatusCode.UNKNOWN, (code, ctx.details)
        assert ctx.trailers == (("x-app", "kept"),)
    # a code the handler set stays the answer
    ctx = _Context(grpc.StatusCode.ABORTED)
    assert await unhandled(_error(kind, grpc.StatusCode.UNAVAILABLE, _SECRET), ctx) is True
    assert ctx.status is grpc.StatusCode.ABORTED
    assert ctx.trailers == (("x-app", "kept"),)
