"""Construction-time checks shared by every options class: numbers of seconds, counts,
bounded numbers, flags, option objects of the right class, collections given as one
string, status-code sets and metadata keys.

Each check raises :class:`~meshkit.errors.ConfigError` naming the field and quoting the
bad value (``!r``), the project's rule for a wrong config. They run in ``__post_init__``
only, never per call.
"""

from __future__ import annotations

import math
import numbers
import operator
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import grpc

from meshkit._env import unexpanded_home
from meshkit.errors import ConfigError

if TYPE_CHECKING:
    from meshkit.discovery import Registry

__all__ = [
    "check_bool",
    "check_clock",
    "check_compression",
    "check_instance",
    "check_int",
    "check_metadata_key",
    "check_number",
    "check_path",
    "check_rng",
    "check_seconds",
    "check_status_codes",
    "check_strings",
    "check_tuple",
    "holds_content",
    "refuse_str",
    "registry_argument",
    "shown_path",
]


#: grpc's channel arguments are C ints (``grpc_arg.value.integer``): grpc core raises a bare
#: ``OverflowError`` for an int outside these bounds when it builds the channel or server
C_INT_MIN = -(2**31)
C_INT_MAX = 2**31 - 1
# ints longer than this many bits are described by their size in messages, not printed
# (Python refuses to print one of more than 4300 digits: ValueError)
_QUOTED_INT_BITS = 256


def quoted(value: object) -> str:
    """``repr(value)`` for an error message; an ``int`` too long to print in one is
    described by its sign and size instead (``an int of 1329 bits``)."""
    if isinstance(value, int) and not isinstance(value, bool) \
            and value.bit_length() > _QUOTED_INT_BITS:
        return f"{'a negative' if value < 0 else 'an'} int of {value.bit_length()} bits"
    return repr(value)


def _fmt(bound: float) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def _range_text(low: float | None, low_open: bool, high: float | None,
                high_open: bool) -> str:
    if low is not None and high is not None:
        return (f"in {'(' if low_open else '['}{_fmt(low)}, "
                f"{_fmt(high)}{')' if high_open else ']'}")
    if low is not None:
        return f"{'>' if low_open else '>='} {_fmt(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_fmt(high)}"
    return "a number"


