"""``copy.copy``/``copy.deepcopy`` of a subclass of meshkit's ``ClientCallDetails`` keep
the subclass's own attributes.

An application's per-call interceptor may proceed with details of its own class (a
subclass adding a tenant, a route hint); an interceptor after it that proceeds with a
copy (``copy.copy(details)``, as the class docstring suggests, grpc.aio's details being
``_replace``d) got one of the same class whose ``__copy__`` had set only the base class's
slots: the subclass's slots and ``__dict__`` were gone (``AttributeError`` further on).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from meshkit.interceptors import CallKind, ClientCallDetails


class _WithDict(ClientCallDetails):
    """A subclass with a ``__dict__``."""


class _WithSlots(ClientCallDetails):
    """A subclass with a slot of its own."""

    __slots__ = ("tenant",)


def _made(cls: type[ClientCallDetails]) -> Any:
    details: Any = cls(service="echo", method="/a.B/C", kind=CallKind.UNARY_UNARY,
                       timeout_s=None, metadata=[("k", "v")])
    details.tenant = "t-42"
    return details


@pytest.mark.parametrize("cls", [_WithDict, _WithSlots], ids=["dict", "slots"])
@pytest.mark.parametrize("how", [copy.copy, copy.deepcopy], ids=["copy", "deepcopy"])
def test_a_subclass_copy_keeps_its_attributes(cls: type[ClientCallDetails],
                                              how: Callable[[Any], Any]) -> None:
    """The copy is of the subclass, with its ``tenant`` and the base fields; a codec
    error recorded on the copy still reaches the original."""
    details = _made(cls)
    made = how(details)
    assert type(made) is cls
    assert made.tenant == "t-42"
    assert (made.service, made.method, made.metadata) == ("echo", "/a.B/C", [("k", "v")])
    made.codec_error = ValueError("x")
    assert details.codec_error is made.codec_error


def test_the_base_class_copy_is_unchanged() -> None:
    """meshkit's own details copy as before: the base fields, no ``__dict__``."""
    made = copy.copy(ClientCallDetails(service="echo", method="/a.B/C",
                                       kind=CallKind.UNARY_UNARY, timeout_s=1.0,
                                       metadata=None))
    assert type(made) is ClientCallDetails and made.service == "echo"
    assert not hasattr(made, "__dict__")
