"""JWKS over HTTP (RFC 7517 §5): an aiohttp server for a key set and a caching client.

:class:`JWKSServer` serves ``GET /.well-known/jwks.json`` for a :class:`KeySet` (public
keys only). :class:`JWKSClient` is a :class:`~meshkit.auth.KeySource` that keeps the
fetched keys in memory: it never fetches per call — only on first use, when a token names
an unknown ``kid`` or one whose key does not verify its signature (a key replaced under its
``kid``; at most once per ``min_refresh_interval_s`` for both), and in the background when
the copy is older than ``refresh_interval_s`` (stale keys keep serving meanwhile).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
import structlog
from aiohttp import web

from meshkit._aio_http import start_app
from meshkit._config import (
    check_clock,
    check_instance,
    check_int,
    check_number,
    check_seconds,
)
from meshkit._hosts import bare_host, check_host, is_loopback, uri_host
from meshkit._outage import OutageLog
from meshkit._uris import split_userinfo
from meshkit.auth._errors import JWKSError
from meshkit.auth._jwt import (
    ASYMMETRIC_ALGORITHMS,
    Clock,
    KeySet,
    VerificationKey,
    check_algorithms,
    rsa_key_too_small,
)
from meshkit.errors import ConfigError

__all__ = ["JWKSClient", "JWKSClientOptions", "JWKSServer", "parse_jwks"]

_log = structlog.get_logger("meshkit.auth.jwks")

JWKS_PATH = "/.well-known/jwks.json"

UrlProvider = Callable[[], str | Awaitable[str]]
"""Returns the JWKS URL (sync or async), e.g. resolved through the registry per fetch. An
async provider's await counts in the fetch's ``fetch_timeout_s``; a sync one runs on the
event loop and must not block."""


class JWKSServer:
    """Serves a :class:`KeySet`'s JWKS at ``/.well-known/jwks.json`` with aiohttp.

    Args:
        keys: the key set (the :attr:`keys` attribute, which may be replaced by another
            key set); rotations and a replacement show up on the next request.
        max_age_s: ``Cache-Control: max-age`` sent to clients, whole seconds (default
            300; >= 0).

    Raises:
        ConfigError: ``keys`` is no :class:`KeySet`, or ``max_age_s`` is not an integer
            >= 0 (a float, ``True``; quoted).

    Example::

        server = JWKSServer(keys)
        port = await server.start("127.0.0.1", 0)
        ...
        await server.stop()
    """

    def __init__(self, keys: KeySet, *, max_age_s: int = 300) -> None:
        check_int("max_age_s", max_age_s, low=0)  # RFC 9111 §1.2.2: delta-seconds
        # the document of (key set, version): every key set starts at version 1, so a
        # replaced one (the keys setter) is told by identity, not by its version alone
        self._body: tuple[KeySet | None, int, bytes] = (None, -1, b"")
        self.keys = keys
        self.max_age_s = max_age_s
        self.app = web.Application()
        self.app.router.add_get(JWKS_PATH, self._handle)
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.host = ""

    @property
    def keys(self) -> KeySet:
        """The key set served; may be replaced (a key directory read again): the next
        request serves the new one.

        Raises:
            ConfigError: assigned something other than a :class:`KeySet` (quoted).
        """
        return self._keys

    @keys.setter
    def keys(self, keys: KeySet) -> None:
        if not isinstance(keys, KeySet):  # else every fetch answered HTTP 500
            raise ConfigError(f"keys must be a KeySet, got {keys!r}")
        self._keys = keys

    def _document(self) -> bytes:
        keys = self._keys
        held, version, body = self._body
        if held is not keys or version != keys.version:
            version = keys.version  # read before the document: a rotation meanwhile
            body = json.dumps(keys.jwks(), separators=(",", ":")).encode()  # shows next
            self._body = (keys, version, body)
        return body

    async def _handle(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._document(), content_type="application/json",
                            headers={"Cache-Control": f"public, max-age={self.max_age_s}"})

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0 = a free port); returns the bound port.

        Args:
            host: an IP address (IPv6 bracketed or not) or a host name (default
                ``"127.0.0.1"``; ``"0.0.0.0"`` or ``"::"`` for every interface).
            port: an integer in 0..65535 (default 0).

        Raises:
            ConfigError: ``host`` is neither an IP address nor a host name (``""``,
                ``"127.1"``, one with a port), or ``port`` is no integer in 0..65535 (a
                string, ``True``); quoted, nothing bound.
            OSError: the address cannot be bound.
            RuntimeError: already started.
        """
        check_host("host", host)
        check_int("port", port, low=0, high=65535)  # not True: that is port 1
        if self._runner is not None:
            raise RuntimeError("JWKSServer already started")
        self._runner, self.port = await start_app(self.app, host, port)
        self.host = bare_host(host)
        _log.info("jwks serving", url=self.url)
        return self.port

    @property
    def url(self) -> str:
        """``http://host:port/.well-known/jwks.json`` once started."""
        return f"http://{uri_host(self.host)}:{self.port}{JWKS_PATH}"

    async def stop(self) -> None:
        """Stop listening (idempotent)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()


_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_KEY_TYPES = frozenset({"EC", "OKP", "RSA"})
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
"""The one curve of each ECDSA algorithm (RFC 7518 §3.4: P-256, P-384, P-521)."""
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth")
"""JWK members of private keys: ``d`` (EC, RFC 7518 §6.2.2; OKP, RFC 8037 §2; RSA) and
RSA's ``p q dp dq qi oth`` (RFC 7518 §6.3.2)."""


