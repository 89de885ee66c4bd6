"""Building the network registries' options (Consul, etcd): the check of fields given in
seconds, addresses, values read from environment variables and from a registry URI, and
overrides checked against the options' fields."""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

from meshkit._config import check_seconds
from meshkit._env import decimal_number
from meshkit._uris import mask_query, shown_value, split_userinfo
from meshkit.errors import ConfigError

__all__ = [
    "at_sign_may_be_userinfo",
    "check_seconds",
    "env_fields",
    "env_value",
    "options_with",
    "parse_bool",
    "parse_go_duration",
    "parse_uri",
    "query_fields",
    "redact_address",
    "shown_uri",
    "split_address",
    "split_uri",
]

_T = TypeVar("_T")

_TRUE = ("1", "t", "true", "y", "yes", "on")
_FALSE = ("0", "f", "false", "n", "no", "off")


def redact_address(text: str) -> str:
    """``text`` (an address, ``[scheme://][user[:password]@]host[:port]``) with any user
    info replaced by ``***``, and the value of every query key and any fragment (an
    address has none, but a URL pasted for one may: Consul takes ``?token=``), for error
    messages: ``http://***@host:2379``, ``http://host:8500?token=***``."""
    if "@" in text:
        scheme, sep, _ = text.partition("://")
        text = f"{scheme}{sep}***@{text.rpartition('@')[2]}" if sep else \
            f"***@{text.rpartition('@')[2]}"
    if "?" not in text and "#" not in text:
        return text
    prefix, userinfo, rest = split_userinfo(text)
    return f"{prefix}{userinfo}{mask_query(rest)}"


def shown_uri(uri: str, known: Collection[str] = ()) -> str:
    """``uri`` as an error message may quote it: user info replaced by ``***``, the value
    of each query key not in ``known`` (the option names) and any fragment masked
    (``***``), so a password or a token under another name never reaches a log; the rest
    exactly as written (``etcd://***@h:2379?ttl_s=5&password=***``). A URI with neither
    comes back unchanged.

    User info is everything after ``scheme://`` up to the last ``@``, wherever that is: a
    password may hold an unencoded ``/``, ``?`` or ``#`` (generated passwords do), which a
    URI parser takes for the start of the path, query or fragment
    (``etcd://root:pa/ss@h:2379`` is shown ``etcd://***@h:2379``; see
    :func:`meshkit._uris.split_userinfo`)."""
    # without "//", "user:password@host" parses as scheme "user": masked all the same
    head, userinfo, after = split_userinfo(uri)
    if userinfo:
        head = f"{head}***@"
    return f"{head}{mask_query(after, known)}"


def at_sign_may_be_userinfo(uri: str, allowed: Collection[str]) -> bool:
    """Whether an ``@`` after ``scheme://`` in ``uri`` may be user info, which a registry
    URI refuses: one in the authority (before the first ``/``, ``?`` or ``#`` after
    ``//``), the path or the fragment (a password holding an unencoded ``/`` or ``#``
    ends the authority there: ``etcd://root:pa/ss@h``, ``etcd://root:pa#ss@h``), or in a
    query piece other than the value of an option named in ``allowed`` (a password
    holding ``?``: ``etcd://root:pw?x@h:2379`` gives the key ``x@h:2379``). An ``@`` in
    the value of an ``allowed`` option (a TLS file path,
    ``?ca_file=/run/credentials/orderd@1.service/ca.pem``) is plain URI text (RFC 3986
    allows it in a query); so is ``%40``. The caller still refuses an authority that is
    no list of addresses, unquoted, when the URI holds an ``@``
    (``etcd://root:pw?ca_file=x@h:2379`` keeps ``root:pw`` there)."""
    after = uri.partition("//")[2]
    if "@" not in after:
        return False
    rest, _, fragment = after.partition("#")
    base, _, query = rest.partition("?")
    if "@" in fragment or "@" in base:
        return True
    for piece in query.split("&"):
        key, eq, _value = piece.partition("=")
        if "@" in piece and (not eq or "@" in key
                             or urllib.parse.unquote_plus(key) not in allowed):
            return True
    return False


def _why_unparseable(text: str) -> str:
    """Why ``urllib.parse.urlsplit`` refused ``text`` (its own message may quote the
    whole host part, password and all, so it is not repeated)."""
    if "[" in text or "]" in text:
        return "an IPv6 host goes in brackets, both of them, as in [::1]:8500"
    return "it holds characters a URL may not"