def check_number(name: str, value: object, *, low: float | None = 0.0,
                 low_open: bool = False, high: float | None = None,
                 high_open: bool = False, finite: bool = True) -> None:
    """Check that ``value`` (the field ``name``) is a real number (``int`` or ``float``,
    not ``bool``) in the range ``low``..``high`` (``None``: unbounded; ``*_open``: the
    bound itself excluded) and, when ``finite``, neither infinite nor NaN. NaN is never
    in a range.

    Raises:
        ConfigError: ``value`` is a ``bool``, not a number (a string too), not finite, an
            ``int`` beyond a float's range (past about 1.8e308: every use of the value
            would raise ``OverflowError``; ``math.inf`` is what a field that takes it
            means by "for ever"), or out of range; ``name`` and the value quoted (an int
            too long to print described by its size).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "a number of seconds" if name.endswith("_s") else "a number"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    if isinstance(value, int):
        try:
            float(value)
        except OverflowError:
            hint = "" if finite else " (math.inf for no limit)"
            raise ConfigError(f"{name} is too large for a float (at most about 1.8e308"
                              f"{hint}), got {quoted(value)}") from None
    if finite and math.isinf(value):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    ok = not math.isnan(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ConfigError(
            f"{name} must be {_range_text(low, low_open, high, high_open)}, got {value!r}")


def check_int(name: str, value: object, *, low: int | None = 1,
              high: int | None = None) -> None:
    """Check that ``value`` (the field ``name``, a count) is an ``int`` (not ``bool``, not
    a ``float``, even a whole one) in ``low``..``high`` (``None``: unbounded).

    Raises:
        ConfigError: ``value`` is not such an integer; ``name`` and the value quoted (an
            int too long to print described by its size).
    """
    if (isinstance(value, bool) or not isinstance(value, int)
            or (low is not None and value < low) or (high is not None and value > high)):
        where = _range_text(low, False, high, False)
        raise ConfigError(f"{name} must be an integer {where}, got {quoted(value)}"
                          if where != "a number" else
                          f"{name} must be an integer, got {quoted(value)}")


def check_seconds(options: object, names: tuple[str, ...],
                  zero_ok: tuple[str, ...] = ()) -> None:
    """Check that each field ``names`` of ``options`` is a finite number of seconds > 0
    (>= 0 for those in ``zero_ok``).

    Raises:
        ConfigError: the first bad field, its value quoted.
    """
    for name in names:
        check_number(name, getattr(options, name), low=0.0, low_open=name not in zero_ok)


def check_bool(name: str, value: object) -> None:
    """Check that ``value`` (the flag ``name``) is ``True`` or ``False``: a string read
    from the environment or a config file (``"false"``, ``"0"``) is truthy and would turn
    the flag on.

    Raises:
        ConfigError: ``value`` is not a ``bool``; ``name`` and the value quoted.
    """
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")


def check_clock(name: str, value: object, *, wall: bool) -> None:
    """Check that ``value`` (the clock ``name``) is a function, not a reading of one:
    ``clock=time.time()`` gives a float, which would raise ``TypeError: 'float' object is
    not callable`` at the first use (a token verified, a pick, a registration).

    Args:
        wall: the clock is a wall clock in epoch seconds (``time.time``), else a
            monotonic one (``time.monotonic``); only the message's example differs.

    Raises:
        ConfigError: ``value`` is not callable; ``name`` and the value quoted.
    """
    if not callable(value):
        kind = "epoch seconds, such as time.time" if wall else "seconds, such as time.monotonic"
        raise ConfigError(f"{name} must be a callable returning {kind}, got {quoted(value)}")


def check_rng(name: str, value: object, methods: tuple[str, ...]) -> None:
    """Check that ``value`` (the random source ``name``) is ``None`` (the default) or an
    object with the ``methods`` it is used by (``random.Random``'s): a seed given where
    ``random.Random(seed)`` was meant (``rng=42``), or the class itself, would raise a
    bare ``AttributeError`` at its first use (a pick, a backoff).

    Raises:
        ConfigError: anything else; ``name`` and the value quoted.
    """
    if value is None:
        return
    if isinstance(value, type) or not all(callable(getattr(value, m, None)) for m in methods):
        raise ConfigError(f"{name} must be a random source such as random.Random(seed), "
                          f"with {', '.join(m + '()' for m in methods)} (None for the "
                          f"default), got {quoted(value)}")


def _class_names(kind: type | tuple[type, ...]) -> str:
    """``"an OutlierOptions"``, ``"a TLSOptions or a ..."``: the classes, each with its
    article."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(f"{'an' if k.__name__[:1] in 'AEIOU' else 'a'} {k.__name__}"
                       for k in kinds)


def check_instance(name: str, value: object, kind: type | tuple[type, ...], *,
                   optional: bool = True, what: str | None = None) -> None:
    """Check that ``value`` (the field ``name``) is an instance of ``kind`` (a class or a
    tuple of classes; subclasses too), or ``None`` when ``optional``: an option object
    given as ``True`` ("on"), a mapping or a string would otherwise fail later, at the
    first use of one of its attributes.

    Args:
        what: how the message names what is expected (default ``kind``'s class names).

    Raises:
        ConfigError: any other value; ``name``, what is expected and the value quoted
            (for a ``bool``, how to ask for the defaults or for none).
    """
    if isinstance(value, kind) or (optional and value is None):
        return
    expected = what if what is not None else _class_names(kind)
    if optional:
        expected += " or None"
    hint = ""
    if isinstance(value, bool) and what is None and not isinstance(kind, tuple):
        hint = f" (give {kind.__name__}() for the defaults" + (
            ", None for none)" if optional else ")")
    raise ConfigError(f"{name} must be {expected}, got {value!r}{hint}")


