"""meshkit's loggers stay quiet until the application configures logging.

Imported by every meshkit package that logs (its ``__init__``), so the quiet default is in
place whichever part of meshkit a program uses (``meshkit.discovery`` alone, a
``JWKSServer`` alone), without importing the rest of :mod:`meshkit.observability`.
Without it structlog's own default prints every ``meshkit.*`` line, debug included, on
stdout, which corrupts the output of any command-line tool using meshkit. The credential
redaction every meshkit line gets (:func:`redact_secrets`, re-exported by
:mod:`meshkit.observability`) lives here for the same reason. So does
:class:`RepeatLog`, shared by the packages whose lines come one per call (a refused
call): one line per kind of event and interval, the rest counted; and
:func:`context_without_meshkit`, the context its timer and a server's calls run in.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import io
import logging
import math
import re
import time
from collections.abc import Callable, Collection, Hashable, Mapping, MutableMapping
from typing import Any, TextIO, cast

import structlog

from meshkit._fork import reset_in_forked_child

__all__ = ["REDACTED", "RepeatLog", "context_without_meshkit", "get_logger",
           "is_sensitive_key", "printable", "redact_secrets"]

# Keys whose values are credentials, whatever the case or separator: ``authorization``,
# ``x-api-key``, ``access_token``, ``password``, ``cookie``, ``private_key``...; ``auth``
# (``authn``, ``authz``, ``oauth``) only as a whole word of the name (``x-auth``,
# ``x-sentry-auth``, ``x-auth-key``; not ``author``); the keys named for what they unlock
# (``x-access-key``, ``ocp-apim-subscription-key``, ``x-functions-key``, S3 SSE-C's
# ``x-amz-server-side-encryption-customer-key``, ``dd-application-key``, ``x-app-key``,
# ``x-admin-key``, ``x-insert-key``, ``session_key``), not every ``*-key``
# (``idempotency-key``, ``routing-key`` are no credentials)
_SENSITIVE_RE = re.compile(
    r"(authorization|authentication|auth[-_]?token|token|secret|password|passwd"
    r"|passphrase|cookie|api[-_]?key|private[-_]?key|credential|session[-_]?id|jwt|bearer"
    r"|(?:access|auth|subscription|functions?|master|signing|encryption(?:[-_]customer)?"
    r"|license|client|app(?:lication)?|admin|insert|session)[-_]?key"
    r"|(?<![a-z0-9])o?auth[nz]?(?![a-z0-9])"
    # not the identity an authenticating proxy passes on (oauth2-proxy's
    # x-auth-request-user/-email/-groups, x-auth-user, x-auth-email): no credential
    r"(?![-_](?:request[-_])?(?:user|email|groups|preferred[-_]username)$))",
    re.IGNORECASE,
)
REDACTED = "[REDACTED]"


def is_sensitive_key(key: str) -> bool:
    """Whether a metadata or log field name ``key`` names a credential.

    Matches (case-insensitively, anywhere in the name) ``authorization``,
    ``authentication``, ``token``, ``secret``, ``password``, ``passwd``, ``passphrase``,
    ``cookie``, ``api-key``/``api_key``, ``private-key``, ``credential``, ``session-id``,
    ``jwt``, ``bearer``, the keys named for what they unlock (``access``, ``auth``,
    ``subscription``, ``function(s)``, ``master``, ``signing``, ``encryption`` (also
    ``encryption-customer``), ``license``, ``client``, ``app``/``application``,
    ``admin``, ``insert`` or ``session`` then ``key``: ``x-access-key``, Azure's
    ``ocp-apim-subscription-key`` and ``x-functions-key``, Cloudflare's ``x-auth-key``,
    S3's ``x-amz-server-side-encryption-customer-key``, Datadog's
    ``dd-application-key``, New Relic's ``x-insert-key``),
    and ``auth``/``authn``/``authz``/``oauth`` as a whole word of the name (``x-auth``,
    Sentry's ``x-sentry-auth``; not ``author``, nor the identity headers an
    authenticating proxy sets, ending in ``user``, ``email``, ``groups`` or
    ``preferred-username``: oauth2-proxy's ``x-auth-request-user``, ``x-auth-email``;
    their ``x-auth-request-access-token`` is a token); so ``x-auth-token`` and
    ``grpc-trace-bin`` -> ``True``/``False`` respectively, and ``idempotency-key`` or
    ``routing-key`` (no credentials) -> ``False``.
    """
    hit = _sensitive_cache.get(key)
    if hit is None:
        hit = _SENSITIVE_RE.search(key) is not None
        if len(_sensitive_cache) < 4096:  # field names repeat; bounded all the same
            _sensitive_cache[key] = hit
    return hit


_sensitive_cache: dict[str, bool] = {}



def redact_secrets(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: replace the value of every field named like a credential
    (:func:`is_sensitive_key`) with ``"[REDACTED]"``, one level deep into dicts, and in
    ``(key, value)`` pair collections such as gRPC metadata: lists and tuples of pairs,
    ``grpc.aio.Metadata`` (what ``initial_metadata()``/``trailing_metadata()`` and a
    client interceptor's ``client_call_details.metadata`` are) and any other re-iterable
    collection of ``(key, value)`` pairs (not a string, bytes or a one-shot iterator, which
    reading would consume); such a collection is logged as the list of its pairs. A key
    may be ``str`` or ``bytes`` (as gRPC metadata keys may), in dicts as in pairs.

    In every string (or ``bytes``, ``bytearray``) field, the event's text included, and
    one level deep (a dict's values, a list's, tuple's or set's items, pairs' values),
    the user info of each URL (see :func:`redact_url_userinfo`) becomes ``[REDACTED]``:
    ``dsn="postgresql://app:pw@db/x"`` -> ``"postgresql://[REDACTED]@db/x"``, the host and
    path kept; so does the value of each ``key=value`` or ``key: value`` pair in it whose
    key names a credential (quoted too, as in a dict's repr, JSON or a ``(key, value)``
    pair's repr), a ``Bearer`` token and a PEM private key's body (:func:`redact_text`:
    ``dsn="host=db password=pw"`` -> ``"host=db password=[REDACTED]"``, ODBC's
    ``Pwd=pw;``, a URL query's ``?password=pw``, ``Authorization: Bearer t``); in time
    linear in the field's length. An exception in such a place (``error=e``: rendered as
    its ``repr``, which quotes its message) whose ``repr`` holds either is replaced by
    that ``repr``, redacted.

    A defence in depth: meshkit never logs metadata values or message bodies itself.
    """
    for key, value in event_dict.items():
        if key != "event" and is_sensitive_key(key):
            event_dict[key] = REDACTED
        elif isinstance(value, str):
            # a URL's user info (``user:password@``), a ``password=...`` pair, a bearer
            if ":" in value or "=" in value or "earer" in value or "EARER" in value or (
                    "'," in value or '",' in value  # ... a pair's repr, a PEM key
                    or "PRIVATE KEY" in value):
                event_dict[key] = redact_text(value)
        elif isinstance(value, bytes | bytearray):  # rendered as its repr, the URL whole
            if b":" in value or b"=" in value or b"earer" in value or b"EARER" in value or (
                    b"'," in value or b'",' in value or b"PRIVATE KEY" in value):
                event_dict[key] = _url_redacted(value)
        elif isinstance(value, dict):
            event_dict[key] = {k: REDACTED if isinstance(k, str | bytes) and _named_secret(k)
                               else _url_redacted(v) for k, v in value.items()}
        elif (isinstance(value, list | tuple) or (
                not isinstance(value, _NOT_PAIRS) and isinstance(value, Collection))) and (
                value and all(isinstance(p, tuple) and len(p) == 2 and isinstance(
                    p[0], str | bytes) for p in value)):
            event_dict[key] = [(k, REDACTED if _named_secret(k) else _url_redacted(v))
                               for k, v in value]
        elif type(value) in _PLAIN_COLLECTIONS and any(
                _url_redacted(v) is not v for v in value):  # a URL's user info in an item
            event_dict[key] = type(value)(_url_redacted(v) for v in value)
        elif isinstance(value, BaseException):  # rendered as its repr, its message whole
            event_dict[key] = _url_redacted(value)
    return event_dict


# the collections whose items redact_secrets reads (one level deep) and rebuilds as they
# were: rendered as their repr, every item whole
_PLAIN_COLLECTIONS = (list, tuple, set, frozenset)


def _url_redacted(value: Any) -> Any:
    """``value`` with the user info of each URL in it redacted when it is a ``str``,
    ``bytes`` or ``bytearray`` (of the same type; :func:`redact_secrets`), an
    exception's ``repr`` redacted when that holds one, else ``value`` as it is."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, BaseException):
        # an exception logged as a field (``error=e``): the renderers write its repr,
        # which quotes its message (an error quoting a connection string); that repr
        # redacted when it holds a URL's user info (what would have been written, less
        # the password), else the exception itself
        try:
            shown = repr(value)
        except Exception:  # a broken __repr__: the renderer's to meet
            return value
        redacted = redact_text(shown)
        return value if redacted is shown else redacted
    if isinstance(value, bytes | bytearray) and (
            b":" in value or b"=" in value or b"earer" in value or b"EARER" in value
            or b"'," in value or b'",' in value or b"PRIVATE KEY" in value):
        text = redacted = value.decode("latin-1")
        if "@" in text and "://" in text:
            redacted = _redact_urls(text, _SCHEME_BYTES_RE, _AUTHORITY_END_BYTES_RE,
                                    _AT_OR_SPACE_BYTES_RE)
        redacted = _redact_pairs(redacted, _PAIRS_BYTES)
        if redacted is not text:
            out = redacted.encode("latin-1")
            return bytearray(out) if isinstance(value, bytearray) else out
    return value


# where a URL's scheme starts (RFC 3986 §3.1), linear in the text's length: tried only
# where a run of scheme characters starts (the lookbehind), each run read once
# (possessive: no backtracking into it), its first letter where the scheme starts.
# ``[A-Za-z][A-Za-z0-9+.-]*://`` was tried at every letter of a long run, each try reading
# the run to its end: quadratic, ~1 s for 40,000 letters.
_SCHEME = r"(?<![A-Za-z0-9+.\-])[0-9+.\-]*+[A-Za-z][A-Za-z0-9+.\-]*+://"
_SCHEME_RE = re.compile(_SCHEME)
_AUTHORITY_END_RE = re.compile(r"[/?#@\s]")  # what ends a well-formed authority
_AT_OR_SPACE_RE = re.compile(r"[@\s]")
# the same for bytes, read as Latin-1 (lossless): whitespace is ASCII's only
_SCHEME_BYTES_RE = re.compile(_SCHEME, re.ASCII)
_AUTHORITY_END_BYTES_RE = re.compile(r"[/?#@\s]", re.ASCII)
_AT_OR_SPACE_BYTES_RE = re.compile(r"[@\s]", re.ASCII)


def _redact_urls(text: str, scheme_re: re.Pattern[str], end_re: re.Pattern[str],
                 at_re: re.Pattern[str]) -> str:
    """``text`` with each URL's user info ``[REDACTED]`` (the rule of
    :func:`redact_url_userinfo`); ``text`` itself when there is none."""
    out: list[str] = []
    done = 0  # text[:done] is in out (or needs nothing)
    skip = 0  # no user info starts before this (a scan already read that far)
    for m in scheme_re.finditer(text):
        start = m.end()
        if start < skip:
            continue
        end = end_re.search(text, start)
        if end is None:
            break  # no '@' after here: nothing more to redact
        at = end.start()
        if text[at] != "@":  # '/', '?', '#' or whitespace ends the authority
            authority = text[start:at]
            colon = authority.find(":")
            # a port, or the first of a host list's (``h1:27017,h2:27017``, ``h1,h2:5432``)
            port = authority[colon + 1:].partition(",")[0]
            if (text[at].isspace() or colon < 0 or authority.startswith("[")
                    or (port.isascii() and port.isdigit())):
                skip = at  # a host (and port): an '@' after it is in a path or query
                continue
            # ``user:password`` with a '/', '?' or '#' in the password (pasted
            # unencoded): the user info runs on to the next '@' before any whitespace
            found = at_re.search(text, at)
            if found is None or found.group() != "@":
                skip = found.start() if found is not None else len(text)
                continue
            at = found.start()
        out.append(text[done:start])
        out.append(REDACTED)
        done = skip = at  # the '@' kept
    if not out:
        return text
    out.append(text[done:])
    return "".join(out)


# ``key=value`` pairs in text (a libpq keyword DSN, an ODBC connection string, a URL's
# query) and ``key: value`` ones (an HTTP header quoted in a message): a key where a run
# of key characters starts (the lookbehind; read once: possessive), blanks around the
# '=' or ':' (libpq allows them); linear in the text's length
# ... or quoted, as a dict's repr or a JSON object writes it (``'password': 'x'``,
# ``"token":"abc"``), or a JSON object quoted in JSON (``\\"token\\": ...``; quoted
# again, ``\\\\\\"``: 2**k - 1 backslashes, k up to 4): the closing quote after the key
# (group 2)
# (the separator: group 3)
_PAIR_KEY = (r"(?<![A-Za-z0-9_.\-])([A-Za-z][A-Za-z0-9_.\-]*+)"
             r"((?:['\"]|\\\"|\\{3}\"|\\{7}\"|\\{15}\")?)"
             r"[ \t]*+([=:])[ \t]*+")
# a ``(key, value)`` pair as a tuple's repr writes it (a list of gRPC metadata pairs, a
# ``grpc.aio.Metadata``'s repr: ``('authorization', 'Basic abc')``): a '(' that follows
# no name (not a call's ``check('password', ...)``), the key quoted (group 2), a ','
_TUPLE_KEY = r"(?<![A-Za-z0-9_])\([ \t]*+b?(['\"])([A-Za-z][A-Za-z0-9_.\-]*+)\1,[ \t]*+"
# a PEM private key block (RFC 7468: ``-----BEGIN PRIVATE KEY-----``, ``RSA``/``EC``/
# ``ENCRYPTED``/``OPENSSH`` ... ``PRIVATE KEY``): its label (group 1), its body of base64
# and line breaks, raw or escaped as a repr writes them (any number of times: a repr of
# JSON text writes ``\\n``; the backslashes read once, possessive), and RFC 1421's
# headers of an encrypted one (``Proc-Type: 4,ENCRYPTED``, ``DEK-Info: AES-128-CBC,<iv>``:
# ':', ',', a '-' not starting the END line's five) (group 2), its END line when there is one
# (group 3); tried at each ``-----BEGIN `` only, the label bounded, the body read once
# (possessive; the lookahead bounded): linear
_PEM_KEY = (r"(-----BEGIN [A-Z0-9 ]{0,40}?PRIVATE KEY-----)"
            r"((?:[A-Za-z0-9+/=\s:,]|-(?!----)|\\++[nr])*+)"
            r"(-----END [A-Z0-9 ]{0,40}?PRIVATE KEY-----)?")
# the cookies after a ``Cookie`` header's first (RFC 6265 §4.2.1's cookie-string:
# ``name=value`` pairs joined by ';' and a blank): every one may be a session; possessive
_MORE_COOKIES = r"(?:;[ \t]*+[^\s;=]++=[^\s;]*+)*+"
# the ends of an exception class's name (PEP 8's ``Error``; ``Exception``, ``Warning``):
# ``PasswordError: wrong shape``, ``jwt.exceptions.InvalidTokenError: ...`` (a traceback's
# last line, ``str()`` of a chained error) are no ``key: value`` pairs
_CLASS_ENDS = ("Error", "Exception", "Warning")
# a value not opened by a quote or brace (those: _OPENED): up to whitespace, '&', ';' or
# a quote
_PAIR_VALUE = r"[^\s&;']*+"
# a quoted key's (a repr's, JSON's) bare value (a number, None): up to the ',', '}', ']'
# or ')' that ends it as well
_QUOTED_KEY_VALUE = r"[^\s&;'\",}\])]*+"
# a quoted value's body after its opening quote or brace (libpq's and Python's '...' and
# "..." with \ escapes, ODBC's {...} with }} escapes), read once, possessively: the
# closing quote or brace is what follows the match, when it is one; a value opened
# and not closed anywhere after ends at the first whitespace (_UNCLOSED), as a bare one;
# ... and a string of JSON quoted in JSON text (``\\"a b\\"``), its quotes escaped once:
# its own escapes (``\\\\\\"``, a quote in it) an escaped backslash then an escaped
# character, no raw '"' (that would end the outer string)
_OPENED = {"'": r"(?:[^'\\]|\\.)*+", '"': r'(?:[^"\\]|\\.)*+', "{": r"(?:[^}]|\}\})*+",
           '\\"': r'(?:[^\\"]|\\[^\\"]|\\\\(?:\\.|[^\\"]))*+'}
_CLOSING = {"'": "'", '"': '"', "{": "}", '\\"': '\\"'}
# ... and one quoted k = 2..4 times (JSON of JSON of JSON): its quotes written with
# N = 2**k - 1 backslashes, each backslash of the string's own text with 2**k = M; its body
# what stands for that string's characters: a plain one, an escaped backslash (2M), an
# escaped quote (2M - 1 and a quote), an escape of another character (M, or any run
# under 2M before no backslash or quote: lenient); its end N backslashes and a quote
for _n in (3, 7, 15):
    _CLOSING["\\" * _n + '"'] = "\\" * _n + '"'
    _OPENED["\\" * _n + '"'] = (rf'(?:[^\\"]|\\{{{2 * _n + 2}}}|\\{{{2 * _n + 1}}}"'
                                 rf'|\\{{1,{2 * _n + 1}}}+(?![\\"]))*+')
# a run of backslashes then a quote that may open a value quoted in JSON (N as above)
_ESCAPED_QUOTE = r'\\{1,15}+"'

_UNCLOSED = r"[^\s]*+"
# the credential after an auth scheme taken for a value (``Authorization: Bearer <token>``)
_SCHEME_CREDENTIAL = r"[ \t]++[^\s&;']++"
# ``Bearer <token>`` anywhere (RFC 6750's b64token, 8 characters or more: "bearer token"
# in prose is none)
_BEARER = r"(?<![A-Za-z0-9_\-])bearer[ \t]++([A-Za-z0-9\-._~+/]{8,}+=*+)"
# a port after a ``host:`` (1 to 5 digits, then the end, a blank, a URL delimiter or a
# sentence's period): ``auth.default.svc:443``, ``http://auth:8080/x`` are no
# ``key: value`` pairs (a ``:`` with no blank on either side only)
_PORT = r"[0-9]{1,5}+(?:[/?#,;&)\]}>\"'|]|\.?(?:\s|\Z))"
# the auth schemes (the IANA registry's, case-insensitive) a credential follows
_AUTH_SCHEMES = frozenset({"basic", "bearer", "digest", "dpop", "hoba", "mutual",
                           "negotiate", "ntlm", "token", "apikey", "hmac", "aws4-hmac-sha256"})
# ODBC's password keyword, which names no credential to is_sensitive_key
_PAIR_SECRETS = frozenset({"pwd"})
# values masked already (meshkit._uris masks a URI's query values with ``***``)
_MASKS = frozenset({"***", REDACTED})


class _PairRes:
    """The compiled patterns of :func:`_redact_pairs`, for text (``str``) or for bytes read
    as Latin-1 (``re.ASCII``: whitespace is ASCII's only)."""

    __slots__ = ("bearer", "cookies", "credential", "escaped_quote", "key", "opened", "pem",
                 "port", "quoted_value", "tuple_key", "unclosed", "value")

    def __init__(self, flags: int) -> None:
        self.key = re.compile(_PAIR_KEY, flags)
        self.port = re.compile(_PORT, flags)
        self.value = re.compile(_PAIR_VALUE, flags | re.DOTALL)
        self.quoted_value = re.compile(_QUOTED_KEY_VALUE, flags | re.DOTALL)
        self.opened = {c: re.compile(body, flags | re.DOTALL) for c, body in _OPENED.items()}
        self.unclosed = re.compile(_UNCLOSED, flags)
        self.escaped_quote = re.compile(_ESCAPED_QUOTE, flags)
        self.tuple_key = re.compile(_TUPLE_KEY, flags)
        self.pem = re.compile(_PEM_KEY, flags)
        self.cookies = re.compile(_MORE_COOKIES, flags)
        self.credential = re.compile(_SCHEME_CREDENTIAL, flags)
        self.bearer = re.compile(_BEARER, flags | re.IGNORECASE)


_PAIRS = _PairRes(0)
_PAIRS_BYTES = _PairRes(re.ASCII)


def _redact_pairs(text: str, res: _PairRes) -> str:
    """``text`` with the value of each ``key=value`` or ``key: value`` pair whose key
    names a credential (:func:`is_sensitive_key`, or ``pwd``) ``[REDACTED]`` (a value
    that is an auth scheme with the credential after it), and each ``Bearer <token>``'s
    token; ``text`` itself when there is none."""
    out: list[str] = []
    done = 0
    # where each opener's (quote's, brace's) last scan ended: a later one opened before
    # that is closed there too, or not either (_value_end); the whole stays linear
    scans: dict[str, int] = {}
    if "PRIVATE KEY-----" in text:  # a PEM private key, wherever it stands: its body
        text = res.pem.sub(_pem_mask, text)
    if "'," in text or '",' in text:  # a quoted key then ',': maybe a pair's repr
        text = _redact_tuple_pairs(text, res)
    if "=" in text or ":" in text:
        for m in res.key.finditer(text):
            if m.start() < done:
                continue  # inside a value redacted already
            key = m.group(1)
            if not (is_sensitive_key(key) or key.lower() in _PAIR_SECRETS):
                continue
            quoted = m.end(2) > m.start(2)  # a repr's or JSON's key: no host
            if not quoted and m.group(3) == ":" and _is_class_name(key):
                continue  # ``InvalidTokenError: bad`` names an exception, no key
            if not quoted and m.end() - m.end(1) == 1 and text[m.end(1)] == ":" and (
                    text[m.start() - 1:m.start()] == "@"
                    or text[max(m.start() - 2, 0):m.start()] == "//"
                    or res.port.match(text, m.end()) is not None):
                continue  # a host (``//auth:8080/x``, scp's ``git@auth:repo``), a port
            start = m.end()
            end, closed = _value_end(text, start, quoted, res, scans)
            if end == start or text[start:end] in _MASKS:
                continue  # no value (``password=`` at the end, before a separator), masked
            if not closed and text.startswith("-----BEGIN ", start):
                continue  # a PEM block: a private key's body is redacted (above)
            if quoted and closed:  # the quotes kept: the repr or JSON stays well-formed
                inner = _QUOTES_RE.fullmatch(text, start, end)
                if inner is not None:
                    if inner.group(2) in _MASKS:
                        continue
                    start, end = inner.start(2), inner.end(2)
            elif not closed and text[start + (text[start] in "'\"{"):end].lower(
                    ) in _AUTH_SCHEMES:  # ``Bearer <token>`` (``'Bearer <token>`` not
                # closed): both
                credential = res.credential.match(text, end)
                if credential is not None:
                    end = credential.end()
            elif not closed and key.lower() == "cookie":  # a Cookie header: every cookie
                more = res.cookies.match(text, end)
                if more is not None:
                    end = more.end()
            out.append(text[done:start])
            out.append(REDACTED)
            done = end
        if out:
            out.append(text[done:])
            text = "".join(out)
    if "earer" in text or "EARER" in text:
        redacted = res.bearer.sub(_bearer_mask, text)
        if redacted != text:
            return redacted
    return text


def _redact_tuple_pairs(text: str, res: _PairRes) -> str:
    """``text`` with the value of each ``(key, value)`` pair's repr whose key names a
    credential ``[REDACTED]``, its quotes kept (``('x-api-key', 'k')`` ->
    ``('x-api-key', '[REDACTED]')``); a pair only when its value closes the tuple (``)``
    right after it); ``text`` itself when there is none."""
    out: list[str] = []
    done = 0
    scans: dict[str, int] = {}
    for m in res.tuple_key.finditer(text):
        if m.start() < done:
            continue
        key = m.group(2)
        if not (is_sensitive_key(key) or key.lower() in _PAIR_SECRETS):
            continue
        start = m.end()
        # a value opened and not closed is none (read no further: each such read would
        # run to the next blank, and none is a pair's, whose ')' follows its value)
        end, closed = _value_end(text, start, True, res, scans, to_blank=False)
        if end == start or text[end:end + 1] != ")":
            continue  # no value, or no pair (a tuple of three names)
        if closed:
            inner = _QUOTES_RE.fullmatch(text, start, end)
            if inner is not None:
                start, end = inner.start(2), inner.end(2)
        if text[start:end] in _MASKS:
            continue
        out.append(text[done:start])
        out.append(REDACTED)
        done = end
    if not out:
        return text
    out.append(text[done:])
    return "".join(out)


def _is_class_name(key: str) -> bool:
    """Whether ``key`` reads as an exception class's name, dotted or not
    (``PasswordError``, ``jwt.exceptions.InvalidTokenError``): its last part a
    capitalised identifier ending in ``Error``, ``Exception`` or ``Warning``."""
    name = key.rpartition(".")[2]
    return name[:1].isupper() and name.endswith(_CLASS_ENDS) and name.isidentifier()


def _value_end(text: str, pos: int, quoted_key: bool, res: _PairRes,
               scans: dict[str, int], *, to_blank: bool = True) -> tuple[int, bool]:
    """Where the value at ``text[pos:]`` ends, and whether it is a closed quoted or braced
    one (its quotes or braces included): ``'...'``, ``"..."`` (also ``b'...'``), ``{...}``
    to the closing quote or brace; one not closed up to the first whitespace (with
    ``to_blank``; else ``pos``: no value); else a bare value (a quoted key's up to a
    ``,``, ``}``, ``]`` or ``)`` too).

    ``scans`` (one per text, empty at first) holds where each opener's last scan of the
    text ended (its closing quote or brace, or the text's end when there was none): an
    opener inside that scan is closed at the same place (``{{{...}``: a scan from a later
    ``{`` reads the same tokens to the same ``}``), or not either, so no character is
    scanned twice and a text of many openers stays linear."""
    opener = text[pos:pos + 1]
    body = pos + 1
    if opener == "b" and text[body:body + 1] in ("'", '"'):  # a bytes repr's b'...'
        opener = text[body]
        body += 1
    elif opener == "\\":  # JSON quoted in JSON: \"...\" (again: \\\"...\\\", ...)
        run = res.escaped_quote.match(text, pos)
        if run is not None and run.group() in _CLOSING:
            opener = run.group()
            body = run.end()
    if opener in _CLOSING:
        closing = _CLOSING[opener]
        after = scans.get(opener, -1)
        if after < body:  # past the last scan (or none yet): read this one
            scanned = res.opened[opener].match(text, body)
            after = scanned.end() if scanned is not None else body
            if not text.startswith(closing, after):
                after = len(text)  # none closed: nor is any opened later
            scans[opener] = after
        if after < len(text):
            return after + len(closing), True
        if not to_blank:
            return pos, False
        found = res.unclosed.match(text, body)
        return (found.end() if found is not None else body), False
    found = (res.quoted_value if quoted_key else res.value).match(text, pos)
    return (found.end() if found is not None else pos), False


# a quoted value's inside (group 2), between its (closed) quotes (group 1: ', ", \")
_QUOTES_RE = re.compile(r"b?(['\"]|\\++\")(.*)\1", re.DOTALL)


def _pem_mask(m: re.Match[str]) -> str:
    """A PEM private key block with its body ``[REDACTED]``, its BEGIN and END lines kept
    (none but the BEGIN line when it has no body)."""
    if not m.group(2):
        return m.group()
    return f"{m.group(1)}{REDACTED}{m.group(3) or ''}"


def _bearer_mask(m: re.Match[str]) -> str:
    """A ``Bearer <token>`` match with its token ``[REDACTED]``."""
    return f"{m.group()[:m.start(1) - m.start()]}{REDACTED}"


def _named_secret(key: str | bytes) -> bool:
    """:func:`is_sensitive_key` of a key given as ``str`` or as ``bytes`` (as metadata
    keys may be; a byte that is not ASCII is read as Latin-1, so never fails)."""
    return is_sensitive_key(key if isinstance(key, str) else key.decode("latin-1"))


# values redact_secrets never reads as pair collections (strings and bytes iterate over
# characters; the scalars are tested first because the Collection ABC check costs more)
_NOT_PAIRS = (str, bytes, bytearray, memoryview, int, float, bool, type(None))


def _plain_traceback(sio: TextIO, exc_info: structlog.typing.ExcInfo) -> None:
    """structlog's plain traceback: the console renderer's default is ``rich``'s
    traceback when ``rich`` is installed, which prints every frame's local variables
    (``show_locals=True``; a token or request held in one would reach the log), or
    ``better_exceptions``', which shows values too. A function of its own, not
    ``plain_traceback`` itself, which ConsoleRenderer would take for its default when
    neither is installed and swap for the monochrome default without colors. A URL's
    user info in it (an error quoting a connection string) is redacted, as in the
    fields (:func:`redact_secrets`)."""
    text = io.StringIO()
    structlog.dev.plain_traceback(text, exc_info)
    sio.write(redact_text(text.getvalue()))


def redact_text(text: str) -> str:
    """``text`` with each URL's user info (:func:`redact_url_userinfo`) and the value of
    each ``key=value`` or ``key: value`` pair whose key names a credential
    (:func:`is_sensitive_key`, or ODBC's ``pwd``) ``[REDACTED]``: a libpq keyword DSN's
    ``password=...`` (quoted or not: ``'...'`` or ``"..."`` with ``\\`` escapes, whole,
    blanks included; a quote not closed anywhere after it ends at the first whitespace,
    ``password='abc rest`` -> ``password=[REDACTED] rest``), an ODBC string's
    ``Pwd=...;`` (braced or not; a brace not closed likewise), a URL query's
    ``password=...&``, a header line's ``Authorization: Bearer <token>`` (an auth scheme
    as the value: the credential after it too), a ``Cookie:`` header's every cookie
    (RFC 6265's cookie-string, ``a=1; session=x`` whole), ``access_token=...``; a dict's
    repr or a JSON object's quoted key (``{'password': 'p w'}`` ->
    ``{'password': '[REDACTED]'}``, ``{"token":"abc"}``, ``{b'authorization': b'x'}``,
    JSON quoted in JSON ``{\\"token\\": \\"abc\\"}``, and quoted again up to four
    times in all, ``\\\\\\"``: the quotes kept, a bare value
    such as ``1234`` up to the ``,``, ``}``, ``]`` or ``)`` after it); a ``(key, value)``
    pair's repr (gRPC metadata written as text: ``[('x-api-key', 'k')]`` ->
    ``[('x-api-key', '[REDACTED]')]``, a ``(`` after no name, the value closing the
    tuple); each ``Bearer <token>`` (8 characters or more) wherever it stands; and the
    body of each PEM private key block (RFC 7468's ``-----BEGIN ... PRIVATE KEY-----``,
    up to its END line or the first character no base64 line has; its line breaks raw
    or escaped, once or more: ``\\n``, ``\\\\n``), the BEGIN and END
    lines kept, wherever it stands (certificates and public keys as they are).
    Other pairs as they are (a credential-named key's value is redacted whatever it is:
    ``token: expired`` too), and so is an exception class's name before ``:``
    (``PasswordError: wrong shape``, ``jwt.exceptions.InvalidTokenError: ...``: a
    capitalised name ending in ``Error``, ``Exception`` or ``Warning`` is no key), and
    so is a ``host:port`` or ``user@host:path`` (a ``:`` with no blank on either side
    after ``//`` or ``@``, or before a port's 1 to 5 digits: ``http://auth:8080/x``,
    ``auth.default.svc:443``, ``git@auth-host:repo`` stay whole; ``password:1234`` so
    too, ``password: 1234`` and ``password=1234`` not).
    ``text`` itself when there is nothing to redact; linear in its length."""
    return _redact_pairs(redact_url_userinfo(text), _PAIRS)


def redact_url_userinfo(text: str) -> str:
    """``text`` with the user info of each URL in it ``[REDACTED]`` (as
    :func:`redact_secrets` does in every string field); linear in its length.

    A URL's user info is what stands between ``scheme://`` and ``@`` before the first
    ``/``, ``?`` or ``#`` (RFC 3986 §3.2.1), or, when the text up to that first ``/``,
    ``?`` or ``#`` reads ``user:password`` (a ``:`` not followed by a port's digits
    alone or before a ``,``, as in a host list; no bracketed IP literal), everything up
    to the next ``@`` before any whitespace: a password pasted unencoded (``postgresql://u:pa/ss@h/db``,
    ``redis://:p?w#d@h:6379``) is redacted whole. An ``@`` in a path or query after a
    host (``https://h/@user``, ``https://h:8443/@scope/pkg``) is no user info. Not
    redacted: a password whose characters before its first ``/``, ``?`` or ``#`` are
    all digits (``u:123/x@h`` reads as host ``u``, port 123), and the part of a password
    after an unencoded ``@`` in it (an ``@`` ends user info, as in a well-formed URL).
    """
    if "@" in text and "://" in text:
        return _redact_urls(text, _SCHEME_RE, _AUTHORITY_END_RE, _AT_OR_SPACE_RE)
    return text  # (the same object when there is nothing to redact)


def redact_exception(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor, after ``format_exc_info``: the user info of each URL in the
    ``exception`` field (the traceback, made after :func:`redact_secrets` ran: an error
    quoting ``postgresql://app:pw@db/x``) becomes ``[REDACTED]``."""
    text = event_dict.get("exception")
    if isinstance(text, str):
        event_dict["exception"] = redact_text(text)
    return event_dict


class _StdlibLine:
    """A structlog logger that hands each rendered line to the standard library logger of
    the same name (``logging.getLogger(name)``): where meshkit's own loggers write until
    :func:`configure_logging` (or the application's ``structlog.configure``) says
    otherwise. With no logging set up, Python prints ``WARNING`` and above on stderr
    (its last-resort handler) and drops the rest."""

    __slots__ = ("_logger",)

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def enabled(self, method_name: str) -> bool:
        return self._logger.isEnabledFor(_METHOD_LEVELS.get(method_name, logging.INFO))

    def _emit(self, level: int, message: Any) -> None:
        self._logger.log(level, message)

    def debug(self, message: Any) -> None:
        self._emit(logging.DEBUG, message)

    def info(self, message: Any) -> None:
        self._emit(logging.INFO, message)

    def warning(self, message: Any) -> None:
        self._emit(logging.WARNING, message)

    def error(self, message: Any) -> None:
        self._emit(logging.ERROR, message)

    def critical(self, message: Any) -> None:
        self._emit(logging.CRITICAL, message)

    msg = log = info
    warn = warning
    exception = error
    fatal = critical


_METHOD_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "msg": logging.INFO,
                  "log": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING,
                  "error": logging.ERROR, "exception": logging.ERROR,
                  "critical": logging.CRITICAL, "fatal": logging.CRITICAL}


def _is_meshkit(name: Any) -> bool:
    return isinstance(name, str) and (name == "meshkit" or name.startswith("meshkit."))


_structlog_configured = structlog.is_configured


class _QuietFactory:
    """structlog's logger factory while nothing configured structlog: ``meshkit.*``
    loggers go to the standard library (:class:`_StdlibLine`), every other logger to
    stdout as structlog's own default does. Once the application configured structlog
    without a logger factory of its own (``structlog.configure(processors=[...])`` leaves
    this one in place), ``meshkit.*`` loggers print like every other logger: they follow
    the application's configuration."""

    def __call__(self, *args: Any) -> Any:
        if args and _is_meshkit(args[0]) and not _structlog_configured():
            return _StdlibLine(args[0])
        return structlog.PrintLogger()


def _drop_disabled(logger: Any, method_name: str,
                   event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: drop, before any rendering, an event the standard library
    logger it goes to would drop (e.g. ``debug`` lines with logging unconfigured)."""
    if isinstance(logger, _StdlibLine) and not logger.enabled(method_name):
        raise structlog.DropEvent
    return event_dict


class _QuietRenderer:
    """The last processor of the quiet default: structlog's default renderer
    (``default``) for every logger but meshkit's, whose lines (:class:`_StdlibLine`) get
    what :func:`configure_logging` gives them: credential-named fields, such as the ones
    the application bound with ``structlog.contextvars``, redacted
    (:func:`redact_secrets`), and a traceback without the frames' local variables
    (:func:`_plain_traceback`; the default console renderer uses ``rich`` with
    ``show_locals=True`` or ``better_exceptions`` when installed). No colors: the line
    goes to the standard library's handlers, a file as readily as a terminal."""

    __slots__ = ("_default", "_meshkit")

    def __init__(self, default: Any) -> None:
        self._default = default
        self._meshkit = structlog.dev.ConsoleRenderer(colors=False,
                                                      exception_formatter=_plain_traceback)

    def __call__(self, logger: Any, method_name: str,
                 event_dict: MutableMapping[str, Any]) -> Any:
        if isinstance(logger, _StdlibLine):
            return self._meshkit(logger, method_name,
                                 redact_secrets(logger, method_name, event_dict))
        return self._default(logger, method_name, event_dict)


def _install_quiet_default() -> None:
    """Make an unconfigured structlog quiet for meshkit: without this, structlog's default
    prints every ``meshkit.*`` line (debug included) on stdout, which corrupts the output
    of any command-line tool using meshkit. meshkit's lines are rendered without frame
    locals and with credentials redacted (:class:`_QuietRenderer`). Left alone when
    structlog is configured."""
    if structlog.is_configured():
        return
    processors = list(structlog.get_config()["processors"])
    if processors:
        processors[-1] = _QuietRenderer(processors[-1])
    structlog.configure(processors=[_drop_disabled, *processors],
                        logger_factory=_QuietFactory())
    # still "not configured" for the application: its structlog.configure_once() applies
    holder = getattr(getattr(structlog, "_config", None), "_CONFIG", None)
    if holder is not None and hasattr(holder, "is_configured"):
        holder.is_configured = False


_install_quiet_default()


def printable(s: str) -> str:
    """``s`` with each character that is not printable (``str.isprintable``: C0 and C1
    controls, DEL, line and paragraph breaks, Unicode format characters such as U+202E)
    but the space escaped as ``repr`` writes it (``\\x1b``, ``\\n``, ``\\u202e``); ``s``
    itself when it has none. For text of a caller's written to a log: raw, an ESC
    sequence acts on the terminal of whoever reads the log (the console renderer writes a
    value as it is) and a line break forges a line."""
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in s)


def get_logger(name: str) -> Any:
    """The structlog logger meshkit's modules write to (``name`` like ``meshkit.channel``).

    Until :func:`configure_logging` or the application's own ``structlog.configure``
    runs, ``meshkit.*`` loggers write through the standard library's ``logging`` (so
    nothing goes to stdout; warnings reach stderr via Python's last-resort handler or the
    application's handlers), in structlog's console format without colors, tracebacks
    without frame locals and credential-named fields redacted; afterwards they follow
    that configuration.
    """
    return structlog.get_logger(name)


def context_without_meshkit() -> contextvars.Context:
    """A copy of the current context holding every variable but meshkit's own (every one
    named ``meshkit_...``: a call's claims, peer, token, deadline...), with an empty
    OpenTelemetry context (no current span, no baggage): the context of what runs for
    the application rather than for one call (a server's calls, :class:`RepeatLog`'s
    timer). The application's own variables (``structlog.contextvars`` bound at
    start-up, say) stay."""
    kept = [(var, value) for var, value in contextvars.copy_context().items()
            if not var.name.startswith("meshkit_")]
    ctx = contextvars.Context()
    ctx.run(_set_each, kept)
    return ctx


def _set_each(pairs: list[tuple[contextvars.ContextVar[Any], Any]]) -> None:
    from opentelemetry import context as otel_context  # (not imported by meshkit's base)

    for var, value in pairs:
        var.set(value)
    # the current span and W3C baggage (a handler's caller's user.id, say) are that
    # call's, not those of what runs in this context
    otel_context.attach(otel_context.Context())


_UNTRACKED: Any = object()  # RepeatLog's kind for the events of kinds past max_kinds


class RepeatLog:
    """One log line per kind of event and interval, the events after it counted: for a line
    each call would otherwise get (a refused call), which a flood (a caller with a bad
    token at 10k calls/s, a credential-stuffing attacker) turns into a flood of lines.

    - The first event of a kind (``key``) is logged at once, in full: ``event`` with
      ``fields``, the key's fields (``key_fields`` named, ``key`` valued) and the
      report's own.
    - Later events of the kind within ``interval_s`` of that line are only counted; the
      count is logged in one ``summary`` line (``fields``, the key's fields,
      ``count``: the events not logged on a line of their own, ``over_s``: the seconds
      they were counted over) when the interval ends: by a timer on the running event
      loop (at most ``interval_s / 4`` late), or at the kind's next event after it,
      whichever comes first, or at :meth:`flush`. Counting then starts again for
      another interval; a kind with no event in a whole interval is forgotten, so its
      next event is logged in full again. So every event is told, on a line of its own
      or in a count (lines of ``event`` plus the ``count`` of the ``summary`` lines is
      the number of events), and a kind gets at most about two lines per interval.
    - A key's string values are written with their non-printable characters escaped as
      ``repr`` writes them (a caller's method name: an ESC sequence would act on the
      terminal showing the console log, a line break forge a line).
    - At most ``max_kinds`` kinds are tracked at once (memory stays bounded whatever a
      flood varies); an event of a further kind is logged and counted as one more kind,
      shared by all of them: its lines carry ``untracked=True`` (the full line the
      event's own key fields, the summary none).

    An event counted costs a clock read, a dict lookup and an addition (the first of an
    interval also makes sure a timer runs on the running loop: events counted on a loop
    other than the one that logged the full line, a later ``asyncio.run()``, are told
    there); a line logged, building its fields. Reports come from one thread (a server's
    event loop) or are serialised by the caller; the timer is armed on the loop running
    when a report needs one (none without a running loop: counts are then told at the
    kind's next event after the interval, or at :meth:`flush`).

    The timer's lines are logged in a copy of the context the log was built in, without
    meshkit's own per-call variables (:func:`context_without_meshkit`): they carry the
    fields the application bound with ``structlog.contextvars`` before building it (at
    start-up: deployment, pod), as the full lines do, but neither the fields nor the
    claims of the call whose report armed the timer. A count told at the kind's next
    event or at :meth:`flush` is logged in that caller's context, as the full line is.

    Args:
        log: the structlog logger to write to (the module's ``_log``; not a bound one
            made before the application configured logging).
        event: the full line's event, e.g. ``"call refused"``.
        summary: the count line's event, e.g. ``"calls refused"``.
        key_fields: the names of a key's values, in order, e.g.
            ``("method", "code", "reason")``.
        fields: fields every line carries, e.g. ``{"by": "jwt"}`` (default none).
        level: the lines' level, a logger method name (default ``"info"``).
        interval_s: seconds a kind's count runs before it is logged (default 60; > 0).
        max_kinds: kinds tracked at once (default 256; >= 1).
        clock: monotonic seconds (default ``time.monotonic``); the timer runs on the
            event loop's own clock.

    In a child made by ``os.fork()`` a log starts afresh (no kinds, no timer): the events
    counted before the fork are told by the parent only. At interpreter exit the counts
    not yet told are (:meth:`flush`).

    Raises:
        ConfigError: ``interval_s`` not a finite number > 0, or ``max_kinds`` not an
            integer >= 1 (a bool is neither; value quoted).
    """

    __slots__ = ("__weakref__", "_clock", "_context", "_event", "_fields", "_interval_s",
                 "_key_fields", "_kinds", "_level", "_log", "_max_kinds", "_summary",
                 "_timer", "_timer_loop")

    def __init__(self, log: Any, event: str, summary: str, *, key_fields: tuple[str, ...],
                 fields: Mapping[str, Any] | None = None, level: str = "info",
                 interval_s: float = 60.0, max_kinds: int = 256,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not isinstance(interval_s, int | float) or isinstance(interval_s, bool) or not (
                math.isfinite(interval_s) and interval_s > 0):
            from meshkit.errors import ConfigError
            raise ConfigError(f"interval_s must be a finite number > 0, got {interval_s!r}")
        if not isinstance(max_kinds, int) or isinstance(max_kinds, bool) or max_kinds < 1:
            from meshkit.errors import ConfigError
            raise ConfigError(f"max_kinds must be an integer >= 1, got {max_kinds!r}")
        self._log = log
        self._event = event
        self._summary = summary
        self._key_fields = key_fields
        self._fields = dict(fields or {})
        self._level = level
        self._interval_s = float(interval_s)
        self._max_kinds = max_kinds
        self._clock = clock
        # key (or _UNTRACKED) -> [start of its interval, events counted in it]
        self._kinds: dict[Hashable, list[float]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        # the timer's: the builder's (the application's fields), no call's
        self._context = context_without_meshkit()
        _repeat_logs.add(self)  # a forked child starts with no counts (_forget_parent)

    def _forget_parent(self) -> None:
        """In a child made by ``os.fork()``: no kinds and no timer. The events counted
        before the fork are the parent's to tell (it does); told by every child as well,
        the counts summed over the processes would exceed the events. The timer was the
        parent loop's."""
        self._kinds = {}
        self._timer = self._timer_loop = None

    def report(self, key: tuple[Hashable, ...], **extra: Any) -> None:
        """One event of kind ``key`` (a value per ``key_fields`` name, in order): logged
        or counted, as the class docstring says. ``extra``: fields of the full line only
        (e.g. ``rule=...``), never a credential."""
        kinds = self._kinds
        slot: Hashable = key
        kind = kinds.get(key)
        if kind is None and len(kinds) >= self._max_kinds:
            slot = _UNTRACKED
            kind = kinds.get(_UNTRACKED)
        now = self._clock()
        if kind is not None:
            if 0.0 <= now - kind[0] < self._interval_s:
                kind[1] += 1
                if kind[1] == 1:  # the interval's first count: a timer to tell it, here
                    self._arm()  # (the one armed may be on a loop that has ended)
                return
            if kind[1]:  # its interval is over (the timer is late, or none runs)
                start = kind[0]
                self._summarise(slot, kind, now)
                if 0.0 <= now - start < 2 * self._interval_s:
                    kind[1] = 1  # the first event of the next interval's count
                    self._arm()
                    return
                # a whole interval without an event after the count's: news, as below
        kinds[slot] = [now, 0]
        line = dict(self._fields)
        line.update(zip(self._key_fields, _shown(key), strict=True))
        if slot is _UNTRACKED:
            line["untracked"] = True
        line.update(extra)
        getattr(self._log, self._level)(self._event, **line)
        self._arm()

    def flush(self) -> None:
        """Log the count of every kind with events not yet told and forget every kind
        (the next event of each is logged in full); cancel the timer. For a server's
        stop: the counts of its last interval are told."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_loop = None
        now = self._clock()
        for slot, kind in self._kinds.items():
            if kind[1]:
                self._summarise(slot, kind, now)
        self._kinds.clear()

    def _summarise(self, slot: Hashable, kind: list[float], now: float) -> None:
        """Log ``kind``'s count (the ``summary`` line) and start its next interval."""
        line = dict(self._fields)
        if slot is _UNTRACKED:
            line["untracked"] = True
        else:
            line.update(zip(self._key_fields, _shown(cast(tuple[Any, ...], slot)),
                            strict=True))
        line["count"] = int(kind[1])
        line["over_s"] = round(min(max(0.0, now - kind[0]), self._interval_s), 1)
        kind[0], kind[1] = now, 0
        getattr(self._log, self._level)(self._summary, **line)

    def _arm(self, delay_s: float | None = None) -> None:
        """Arm the timer (:meth:`_due`) on the running loop, unless it is armed there."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: counts are told at the next event or flush()
            return
        timer = self._timer
        if timer is not None:
            if self._timer_loop is loop:
                return
            timer.cancel()  # a loop gone or another one's: the kinds are this one's now
        # the builder's context (the application's fields), not the reporting call's
        # (its bound log fields, its claims); a copy, so that no run leaks into the next
        self._timer = loop.call_later(self._interval_s if delay_s is None else delay_s,
                                      self._due, context=self._context.copy())
        self._timer_loop = loop

    def _due(self) -> None:
        """The timer: log the count of every kind whose interval ended, forget those
        that had no event in it, and arm the timer for the next interval to end (a
        quarter interval from now at the soonest, so timers stay few). An interval within
        1% of its end counts as ended (the loop may run a timer a little early)."""
        self._timer = self._timer_loop = None
        now = self._clock()
        interval = self._interval_s
        ended = interval * 0.99
        kinds = self._kinds
        earliest = math.inf
        for slot, kind in list(kinds.items()):
            if not 0.0 <= now - kind[0] < ended:
                if not kind[1]:
                    del kinds[slot]
                    continue
                self._summarise(slot, kind, now)
            earliest = min(earliest, kind[0])
        if kinds:
            self._arm(max(earliest + interval - now, interval / 4))


def _shown(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """A kind's values as its lines write them: each string with its non-printable
    characters escaped (:func:`printable`): a key value may be a caller's (the method name
    a generic handler serves, refused before any check knows it), and the console log
    writes a value raw. Made when a line is, never for an event only counted."""
    return tuple(printable(v) if type(v) is str else v for v in key)


_repeat_logs = reset_in_forked_child(RepeatLog)


def _tell_counts_at_exit() -> None:
    """At interpreter exit: every :class:`RepeatLog`'s counts not yet told are logged
    (:meth:`RepeatLog.flush`); the timer that would have told them ran on an event loop
    that has ended, and a module-level log (the baggage-cut warning) is never flushed
    otherwise. Registered before meshkit.observability's exit hook, so it runs after it:
    its lines are written at once."""
    for log in list(_repeat_logs):
        # a logger that fails at exit costs its own lines only
        with contextlib.suppress(Exception):
            log.flush()


atexit.register(_tell_counts_at_exit)