def parse_uri(uri: str, what: str, known: Collection[str] = ()) -> urllib.parse.SplitResult:
    """``urllib.parse.urlsplit(uri)``, its refusal a ConfigError.

    Raises:
        ConfigError: ``uri`` is no string (``None`` from an unset variable, a
            ``pathlib.Path``, ``bytes``: named by its type only, it may hold a password),
            or a URI the parser refuses (an unbalanced ``[`` or ``]``, as in a typo'd
            IPv6 literal ``consul://[::1:8500``; a bracketed host that is no IPv6
            address); ``what`` names it (e.g. ``"registry URI"``), and it is quoted as
            :func:`shown_uri` gives it (``known``: the option names of its query).
    """
    if not isinstance(uri, str):  # urlsplit: a bare AttributeError, or bytes read as a URI
        raise ConfigError(f"{what} must be a string, got a {type(uri).__name__}")
    try:
        return urllib.parse.urlsplit(uri)
    except ValueError:  # urllib's bare 'Invalid IPv6 URL', naming nothing
        raise ConfigError(f"{what} {shown_uri(uri, known)!r} cannot be parsed: "
                          f"{_why_unparseable(uri)}") from None


def split_address(text: str, what: str) -> tuple[str | None, str, int | None]:
    """Split ``[scheme://]host[:port]`` (scheme ``http`` or ``https``, IPv6 hosts in
    brackets) into the scheme (``None``: not given), the host without brackets and the port
    (``None``: not given).

    Raises:
        ConfigError: another scheme, a port outside 1..65535, user info (``user:password@``,
            refused: a password must not sit in an address), more than a host and port,
            or an unbalanced ``[`` or ``]`` (a typo'd IPv6 literal ``[::1:8500``);
            ``what`` names the value (e.g. ``"addr"``), which is quoted with any user info
            replaced by ``***`` (see :func:`redact_address`).
    """
    raw = text.strip()
    shown = redact_address(text)
    scheme: str | None = None
    if "://" in raw:
        scheme, raw = raw.split("://", 1)
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise ConfigError(f"{what} scheme must be http or https, got {shown!r}")
    try:
        parts = urllib.parse.urlsplit("//" + raw.rstrip("/"))
    except ValueError:  # urllib's bare 'Invalid IPv6 URL', naming nothing
        raise ConfigError(f"{what} must be host:port or scheme://host:port "
                          f"({_why_unparseable(raw)}), got {shown!r}") from None
    if "@" in parts.netloc:
        raise ConfigError(f"{what} must be host:port or scheme://host:port, without user "
                          f"info, got {shown!r}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{what} port must be 1..65535, got {shown!r}") from None
    if not parts.hostname or parts.path or parts.query or parts.username or parts.password:
        raise ConfigError(f"{what} must be host:port or scheme://host:port, got {shown!r}")
    if port == 0:
        raise ConfigError(f"{what} port must be 1..65535, got {shown!r}")
    return scheme, parts.hostname, port


def split_uri(uri: str, kind: str, label: str) -> tuple[urllib.parse.SplitResult, str]:
    """``uri`` split, and its scheme lower-cased: ``kind``, ``kind+http`` or ``kind+https``.

    Raises:
        ConfigError: another scheme (quoted), or a URI the parser refuses (see
            :func:`parse_uri`); ``label`` names the registry in the message (e.g.
            ``"Consul"``).
    """
    parts = parse_uri(uri, f"{label} URI")
    scheme = parts.scheme.lower()
    if scheme not in (kind, f"{kind}+http", f"{kind}+https"):
        raise ConfigError(f"{label} URI scheme must be {kind}, {kind}+http or {kind}+https, "
                          f"got {parts.scheme!r}")
    return parts, scheme


def parse_bool(name: str, value: str) -> bool:
    """Parse a boolean like Go's ``strconv.ParseBool`` (which Consul's CLI uses), plus yes/no.

    Raises:
        ConfigError: not a boolean; ``name`` and the value quoted.
    """
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"{name} must be a boolean (true/false), got {value!r}")


#: one element of a Go duration (``time.ParseDuration``): a decimal number (``1``, ``1.5``,
#: ``.5``, ``1.``) and its unit; ``µs`` as U+00B5 (micro sign) or U+03BC (Greek mu)
_GO_DURATION = re.compile(
    r"[-+]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h))+")
