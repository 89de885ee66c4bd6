"""A handler's exception that is a ``grpc.RpcError`` and a ``grpc.Call`` (what a
synchronous stub raises, since 1d4a5b46 read by the downstream-deadline rule) but of
one's own making, whose ``details()``/``trailing_metadata()`` answer oddly (trailers that
are no key/value pairs, details whose comparison raises): :func:`unhandled_answer`
("never raises") raised ``TypeError`` out of the rule's reading of the trailers, so the
interceptor's answer raised too and grpc.aio answered the ``TypeError``'s text. Now such
an error is no downstream deadline: ``UNKNOWN`` naming its type, logged. A plain
``grpc.RpcError`` that is no ``grpc.Call`` (a channel-level error), an exception whose
``code`` is no method or raises: ``UNKNOWN`` too, in both modes.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import structlog

from meshkit._unhandled import UnhandledErrorInterceptor, unhandled_answer
from meshkit.resilience._deadline import DOWNSTREAM_REFUSAL_DETAILS


class _Context:
    """A stand-in handler context with 5 s left: the status it was answered with."""

    def __init__(self) -> None:
        self.status: grpc.StatusCode | None = None
        self.details = ""
        self.trailers: tuple[tuple[str, str], ...] = ()

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


class _OwnCall(grpc.RpcError, grpc.Call):
    """A grpc.Call of one's own: DEADLINE_EXCEEDED, details and trailers as given."""

    def __init__(self, details: Any, trailers: Any) -> None:
        self._details, self._trailers = details, trailers

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> Any:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailers

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


class _RaisingEq:
    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no comparison")


class _CodeAttribute(Exception):
    code = 5


class _CodeRaises(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        raise RuntimeError("cannot tell")


def _cases() -> list[Exception]:
    return [_OwnCall(DOWNSTREAM_REFUSAL_DETAILS, 5),            # trailers: no pairs
            _OwnCall(DOWNSTREAM_REFUSAL_DETAILS, [1, 2]),       # items: no pairs
            _OwnCall(_RaisingEq(), ()),                         # details: odd
            grpc.RpcError("channel closed"),                    # no grpc.Call
            _CodeAttribute("x"), _CodeRaises("y")]


_IDS = ["trailers-int", "trailer-items-int", "details-raise", "rpc-error-no-call",
        "code-attribute", "code-raises"]


@pytest.mark.parametrize("index", range(len(_IDS)), ids=_IDS)
async def test_an_odd_call_error_is_answered_unknown_without_raising(index: int) -> None:
    exc = _cases()[index]
    name = type(exc).__name__
    assert unhandled_answer(exc, _Context()) == (
        grpc.StatusCode.UNKNOWN, f"Unexpected {name} in the handler (logged by the server)")
    ctx = _Context()
    unhandled = UnhandledErrorInterceptor()._unhandled_for("/hunt43.Odd/Call")
    with structlog.testing.capture_logs() as logs:
        assert await unhandled(exc, ctx) is True
    assert ctx.status is grpc.StatusCode.UNKNOWN
    assert ctx.details == f"Unexpected {name} in the handler (logged by the server)"
    assert ctx.trailers == ()
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("unhandled exception", "error")], logs
    # exposing the text: left to grpc.aio, nothing set
    exposing = UnhandledErrorInterceptor(expose_exception_text=True)._unhandled_for(
        "/hunt43.Odd/Call")
    ctx = _Context()
    assert await exposing(exc, ctx) is False
    assert ctx.status is None
