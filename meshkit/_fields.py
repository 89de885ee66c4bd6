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

:class:`FrozenMap` is what an options class stores a mapping field as (``method_timeouts``,
``RetryOptions.methods``, ``rules``...): a read-only copy, so a caller changing its dict
later changes nothing, which (unlike ``types.MappingProxyType``) pickles and deep-copies
with the options.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from typing import Any, Generic, TypeVar, overload

__all__ = ["FrozenMap", "Normalised"]

_K = TypeVar("_K")
_V = TypeVar("_V", covariant=True)

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


class FrozenMap(Mapping[_K, _V]):
    """A read-only mapping over its own copy of the items it was given: what an options
    class stores a mapping field as (``DialOptions.method_timeouts``,
    ``RetryOptions.methods``, ``JWTAuthOptions.method_scopes``, ``RateLimitOptions.rules``,
    ``AuthzPolicy.rules``), so the caller's dict changed later does not change frozen
    options.

    Unlike ``types.MappingProxyType`` it pickles, copies and deep-copies (rebuilt from a
    dict of its items), so options holding one can be sent to worker processes,
    ``copy.deepcopy``-ed and given to ``dataclasses.asdict`` (which deep-copies it: the
    value there is a FrozenMap, its values as they are). It has no method that changes
    it (``m[k] = v`` and ``del m[k]`` raise ``TypeError``, ``update``/``pop``... do not
    exist); as ``MappingProxyType`` did, ``m | other``, ``other | m`` (PEP 584) and
    ``m.copy()`` give dicts, and ``reversed(m)`` its keys last first. It equals any
    mapping with the same items (``FrozenMap({"a": 1}) == {"a": 1}``, either way round),
    is shown as a dict is, and is hashable when all its values
    are (the hash of its items' frozenset; ``TypeError: unhashable type`` otherwise, as a
    tuple holding a list): equal FrozenMaps hash equal, and a dict, equal to it, is never
    hashed.

    Args:
        items: a mapping, or ``(key, value)`` pairs, copied (a shallow copy, as
            ``dict(items)``).
    """

    __slots__ = ("_data",)

    def __init__(self, items: Mapping[_K, _V] | Iterable[tuple[_K, _V]] = ()) -> None:
        self._data: dict[_K, _V] = dict(items)

    def __getitem__(self, key: _K) -> _V:
        return self._data[key]

    def __iter__(self) -> Iterator[_K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def keys(self) -> KeysView[_K]:
        return self._data.keys()

    def values(self) -> ValuesView[_V]:
        return self._data.values()

    def items(self) -> ItemsView[_K, _V]:
        return self._data.items()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMap):
            return self._data == other._data
        if isinstance(other, dict):
            return self._data == other
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        """The hash of the items' frozenset.

        Raises:
            TypeError: a value is unhashable.
        """
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return repr(self._data)

    def copy(self) -> dict[_K, _V]:
        """A dict of its items (to change and give back to an options class)."""
        return dict(self._data)

    def __or__(self, other: Mapping[_K, _V]) -> dict[_K, _V]:
        """``m | other``: a dict of both (PEP 584), ``other``'s values winning."""
        if not isinstance(other, Mapping):
            return NotImplemented
        return {**self._data, **other}

    def __ror__(self, other: Mapping[_K, _V]) -> dict[_K, _V]:
        """``other | m``: a dict of both, this map's values winning."""
        if not isinstance(other, Mapping):
            return NotImplemented
        return {**other, **self._data}

    def __reversed__(self) -> Iterator[_K]:
        return reversed(self._data)

    def __reduce__(self) -> tuple[type[FrozenMap[_K, _V]], tuple[dict[_K, _V]]]:
        """Pickle, copy and deep-copy rebuild it from a dict of its items."""
        return (type(self), (self._data,))