def check_secret_holder(name: str, value: object, kind: type, *, optional: bool = True,
                        what: str | None = None) -> None:
    """:func:`check_instance` for an option that a mistaken value would fill with a secret
    (``credentials=`` a private key's PEM bytes or a ``(key, cert)`` pair, ``rate_limit=``
    a storage URI with its password, ``auth=`` a token, a signer given the key itself): the
    wrong value is named by its type only, never quoted, so no key or password reaches the
    message, a traceback or a log. ``True`` and ``False`` are quoted (with their hint).

    Raises:
        ConfigError: ``value`` is not a ``kind`` (nor ``None`` when ``optional``).
    """
    if (value is None and optional) or isinstance(value, kind | bool):
        check_instance(name, value, kind, optional=optional, what=what)
        return
    expected = what or _class_names(kind)
    raise ConfigError(f"{name} must be {expected}{' or None' if optional else ''}, got a "
                      f"{type(value).__qualname__} (its value not shown: it may hold "
                      "a secret)")


def check_tuple(name: str, value: object) -> tuple[Any, ...]:
    """``value`` (the field ``name``, a sequence of objects such as interceptors) as a
    tuple.

    Raises:
        ConfigError: ``value`` is one string or not iterable (one object given where a
            sequence of them is expected); ``name`` and the value quoted.
    """
    refuse_str(name, value)
    if not isinstance(value, Iterable):
        raise ConfigError(f"{name} must be a sequence (e.g. a tuple), got {value!r}")
    return tuple(value)


def registry_argument(where: str, registry: object,
                      methods: tuple[str, ...]) -> tuple[Registry, bool]:
    """The registry ``registry`` (the ``registry=`` argument of ``where``: ``dial(...)``,
    ``serve(...)``; its caller takes ``None`` for :func:`~meshkit.discovery.registry_from_env`)
    names, and whether its user owns it (built it, closes it):

    * a ``str``: a registry URI, as ``MESHKIT_REGISTRY`` takes
      (:func:`~meshkit.discovery.registry_from_uri`), owned;
    * anything else with the ``methods`` of the
      :class:`~meshkit.discovery.Registry` protocol its user calls (a registry of your
      own needs no base class), as given, not owned.

    Raises:
        ConfigError: a bad URI (quoted, secrets masked), or an object without those
            methods (its type named: an object's repr may carry a token).
    """
    from meshkit.discovery import registry_from_uri  # (it imports this module)

    if isinstance(registry, str):
        return registry_from_uri(registry), True
    if isinstance(registry, type):  # LocalRegistry, not LocalRegistry()
        given = f"the class {registry.__qualname__}"
    elif any(not callable(getattr(registry, m, None)) for m in methods):
        given = f"a {type(registry).__qualname__}"
    else:
        return cast("Registry", registry), False  # duck-typed: the methods it is used by
    raise ConfigError(
        f"{where}: registry must be a Registry (an instance: LocalRegistry(), "
        f"ConsulRegistry(...), EtcdRegistry(...) or your own with "
        f"{', '.join(m + '()' for m in methods)}), a registry URI such as "
        f"'local:///var/lib/meshkit', or None; got {given}")


def refuse_str(name: str, value: object) -> None:
    """Refuse a ``str`` (or ``bytes``) given for the collection field ``name``: turned
    into a tuple it would be split into its characters.

    Raises:
        ConfigError: ``value`` is a string; ``name`` and the value quoted.
    """
    if isinstance(value, (str, bytes)):
        raise ConfigError(f"{name} must be a collection (e.g. a tuple), not the string "
                          f"{value!r}")


def check_strings(name: str, value: object) -> tuple[str, ...]:
    """``value`` (the field ``name``, an iterable of strings) as a tuple.

    Raises:
        ConfigError: ``value`` is one string, not iterable, or holds something else than
            a string; ``name`` and the value quoted.
    """
    refuse_str(name, value)
    if not isinstance(value, Iterable):
        raise ConfigError(f"{name} must be a collection of strings, got {value!r}")
    out = tuple(value)
    for item in out:
        if not isinstance(item, str):
            raise ConfigError(f"{name} must hold strings, got {item!r}")
    return out