def _algorithm_of(jwk: dict[str, Any], algorithms: frozenset[str]) -> str | None:
    """The one algorithm the key ``jwk`` is bound to (RFC 8725 §3.1: each key is used
    with exactly one algorithm), or ``None`` to ignore the key.

    A declared ``alg`` must be in ``algorithms``. Without one (RFC 7517 §4.4: ``alg`` is
    OPTIONAL), an EC key is bound by its curve and an OKP key to EdDSA (pyjwt's rule,
    checked by the caller), and an RSA key to the one RS*/PS* algorithm of
    ``algorithms``; when several are allowed, to RS256 if it is one of them (the
    RFC 7518 §3.1 "Recommended+" RSA algorithm), else the key is ambiguous and ignored.
    """
    alg = jwk.get("alg")
    if alg is not None:
        return alg if isinstance(alg, str) and alg in algorithms else None
    if jwk.get("kty") != "RSA":
        return ""  # pyjwt derives it from the curve (EC) or takes EdDSA (OKP)
    rsa_algs = [a for a in _RSA_ALGORITHMS if a in algorithms]
    if len(rsa_algs) == 1:
        return rsa_algs[0]
    return "RS256" if "RS256" in rsa_algs else None


def _verification_key(
    jwk: object, algorithms: frozenset[str], weak: list[tuple[str, int]] | None = None,
    leaked: list[str] | None = None,
) -> VerificationKey | None:
    """The verification key the JWK ``jwk`` describes, or ``None`` when it is to be
    ignored (RFC 7517 §5: JWKs not understood, missing required members or out of the
    supported ranges SHOULD be ignored). An RSA key under 2048 bits (RFC 7518 §3.3) is
    ignored and its ``(kid, bits)`` appended to ``weak``. A key published with private
    members (:data:`_PRIVATE_MEMBERS`) is ignored and its ``kid`` appended to ``leaked``:
    whoever reads the document can sign with it ("The JWK Set MUST NOT contain private or
    symmetric key values", OpenID Connect Dynamic Client Registration 1.0 §2)."""
    if not isinstance(jwk, dict):
        return None
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid or jwk.get("use", "sig") != "sig":
        return None
    if any(m in jwk for m in _PRIVATE_MEMBERS):
        if leaked is not None:
            leaked.append(kid)
        return None
    ops = jwk.get("key_ops")  # RFC 7517 §4.3: "verify" is verifying signatures
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    kty = jwk.get("kty")  # a list or an object is unhashable: no `in` on a frozenset
    if not isinstance(kty, str) or kty not in _KEY_TYPES:  # e.g. "oct": no symmetric keys
        return None
    alg = _algorithm_of(jwk, algorithms)
    if alg is None:
        return None
    try:
        parsed = jwt.PyJWK(jwk, alg or None)
    except Exception:  # pyjwt: PyJWTError, ValueError, NotImplementedError, ... per key
        return None
    if parsed.algorithm_name not in algorithms:
        return None
    curve = _EC_CURVES.get(parsed.algorithm_name)
    if curve is not None and getattr(getattr(parsed.key, "curve", None), "name", "") != curve:
        return None  # e.g. a P-384 key declaring ES256: it could verify no ES256 token
    if rsa_key_too_small(parsed.key):
        if weak is not None:
            weak.append((kid, parsed.key.key_size))
        return None
    return VerificationKey(kid, parsed.algorithm_name, parsed.key)


