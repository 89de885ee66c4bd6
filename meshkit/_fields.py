"""Option fields given as one type and stored as another: typing for frozen dataclasses.

An options class takes ``interceptors=[a, b]`` or ``retryable_codes={UNAVAILABLE}`` (any
sequence or collection, as the grpc.aio calls it stands in for take) and its
``__post_init__`` stores the normalised value (a tuple, a frozenset). A dataclass field has
one annotation, used both for the ``__init__`` parameter and for the attribute; annotating
it ``tuple[X, ...]`` refuses a list under ``mypy --strict``, annotating it ``Sequence[X]``
loses the tuple for readers (``options.interceptors + (x,)``).

:class:`Normalised` says both: ``interceptors: Normalised[Sequence[X], tuple[X, ...]] =
Normalised(())``. A field whose type is a descriptor takes the type of the descriptor's
``__set__`` value in ``__init__`` and gives the type of its ``__get__`` when read (the
dataclass rule for descriptor-typed fields, which mypy and pyright follow). At run time
it is only the default: ``@dataclass`` reads the default through ``__get__`` on the
class, and ``slots=True`` then replaces the class attribute with the field's slot, so
reading the field costs what reading any slot costs.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, overload

__all__ = ["Normalised"]

_In = TypeVar("_In", contravariant=True)
_Out = TypeVar("_Out")


class Normalised(Generic[_In, _Out]):
    """A dataclass field given as ``_In`` and read as ``_Out`` (its ``__post_init__``
    converts), e.g. ``tags: Normalised[Collection[str], tuple[str, ...]] =
    Normalised(())``.

    Only for ``@dataclass(slots=True)`` classes, whose slots replace it: it is the field's
    default (``default``, of the stored type, hashable as a dataclass default must be), not
    a store of values.

    Args:
        default: the field's default, already normalised (``()``, a ``frozenset``).
    """

    __slots__ = ("default",)

    def __init__(self, default: _Out) -> None:
        self.default = default

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None) -> _Out: ...

    @overload
    def __get__(self, obj: object, owner: type[Any] | None = None) -> _Out: ...

    def __get__(self, obj: object, owner: type[Any] | None = None) -> _Out:
        """The default: what ``@dataclass`` reads from the class to make the field's."""
        return self.default

    def __set__(self, obj: object, value: _In) -> None:
        """Never called on a slots dataclass (its slot replaced this descriptor).

        Raises:
            TypeError: the class is not a ``slots=True`` dataclass.
        """
        raise TypeError(f"Normalised fields need @dataclass(slots=True): {type(obj).__name__}")