def check_string_map(name: str, value: object) -> dict[str, str]:
    """``value`` (the field ``name``, a mapping of strings to strings) as a new dict.

    Raises:
        ConfigError: ``value`` is not a mapping (a string such as ``"version=v2"``
            included), or a key or value is not a string; ``name`` and the bad item
            quoted.
    """
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name} must be a mapping of strings to strings, got {value!r}")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ConfigError(f"{name} keys and values must be strings, got {k!r}: {v!r}")
    return dict(value)


def check_grpc_options(name: str, value: object) -> tuple[tuple[str, Any], ...]:
    """``value`` (the field ``name``: grpc channel or server arguments,
    ``DialOptions.channel_options`` / ``ServeOptions.server_options``) as a tuple of
    ``(name, value)`` pairs, checked when the options are built: grpc unpacks and
    converts each only when it builds a channel or server (with meshkit, for the first
    endpoint inside the discovery watch, or at ``MeshServer.start()``), refusing a bad one
    with a bare ``ValueError``/``TypeError`` or misreading it. An integer of another
    type than ``int`` (a ``numbers.Integral`` such as numpy's ``np.int64``) is stored as
    its ``int``: grpc takes any value that is no ``int`` for a C pointer, and silently
    ignores a pointer given for an integer argument.

    An argument's name is a non-empty ``str``, or ``bytes`` as grpc takes it, decoded
    (ASCII) here: meshkit merges the options with the arguments it sets itself by name
    (``ServerLimits``' ``grpc.max_receive_message_length``, say), which a bytes name would
    sit beside instead of replacing. Its value an ``int`` (``bool`` too) that fits a C
    ``int`` (-2147483648..2147483647: grpc core's integer arguments are 32-bit, and it
    raises a bare ``OverflowError`` for a larger one), ``str`` or ``bytes``, or another
    object grpc takes for a C pointer (one with ``__int__``, not an ``int``, as grpc's own
    pointer objects; its address is not bounded). ``None`` (grpc: "Expected int, bytes,
    or behavior") and non-integral numbers such as a float (which grpc would take for a
    pointer's address) are refused.

    Raises:
        ConfigError: ``value`` is a string, a mapping (give ``tuple(mapping.items())``) or
            not iterable, or an item is not such a pair, or its bytes name is not ASCII,
            or its int value does not fit a C ``int``; ``name`` and the item quoted (an
            int too long to print described by its size).
    """
    refuse_str(name, value)
    if isinstance(value, Mapping):
        raise ConfigError(f"{name} must be a sequence of (name, value) pairs, not a "
                          f"mapping (give tuple({name}.items())): got {value!r}")
    if not isinstance(value, Iterable):
        raise ConfigError(f"{name} must be a sequence of (name, value) pairs, got {value!r}")
    out: list[tuple[str, Any]] = []
    for item in value:
        if (isinstance(item, (str, bytes)) or not isinstance(item, Sequence)
                or len(item) != 2):
            raise ConfigError(f"{name} must hold (name, value) pairs, got {item!r}")
        key, val = item
        if not isinstance(key, (str, bytes)) or not key:
            raise ConfigError(f"{name}: a name must be a non-empty string, got {item!r}")
        if isinstance(key, bytes):
            try:
                key = key.decode("ascii")
            except UnicodeDecodeError:
                raise ConfigError(f"{name}: a name given as bytes must be ASCII (grpc's "
                                  f"argument names are), got {item!r}") from None
        if (val is None or (isinstance(val, numbers.Number)
                            and not isinstance(val, numbers.Integral))
                or not (isinstance(val, (int, str, bytes)) or hasattr(val, "__int__"))):
            raise ConfigError(f"{name}: a value must be an int, str or bytes, got {item!r}")
        if isinstance(val, numbers.Integral) and not isinstance(val, int):
            # numpy's np.int64...: grpc takes any value that is no int for a C pointer,
            # and ignores a pointer where it reads an integer argument (silently)
            val = operator.index(val)
        if isinstance(val, int) and not C_INT_MIN <= val <= C_INT_MAX:
            raise ConfigError(f"{name}: an int value must fit grpc's C int "
                              f"({C_INT_MIN}..{C_INT_MAX}), got ({key!r}, {quoted(val)})")
        out.append((key, val))
    return tuple(out)