_GO_ELEMENT = re.compile(r"([0-9]*)(?:\.([0-9]*))?(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_GO_UNIT_NS = {"ns": 1, "us": 10**3, "\u00b5s": 10**3, "\u03bcs": 10**3, "ms": 10**6,
               "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
#: a Go ``time.Duration`` is int64 nanoseconds: a longer one fails ``ParseDuration``
_GO_MAX_NS = 2**63 - 1


def parse_go_duration(name: str, value: str) -> float:
    """``value`` (the variable or field ``name``), a Go duration as ``time.ParseDuration``
    reads one (what etcdctl's and Consul's duration flags and variables take), in seconds:
    an optional sign, then one or more decimal numbers each with its unit, ``ns``, ``us``
    (or ``µs``), ``ms``, ``s``, ``m``, ``h`` (``"2s"``, ``"500ms"``, ``"1m30s"``,
    ``".5s"``, ``"-1.5h"``), or ``"0"`` alone. Taken exactly: no blanks (strip first), no
    exponent, no ``_``, ASCII digits only. The sign is kept: the caller checks the range.

    Raises:
        ConfigError: anything else (a number without its unit, ``"2"``, included), or a
            duration beyond Go's (int64 nanoseconds, about 292 years); ``name`` and the
            value quoted.
    """
    if value in ("0", "+0", "-0"):
        return 0.0
    if not isinstance(value, str) or not _GO_DURATION.fullmatch(value):
        raise ConfigError(f"{name} must be a Go duration such as '2s', '500ms' or "
                          f"'1m30s' (a number and its unit: ns, us, ms, s, m, h), got "
                          f"{value!r}")
    negative = value.startswith("-")
    total_ns = _go_nanoseconds(value.lstrip("+-"))
    if total_ns is None or total_ns > _GO_MAX_NS + negative:  # -2**63 ns is a Duration
        raise ConfigError(f"{name} must be a Go duration of at most about 292 years "
                          f"(int64 nanoseconds), got {value!r}")
    return (-total_ns if negative else total_ns) / 1e9


def _go_nanoseconds(body: str) -> int | None:
    """The nanoseconds of ``body`` (a Go duration without its sign, matched by
    ``_GO_DURATION``) computed as ``time.ParseDuration`` computes them (integer
    nanoseconds, a fraction's ``float64(f) * (float64(unit) / scale)`` truncated, digits of
    a fraction past uint64 ignored), ``None`` past 2**63 ns (Go's overflow)."""
    total = 0
    for whole, fraction, unit in _GO_ELEMENT.findall(body):
        whole = whole.lstrip("0")
        if len(whole) > 19:  # (int() of over 4,300 digits raises)
            return None
        ns, per = int(whole or "0"), _GO_UNIT_NS[unit]
        if ns > 2**63 // per:
            return None
        ns *= per
        f, scale = 0, 1.0
        for digit in fraction:  # Go's leadingFraction
            if f > _GO_MAX_NS // 10 or f * 10 + int(digit) > 2**63:
                break  # Go skips the remaining digits
            f, scale = f * 10 + int(digit), scale * 10
        if f > 0:
            ns += int(float(f) * (float(per) / scale))
        total += ns
        if ns > 2**63 or total > 2**63:
            return None
    return total


def env_value(environ: Mapping[str, str], name: str) -> str | None:
    """The variable ``name`` of ``environ``, stripped; ``None`` when unset or empty."""
    return environ.get(name, "").strip() or None


def env_fields(environ: Mapping[str, str], fields: Mapping[str, str]) -> dict[str, Any]:
    """Option fields taken as they are from variables: ``fields`` maps a variable's name
    to the field it sets; unset or empty variables are left out (see :func:`env_value`)."""
    out: dict[str, Any] = {}
    for var, name in fields.items():
        if (value := env_value(environ, var)) is not None:
            out[name] = value
    return out


def query_fields(query: Mapping[str, list[str]], *, floats: Collection[str],
                 strs: Collection[str], bools: Collection[str] = (),
                 where: str) -> dict[str, Any]:
    """Option fields from a URI's parsed query (``urllib.parse.parse_qs``; the last value
    of a repeated key wins), typed by the field names in ``floats`` (a plain decimal
    number, :func:`meshkit._env.decimal_number`: not ``1_0``, ``inf`` or non-ASCII
    digits, which Python's ``float()`` takes), ``bools`` (see :func:`parse_bool`) and
    ``strs``.

    ``where`` says where the query comes from, the URI quoted as :func:`shown_uri` gives
    it (e.g. ``"etcd URI 'etcd://h:2379?ttl_s=5'"``): every error names it, so an operator
    with several configuration sources knows which one to fix.

    Raises:
        ConfigError: a value that is not a number or boolean (``ttl_s must be a number,
            got '3s' (in <where>)``; a value holding ``&``, ``;``, ``=`` or ``?``, a second
            pair run into it such as ``5;password=pw``, shown as ``'***'``), or a key
            that is none of those fields (``unknown option 'key' in <where>``).
    """
    out: dict[str, Any] = {}
    for key, values in query.items():
        value = values[-1]
        if key in floats:
            # a plain decimal number, as the environment's (not float()'s "1_0")
            if (number := decimal_number(value)) is None:
                raise ConfigError(f"{key} must be a number, got {shown_value(value)} "
                                  f"(in {where})")
            out[key] = number
        elif key in bools:
            try:
                out[key] = parse_bool(key, value)
            except ConfigError:
                raise ConfigError(f"{key} must be a boolean (true/false), got "
                                  f"{shown_value(value)} (in {where})") from None
        elif key in strs:
            out[key] = value
        else:
            # shown_value: a key that decodes to a run-in pair ('password%3Dpw') holds
            # its secret
            raise ConfigError(f"unknown option {shown_value(key)} in {where}")
    return out


def options_with(cls: type[_T], kwargs: dict[str, Any], overrides: Mapping[str, Any]) -> _T:
    """``cls(**kwargs)`` with ``overrides`` winning over ``kwargs``; ``cls`` is an options
    dataclass.

    Raises:
        ConfigError: an override names no field of ``cls`` (the names are listed), or what
            ``cls`` raises for a bad value.
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {unknown}")
    return cls(**{**kwargs, **overrides})
