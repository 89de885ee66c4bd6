"""``copy.copy`` of a ``ClientCallDetails`` subclass keeps its private (``__name``) slots.

Python stores a slot declared ``__tenant`` in class ``Routed`` as ``_Routed__tenant``
(name mangling); the copy read the names as written in ``__slots__``, found no
``__tenant`` attribute, took it for a slot never set and dropped the value.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from meshkit.interceptors import CallKind, ClientCallDetails


class _Routed(ClientCallDetails):
    """A subclass keeping its route hint in a private slot."""

    __slots__ = ("__hint", "_public")

    def set_hint(self, hint: str) -> None:
        self.__hint = hint

    def hint(self) -> str:
        return self.__hint


class __Dunder(ClientCallDetails):  # a class name with leading underscores
    """Mangling strips the class name's leading underscores."""

    __slots__ = ("__hint",)

    def set_hint(self, hint: str) -> None:
        self.__hint = hint

    def hint(self) -> str:
        return self.__hint


@pytest.mark.parametrize("cls", [_Routed, __Dunder], ids=["plain", "underscored"])
@pytest.mark.parametrize("how", [copy.copy, copy.deepcopy], ids=["copy", "deepcopy"])
def test_private_slot_copied(cls: Any, how: Any) -> None:
    """A private slot's value is on the copy."""
    details = cls(service="echo", method="/a.B/C", kind=CallKind.UNARY_UNARY,
                  timeout_s=None, metadata=None)
    details.set_hint("zone-b")
    made = how(details)
    assert type(made) is cls
    assert made.hint() == "zone-b"