def check_status_codes(name: str, value: object) -> frozenset[grpc.StatusCode]:
    """``value`` (the field ``name``, a collection of ``grpc.StatusCode``) as a frozenset.

    Raises:
        ConfigError: ``value`` is a string, not iterable, or holds something else than a
            ``grpc.StatusCode`` (a name such as ``"UNAVAILABLE"`` or a number such as
            ``14`` never equals one; an unhashable one too, such as a list of codes
            nested in the list, ``[[UNAVAILABLE]]``); ``name`` and the bad element quoted.
    """
    refuse_str(name, value)
    if not isinstance(value, Iterable):
        raise ConfigError(f"{name} must be a collection of grpc.StatusCode, got {value!r}")
    items = tuple(value)  # each checked before hashing: [[...]] is no bare TypeError
    for code in items:
        if not isinstance(code, grpc.StatusCode):
            raise ConfigError(f"{name} must hold grpc.StatusCode members (e.g. "
                              f"grpc.StatusCode.UNAVAILABLE), got {code!r}")
    return frozenset(items)


#: the spellings a ``compression`` option takes (any case), beside ``grpc.Compression``
_COMPRESSION_NAMES = {"none": grpc.Compression.NoCompression,
                      "identity": grpc.Compression.NoCompression,
                      "gzip": grpc.Compression.Gzip,
                      "deflate": grpc.Compression.Deflate}


def check_compression(name: str, value: object) -> grpc.Compression | None:
    """``value`` (the field ``name``, a compression algorithm) as a ``grpc.Compression``
    member, or ``None`` for ``None``: a member as it is, or its name as a string, any case
    and surrounding blanks ignored: ``"gzip"``, ``"deflate"``, ``"none"`` (or
    ``"identity"``, its name on the wire) for ``grpc.Compression.NoCompression``.

    Raises:
        ConfigError: any other value (a bool, an int such as ``2``, ``"br"``, ``""``):
            ``name`` and the value quoted, the accepted spellings listed.
    """
    if value is None or type(value) is grpc.Compression:
        return value
    if isinstance(value, str):
        found = _COMPRESSION_NAMES.get(value.strip().lower())
        if found is not None:
            return found
    raise ConfigError(f"{name} must be a grpc.Compression member or one of 'gzip', "
                      f"'deflate', 'none' (any case), got {quoted(value)}")


_KEY = re.compile(r"[0-9a-z_.\-]+")


#: Header names an application's metadata key must not name: grpc core reads these itself
#: and leaves them out of ``invocation_metadata()`` (gRPC over HTTP/2, PROTOCOL-HTTP2.md:
#: ``grpc-status`` in a request even makes grpc.aio report the call ``OK`` without its
#: response), and a request carrying a connection-specific header is malformed (RFC 9113
#: section 8.2.2).
CONSUMED_HEADERS = frozenset((
    "content-length", "content-type", "te", "grpc-accept-encoding", "grpc-encoding",
    "grpc-internal-encoding-request", "grpc-message", "grpc-previous-rpc-attempts",
    "grpc-status", "grpc-timeout", "connection", "keep-alive", "proxy-connection",
    "transfer-encoding", "upgrade"))


def check_metadata_key(name: str, key: object, *, binary_ok: bool = False) -> None:
    """Check that ``key`` (the field ``name``) can name gRPC text metadata: the characters
    gRPC allows in a key, ``Header-Name → 1*( %x30-39 / %x61-7A / "_" / "-" / "." )``
    (gRPC over HTTP/2, Custom-Metadata: lower case, so no ``:`` pseudo-header either), not
    ending in ``-bin`` (binary values) unless ``binary_ok``, and none of
    :data:`CONSUMED_HEADERS` (grpc core's own: an option naming one never sees it, or
    breaks every call).

    Raises:
        ConfigError: any other value; ``name`` and the value quoted.
    """
    if (not isinstance(key, str) or not _KEY.fullmatch(key)
            or (key.endswith("-bin") and not binary_ok)):
        raise ConfigError(
            f"{name} must be a lowercase gRPC metadata key (0-9 a-z _ - .), got {key!r}")
    if key in CONSUMED_HEADERS:
        raise ConfigError(
            f"{name} must not name a header grpc consumes itself (it never reaches the "
            f"application's metadata), got {key!r}")