def _parse_keys(
    document: Any, algorithms: frozenset[str], weak: list[tuple[str, int]] | None = None,
    leaked: list[str] | None = None,
    more: dict[tuple[str, str], tuple[VerificationKey, ...]] | None = None,
) -> dict[tuple[str, str], VerificationKey]:
    """The usable keys of a JWKS document by ``(kid, algorithm)``, in document order (the
    first key of a pair wins; every key of a pair that has several goes to ``more``, in
    document order, the first included); RSA keys ignored for their size are appended
    to ``weak`` as ``(kid, bits)``, keys ignored for carrying private members to
    ``leaked`` (kid).

    Raises:
        JWKSError: not an object with a ``keys`` list.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JWKSError("JWKS document has no 'keys' list")
    out: dict[tuple[str, str], VerificationKey] = {}
    for jwk in document["keys"]:
        key = _verification_key(jwk, algorithms, weak, leaked)
        if key is None:
            continue
        pair = (key.kid, key.algorithm)
        first = out.setdefault(pair, key)
        if more is not None and first is not key and key not in more.get(pair, (first,)):
            more[pair] = (*more.get(pair, (first,)), key)
    return out


def parse_jwks(
    document: Any, algorithms: frozenset[str] = ASYMMETRIC_ALGORITHMS
) -> dict[str, VerificationKey]:
    """The usable signature keys of a JWKS document, by ``kid``.

    Keys are ignored, never fatal (RFC 7517 §5), when they have no ``kid``, a ``use``
    other than ``sig``, private key members (``d``, RSA's ``p q dp dq qi oth``: a key
    whose private half is published verifies nothing, since anyone can sign with it), a
    ``key_ops`` without ``verify`` (RFC 7517 §4.3), a symmetric or unknown type (``kty:
    oct``), an algorithm outside ``algorithms`` (``alg: none``...), an RSA modulus under
    2048 bits (RFC 7518 §3.3: RS*/PS* keys MUST have 2048 bits or more), or members pyjwt
    cannot load. Each key is bound to one algorithm (RFC 8725 §3.1): its ``alg`` (an EC
    key's curve must be that algorithm's, RFC 7518 §3.4: a P-384 key declaring ``ES256``
    is ignored), or without one (RFC 7517 §4.4) the one its type allows among
    ``algorithms`` (EC: by curve; OKP: EdDSA; RSA: the one RS*/PS* algorithm allowed,
    RS256 when several are and RS256 is one of them, else the key is ignored: narrow
    ``algorithms`` to the one in use). When several usable keys share a ``kid`` (RFC 7517
    §4.5, e.g. of different ``kty``), the first is returned here;
    :class:`JWKSClient` keeps each of them for tokens of its algorithm (and, when several
    share one algorithm too, tries each in document order: :meth:`JWKSClient.get_key_refreshed`).

    Raises:
        JWKSError: not an object with a ``keys`` list.
    """
    out: dict[str, VerificationKey] = {}
    for (kid, _alg), key in _parse_keys(document, algorithms).items():
        out.setdefault(kid, key)
    return out


def _shown_url(url: str) -> str:
    """``url`` as error messages and logs show it: without userinfo (a password), query
    or fragment (tokens), which must never appear in messages.

    User info is everything after ``scheme://`` up to the *last* ``@``
    (:func:`meshkit._uris.split_userinfo`), not the netloc ``urlsplit`` finds, which ends
    at the first ``/``, ``?`` or ``#``: a password holding one unencoded
    (``https://svc:s3cr/et@idp/jwks``) would be shown. An ``@`` in the query or fragment
    makes more of the URL hidden, never less."""
    prefix, _userinfo, rest = split_userinfo(url)
    return prefix + rest.partition("#")[0].partition("?")[0]


def _url_problem(url: object, allow_http: bool) -> str | None:
    """Why ``url`` is no JWKS URL this client fetches, or ``None``: it must be an
    ``https`` URL with a host, or ``http`` to a loopback host (``127.0.0.0/8``, ``::1``,
    ``localhost``), or ``http`` anywhere with ``allow_http`` (the keys decide which tokens
    are accepted: whoever answers a plain-HTTP fetch on the path serves keys of their
    own). The message shows the URL as :func:`_shown_url` does."""
    if not isinstance(url, str):
        return f"the JWKS URL must be a string, got {type(url).__name__}"
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "the JWKS URL is not a URL"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        return f"the JWKS URL must be an https URL, got {_shown_url(url)!r}"
    if scheme == "http" and not allow_http and not is_loopback(host):
        return (f"the JWKS URL {_shown_url(url)!r} is plain http to a host other than "
                "loopback (anyone on the path could serve keys): use https, or "
                "JWKSClientOptions(allow_http=True) on a network you trust")
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class JWKSClientOptions:
    """How :class:`JWKSClient` caches and refreshes.

    Args:
        refresh_interval_s: refresh in the background when the copy is older than this
            (default 300).
        min_refresh_interval_s: at most one fetch per this many seconds, however many
            unknown ``kid``\\ s or signatures a known ``kid``'s key fails arrive
            (default 10).
        fetch_timeout_s: timeout of one fetch, in seconds (default 5): the URL provider's
            await, the HTTP GET and reading the body, together.
        max_document_bytes: larger documents are refused (default 65536): a larger
            ``Content-Length`` before the body is read, a body without one (chunked) once
            the bytes read pass it. The body is read to its end, whatever the number of
            reads it arrives in.
        algorithms: key algorithms accepted from the document (default all asymmetric).
        allow_http: fetch plain ``http://`` URLs from any host (default ``False``: only
            from a loopback host, ``127.0.0.0/8``, ``::1``, ``localhost``; others must be
            ``https``): whoever answers a plain-HTTP fetch on the path (a spoofed registry
            entry, a machine between) serves keys of their own, and their tokens pass.
        clock: monotonic clock for the intervals (default ``time.monotonic``).

    Raises:
        ConfigError: a value out of range or of the wrong type (a ``clock`` that is not
            callable: ``time.monotonic()``, its reading), or ``algorithms`` empty, given
            as one string or naming a symmetric or unknown algorithm (quoted).
    """

    refresh_interval_s: float = 300.0
    min_refresh_interval_s: float = 10.0
    fetch_timeout_s: float = 5.0
    max_document_bytes: int = 65536
    algorithms: frozenset[str] = ASYMMETRIC_ALGORITHMS
    allow_http: bool = False
    clock: Clock = time.monotonic

    def __post_init__(self) -> None:
        if not isinstance(self.allow_http, bool):
            raise ConfigError(f"allow_http must be True or False, got {self.allow_http!r}")
        check_seconds(self, ("refresh_interval_s", "fetch_timeout_s"))
        check_number("min_refresh_interval_s", self.min_refresh_interval_s)
        if not self.min_refresh_interval_s <= self.refresh_interval_s:
            raise ConfigError("min_refresh_interval_s must be in [0, refresh_interval_s], "
                              f"got {self.min_refresh_interval_s!r}")
        check_int("max_document_bytes", self.max_document_bytes, low=1024)
        check_clock("clock", self.clock, wall=False)
        object.__setattr__(self, "algorithms",
                           frozenset(check_algorithms("algorithms", self.algorithms)))


async def _read_capped(resp: aiohttp.ClientResponse, limit: int, url: str) -> bytes:
    """The whole body of ``resp``, read until EOF (however many TCP segments or chunks it
    arrives in), refused once it is known to exceed ``limit`` bytes: at once when the
    declared ``Content-Length`` is larger, else as soon as the bytes read pass it.

    Raises:
        JWKSError: the body is larger than ``limit``.
    """
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise JWKSError(f"JWKS document from {url} exceeds {limit} bytes")
    body = bytearray()
    async for chunk in resp.content.iter_chunked(65536):
        body += chunk
        if len(body) > limit:
            raise JWKSError(f"JWKS document from {url} exceeds {limit} bytes")
    return bytes(body)


class JWKSClient:
    """A :class:`~meshkit.auth.KeySource` backed by a remote JWKS URL, cached in memory.

    Args:
        url: a URL provider: a callable returning the URL (sync or async; called per fetch,
            so it may resolve the issuer through the registry), or a plain URL string:
            ``https``, or plain ``http`` only to a loopback host unless
            ``options.allow_http`` (a provider's URL that is not fails its fetch with
            :class:`JWKSError`; such a string is a ``ConfigError`` here). An
            async provider is awaited within ``fetch_timeout_s`` (one that hangs fails that
            fetch, and a later one calls it again); a sync one runs on the event loop and
            must not block.
        options: :class:`JWKSClientOptions` (default ``JWKSClientOptions()``).
        session: an ``aiohttp.ClientSession`` to use, only from the event loop it was made
            in (default: the client makes one per fetch and closes it after, so one client
            serves any event loop: a later ``asyncio.run()``, pytest-asyncio's loop per
            test, loops of several threads at once. The usual fetch, every
            ``refresh_interval_s``, comes after aiohttp's 15 s keep-alive closed a kept
            session's connection anyway).

    Failed fetches keep the old keys. Those of the background and unknown-``kid``
    refreshes are logged (URL and error type only; the URL without userinfo, query or
    fragment, so no password or token in it is shown) as one warning when they start
    failing and a reminder at most every 60 s while they keep failing (``failures``: the
    failed refreshes so far), not one per attempt, and the first refresh that works again
    logs ``"jwks refresh recovered"`` at info with ``outage_s`` and ``failures`` (times on
    ``options.clock``); :meth:`refresh` raises its failures to its caller instead. A token
    whose ``kid`` stays unknown is refused by the verifier with ``UNAUTHENTICATED``. Keys
    :func:`parse_jwks` ignores are ignored here too; RSA keys ignored for being under
    2048 bits are logged as a warning (their ``kid``\\ s and sizes) once, and again only
    when that list changes; so are keys ignored for being published with their private
    members (their ``kid``\\ s only), and a document listing keys none of which is
    usable (every token would be refused ``"token key id unknown"``: the count of keys
    and the algorithms taken; ``"jwks document usable again"`` at info once one is).

    Raises:
        ConfigError: ``url`` is neither a string nor a callable (named by its type, never
            quoted), a URL string that is not ``https`` (or ``http`` to loopback without
            ``allow_http``), ``options`` that are no :class:`JWKSClientOptions`, or a
            ``session`` that is no ``aiohttp.ClientSession`` (quoted).

    Keys are kept by ``(kid, algorithm)``, so keys sharing a ``kid`` (RFC 7517 §4.5, e.g.
    an EC and an OKP key) each verify the tokens of their algorithm
    (:meth:`get_key_for`, one dict lookup: the first the document lists for the pair);
    several under one ``kid`` and algorithm (RFC 7517 §4.5: SHOULD be distinct) are all
    kept, and a token the first does not verify is tried with the others in document
    order (:meth:`get_key_refreshed`).
    """

    def __init__(self, url: UrlProvider | str, options: JWKSClientOptions | None = None, *,
                 session: aiohttp.ClientSession | None = None) -> None:
        check_instance("options", options, JWKSClientOptions)  # else AttributeErrors
        # else every fetch failed, and every token UNAUTHENTICATED
        check_instance("session", session, aiohttp.ClientSession)
        if not isinstance(url, str) and not callable(url):  # else every fetch fails
            raise ConfigError("url must be a JWKS URL string or a callable returning one, "
                              f"got a {type(url).__name__}")  # (not quoted: a password)
        self.options = options or JWKSClientOptions()
        if isinstance(url, str):
            problem = _url_problem(url, self.options.allow_http)
            if problem is not None:
                raise ConfigError(problem)
        self._url: UrlProvider = (lambda: url) if isinstance(url, str) else url
        self._session = session
        self._keys: dict[str, VerificationKey] = {}
        self._by_alg: dict[tuple[str, str], VerificationKey] = {}
        # every key of a (kid, algorithm) the document lists several of (RFC 7517 §4.5
        # asks for distinct kids: SHOULD), in its order: get_key_refreshed gives them
        self._more: dict[tuple[str, str], tuple[VerificationKey, ...]] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._inflight_done: concurrent.futures.Future[None] | None = None
        self._weak_logged: list[tuple[str, int]] = []
        self._leaked_logged: list[str] = []
        self._unusable_logged = 0  # keys of the last document when none was usable
        # outages of the background/unknown-kid refreshes: logged at their start, at most
        # every 60 s while they last and at their end (meshkit's outage convention)
        # its errors vary from attempt to attempt: reminders only, never per change
        self._outage = OutageLog(_log, "jwks refresh recovered", clock=self.options.clock,
                                 warn_on_change=False)
        self.fetches = 0
        self.version = 0
        """Bumped whenever a fetch brings keys other than those cached (a key added,
        removed or changed); :class:`~meshkit.auth.JWTVerifier` then forgets the tokens
        it verified."""

    async def get_key(self, kid: str) -> VerificationKey | None:
        """The key for ``kid`` (the first of the document's when several share it);
        fetches on first use or an unknown ``kid`` (rate-limited), and starts a
        background refresh when the copy is stale."""
        key = self._keys.get(kid)
        if key is not None:
            self._maybe_refresh()
            return key
        if await self._fetch_unknown():
            return self._keys.get(kid)
        return None

    async def get_key_for(self, kid: str, algorithm: str) -> VerificationKey | None:
        """The key for ``kid`` bound to ``algorithm`` (what :class:`~meshkit.auth.JWTVerifier`
        asks for: the token header's ``kid`` and ``alg``); fetches and refreshes as
        :meth:`get_key` does."""
        key = self._by_alg.get((kid, algorithm))
        if key is not None:
            self._maybe_refresh()
            return key
        if await self._fetch_unknown():
            return self._by_alg.get((kid, algorithm))
        return None

    async def get_key_refreshed(self, kid: str, algorithm: str,
                                tried: Collection[VerificationKey]) -> VerificationKey | None:
        """Another key for ``kid`` bound to ``algorithm``, when those given, ``tried``,
        failed a token's signature: the first key the document lists for the pair that is
        none of them, when it lists several (RFC 7517 §4.5 asks for distinct kids, SHOULD:
        an issuer overlapping a rotation under one ``kid``), without a fetch; else, the
        issuer may have replaced its key under the same ``kid`` (an IdP naming its key
        ``"main"``), which no unknown-``kid`` refresh would learn of before
        ``refresh_interval_s``: refreshes as for an unknown ``kid`` (at most once per
        ``min_refresh_interval_s``, joining a fetch in flight, waited for at most
        ``fetch_timeout_s``; not at all when a refresh meanwhile already brought a key not
        tried) and gives the first key then listed for the pair that is not in ``tried``
        (in document order, wherever the refresh lists the keys tried).

        Args:
            kid: the token header's ``kid``.
            algorithm: the token header's ``alg``.
            tried: the keys the token's signature failed with (compared by ``==``: kid,
                algorithm and key material).

        Returns:
            That key, or ``None``: no other (the token stays refused), or the refresh was
            rate-limited or failed. :class:`~meshkit.auth.JWTVerifier` tries each key
            it gets once, at most 8 per token.
        """
        key = self._untried(kid, algorithm, tried)
        if key is None:
            if not await self._fetch_unknown():
                return None
            key = self._untried(kid, algorithm, tried)
        return key

    def _untried(self, kid: str, algorithm: str, tried: Collection[VerificationKey]
                 ) -> VerificationKey | None:
        """The first key for ``(kid, algorithm)`` in the copy held, in document order,
        that is not in ``tried``, else ``None``."""
        pair = (kid, algorithm)
        keys = self._more.get(pair)
        if keys is None:
            key = self._by_alg.get(pair)
            return None if key is None or key in tried else key
        for key in keys:
            if key not in tried:
                return key
        return None

    def _maybe_refresh(self) -> None:
        """Start a background refresh when the copy is stale (and the rate limit allows)."""
        now = self.options.clock()
        if self._fetched_at is not None and (
            now - self._fetched_at >= self.options.refresh_interval_s and self._may_fetch(now)
        ):
            self._start_refresh()

    async def _fetch_unknown(self) -> bool:
        """Fetch for an unknown key, joining a fetch in flight, this loop's or another
        loop's (waited for at most ``fetch_timeout_s``: a loop that stopped never ends
        it); whether one was awaited (``False``: rate-limited)."""
        task, done = self._inflight, self._inflight_done
        if task is not None:
            if task.get_loop() is asyncio.get_running_loop():
                await asyncio.shield(task)
                return True
            # another loop's fetch: starting one here, outside the rate limit, made the
            # loops start fetches in turn for as long as unknown kids came (a storm)
            if done is not None and task.get_loop().is_running():  # a stopped one never ends it
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.options.fetch_timeout_s):
                        await asyncio.shield(asyncio.wrap_future(done))
                    return True
        if self._may_fetch(self.options.clock()):
            await asyncio.shield(self._start_refresh())
            return True
        return False

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or (
            now - self._attempted_at >= self.options.min_refresh_interval_s
        )

    def _start_refresh(self) -> asyncio.Task[None]:
        """The fetch in flight in the running loop, started if there is none (a fetch of
        another loop, e.g. another thread's, is not joined: its task is that loop's)."""
        loop = asyncio.get_running_loop()
        task = self._inflight
        if task is None or task.get_loop() is not loop:
            self._attempted_at = self.options.clock()
            task = loop.create_task(self._refresh())
            # what other loops wait on for this fetch (a Task is only its loop's)
            done: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._inflight, self._inflight_done = task, done

            def _done(t: asyncio.Task[None]) -> None:
                if self._inflight is t:
                    self._inflight = self._inflight_done = None
                if not done.done():
                    done.set_result(None)
                if not t.cancelled():
                    t.exception()

            task.add_done_callback(_done)
        return task

    async def refresh(self) -> None:
        """Fetch the document now (ignores the rate limit).

        Raises:
            JWKSError: the URL provider or the fetch failed (the provider's error type
                named, not its text), or the document is malformed.
        """
        self._attempted_at = self.options.clock()
        self._apply(*await self._fetch())

    async def _refresh(self) -> None:
        try:
            self._apply(*await self._fetch())
        except JWKSError as exc:
            self._failed(str(exc))
        except Exception as exc:  # e.g. the URL provider failed to resolve the issuer
            self._failed(type(exc).__name__)

    def _failed(self, error: str) -> None:
        """Count a failed refresh; warn at the first of an outage and at most every 60 s
        after (:class:`~meshkit._outage.OutageLog`), not at every attempt."""
        self._outage.failed("jwks refresh failed; keeping cached keys", error,
                            keys=len(self._keys))

    def _apply(self, keys: dict[tuple[str, str], VerificationKey],
               more: dict[tuple[str, str], tuple[VerificationKey, ...]]) -> None:
        by_kid: dict[str, VerificationKey] = {}
        for (kid, _alg), key in keys.items():
            by_kid.setdefault(kid, key)
        # VerificationKey ==: kid, algorithm and key material
        if keys != self._by_alg or more != self._more:
            self.version += 1
        self._by_alg = keys
        self._more = more
        self._keys = by_kid
        self._fetched_at = self.options.clock()
        self._outage.ok(keys=len(keys))
        _log.debug("jwks refreshed", keys=len(keys))

    async def _fetch(self) -> tuple[dict[tuple[str, str], VerificationKey],
                                    dict[tuple[str, str], tuple[VerificationKey, ...]]]:
        """Fetch and parse the document: URL provider, GET and body within
        ``fetch_timeout_s`` together; its keys by ``(kid, algorithm)``, and every key of
        the pairs it lists several keys of (:func:`_parse_keys`).

        Raises:
            JWKSError: the fetch failed or timed out, or the document is malformed.
        """
        self.fetches += 1
        opts = self.options
        url = ""
        shown = "<url>"
        try:
            # one deadline for the whole fetch: a provider that hangs (a registry lookup
            # never answering) must not keep this fetch, which later ones join, alive
            async with asyncio.timeout(opts.fetch_timeout_s):
                try:
                    got = self._url()
                    url = await got if inspect.isawaitable(got) else got
                except JWKSError:
                    raise
                except Exception as exc:  # a registry lookup's error...: its type only
                    raise JWKSError(
                        f"the JWKS URL provider failed: {type(exc).__name__}") from None
                problem = _url_problem(url, opts.allow_http)
                if problem is not None:  # e.g. a provider's http URL of a remote host
                    raise JWKSError(problem)
                shown = _shown_url(url)
                timeout = aiohttp.ClientTimeout(total=opts.fetch_timeout_s)
                async with contextlib.AsyncExitStack() as stack:
                    session = self._session
                    if session is None:  # one per fetch: bound to no loop between fetches
                        session = await stack.enter_async_context(aiohttp.ClientSession())
                    async with session.get(url, timeout=timeout,
                                           allow_redirects=False) as resp:
                        if resp.status != 200:
                            raise JWKSError(
                                f"JWKS fetch from {shown} answered HTTP {resp.status}")
                        body = await _read_capped(resp, opts.max_document_bytes, shown)
            document = json.loads(body)
        except JWKSError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError,
                RecursionError) as exc:  # RecursionError: a deeply nested document
            raise JWKSError(f"JWKS fetch from {shown} failed: "
                            f"{type(exc).__name__}") from None
        weak: list[tuple[str, int]] = []
        leaked: list[str] = []
        more: dict[tuple[str, str], tuple[VerificationKey, ...]] = {}
        keys = _parse_keys(document, opts.algorithms, weak, leaked, more)
        # keys listed, none usable: every token refused "token key id unknown", and the
        # refresh at debug said nothing of why (logged once per change, as below)
        unusable = len(document["keys"]) if not keys else 0
        if unusable != self._unusable_logged:
            was, self._unusable_logged = self._unusable_logged, unusable
            if unusable:
                _log.warning("jwks document holds no usable key", url=shown, keys=unusable,
                             algorithms=sorted(opts.algorithms))
            elif was and keys:
                _log.info("jwks document usable again", url=shown, keys=len(keys))
        if leaked != self._leaked_logged:
            self._leaked_logged = leaked
            if leaked:  # the kids only: never a member of the key
                _log.warning("jwks keys ignored: published with their private key "
                             "(anyone can sign with them)", url=shown, kids=leaked)
        if weak != self._weak_logged:
            self._weak_logged = weak
            if weak:
                _log.warning("jwks keys ignored: RSA under 2048 bits (RFC 7518 §3.3)",
                             url=shown, kids=[k for k, _ in weak],
                             bits=[b for _, b in weak])
        return keys, more

    @property
    def refresh_interval_s(self) -> float:
        """``options.refresh_interval_s``: how old the copy may get before a key lookup
        refreshes it; :class:`~meshkit.auth.JWTVerifier` serves a token from its cache no
        longer than this, so cache hits alone do not keep the copy from being refreshed
        (a key removed from the document stops its tokens within about two intervals)."""
        return self.options.refresh_interval_s

    @property
    def algorithms(self) -> frozenset[str]:
        """``options.algorithms``: the algorithms of the keys kept (a
        :class:`~meshkit.auth.JWTVerifier` taking none of them is a ``ConfigError``)."""
        return self.options.algorithms

    @property
    def kids(self) -> frozenset[str]:
        """The ``kid``\\ s currently cached."""
        return frozenset(self._keys)

    async def close(self) -> None:
        """Cancel a refresh in flight (idempotent; a given ``session`` is left open, its
        owner closes it). A refresh of another event loop still running is cancelled in
        that loop."""
        task = self._inflight
        if task is None:
            return
        loop = task.get_loop()
        if loop is asyncio.get_running_loop():
            task.cancel()
        elif not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop.call_soon_threadsafe(task.cancel)

    async def __aenter__(self) -> JWKSClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