#: What a key's or certificate's PEM holds and no file's path does: its armour
#: (``-----BEGIN``/``-----END``, also base64-encoded, as a Secret's data), ``PRIVATE KEY``
_PEM_MARKS = ("-----BEGIN", "-----END", "LS0tLS1CRUdJTi", "PRIVATE KEY")


def shown_path(value: object, *, secret_file: bool = False, quote: bool = True) -> str:
    """``value``, the path of a file an error names, as the message shows it: ``repr``
    (``str`` with ``quote=False``), unless it is no path but what the file should hold,
    given in its place: ``key_file=os.environ["TLS_KEY"]`` where the variable holds the
    key itself, ``CONSUL_HTTP_TOKEN_FILE`` set to the token. A ``str`` or ``bytes`` (or
    ``os.PathLike``) holding PEM armour (``-----BEGIN``, also base64-encoded) or
    ``PRIVATE KEY``, or a line break within it, or, with ``secret_file`` (the path of a
    token's file), one without a ``/`` that names no file, is named by its type and
    length only, so no key or token reaches the message, a traceback or a log. Errors
    only: never on a path that works."""
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    if isinstance(text, str) and (
            holds_content(text)
            or (secret_file and "/" not in text and not os.path.exists(text))):
        return (f"<a {type(value).__name__} of {len(text)} characters, not shown: the "
                "file's content rather than its path?>")
    return repr(value) if quote else str(value)


def holds_content(path: str) -> bool:
    """Whether ``path`` (given as a file's or directory's path) holds what a key's or
    certificate's file holds and no path does: PEM armour (also base64-encoded),
    ``PRIVATE KEY``, or a line break within it (see :func:`shown_path`)."""
    return any(mark in path for mark in _PEM_MARKS) or any(
        c in path.strip() for c in "\r\n")


def check_path(name: str, value: object) -> str:
    """``value`` (the field ``name``, a file or directory path) as a ``str``: a
    non-empty ``str`` or an ``os.PathLike`` whose path is one. ``None`` (an unset
    environment variable), ``bytes``, a number (``os`` would take it for a file
    descriptor), ``""`` (which ``Path`` reads as the current directory), a path
    holding a NUL character and one the file system's encoding cannot write (a lone
    surrogate such as a JSON ``"\\ud800"``; not the escape of a non-UTF-8 byte that
    ``os.environ`` gives: every ``open``/``stat`` of either raises a bare
    ``ValueError``) are refused, and so is a path starting with a ``~`` that a shell
    would have expanded (``~``, ``~/certs``, ``~user/x`` of a user there is): no shell
    did (an environment file, a systemd unit, a quoted value, ``--opt=~/x``), and taken
    as written it is a relative path under a directory named ``~`` in the working
    directory (what ``meshkit certs init`` made of ``MESHKIT_CERT_DIR="~/certs"``), not
    the home directory it reads as.

    Raises:
        ConfigError: any other value; ``name`` and the value quoted (as
            :func:`shown_path` shows it: never a key given for its path); for a ``~``,
            the path it stands for too.
    """
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{name} must be a path (a non-empty str or os.PathLike), "
                          f"got {shown_path(value)}")
    if "\x00" in text:  # else the first open/stat raises a bare ValueError
        raise ConfigError(f"{name} must be a path without a NUL character, got "
                          f"{shown_path(value)}")
    try:  # else the first open/stat raises a bare UnicodeEncodeError
        os.fsencode(text)
    except UnicodeEncodeError:
        raise ConfigError(f"{name} must be a path the file system can encode (no lone "
                          f"surrogate), got {shown_path(value)}") from None
    if (home := unexpanded_home(text)) is not None:
        raise ConfigError(f"{name} must be a path, got {shown_path(value)}, whose '~' no "
                          "shell expanded (an environment file, a quoted value, "
                          "--opt=~/...): taken as written it is a directory named '~' "
                          f"in the working directory; give the path itself, e.g. {home!r}")
    return text
