"""JWKS over HTTP (RFC 7517 §5): an aiohttp server for a key set and a caching client.

:class:`JWKSServer` serves ``GET /.well-known/jwks.json`` for a :class:`KeySet` (public
keys only). :class:`JWKSClient` is a :class:`~meshkit.auth.KeySource` that keeps the
fetched keys in memory: it never fetches per call — only on first use, when a token names
an unknown ``kid`` (at most once per ``min_refresh_interval_s``), and in the background when
the copy is older than ``refresh_interval_s`` (stale keys keep serving meanwhile).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import structlog
from aiohttp import web

from meshkit._aio_http import start_app
from meshkit._config import check_int, check_number, check_seconds
from meshkit.auth._errors import JWKSError
from meshkit.auth._jwt import (
    ASYMMETRIC_ALGORITHMS,
    Clock,
    KeySet,
    VerificationKey,
    check_algorithms,
)
from meshkit.errors import ConfigError

__all__ = ["JWKSClient", "JWKSClientOptions", "JWKSServer", "parse_jwks"]

_log = structlog.get_logger("meshkit.auth.jwks")

JWKS_PATH = "/.well-known/jwks.json"

UrlProvider = Callable[[], str | Awaitable[str]]
"""Returns the JWKS URL (sync or async), e.g. resolved through the registry per fetch."""


class JWKSServer:
    """Serves a :class:`KeySet`'s JWKS at ``/.well-known/jwks.json`` with aiohttp.

    Args:
        keys: the key set; rotations show up on the next request.
        max_age_s: ``Cache-Control: max-age`` sent to clients (default 300).

    Example::

        server = JWKSServer(keys)
        port = await server.start("127.0.0.1", 0)
        ...
        await server.stop()
    """

    def __init__(self, keys: KeySet, *, max_age_s: int = 300) -> None:
        if max_age_s < 0:
            raise ConfigError(f"max_age_s must be >= 0, got {max_age_s!r}")
        self.keys = keys
        self.max_age_s = max_age_s
        self.app = web.Application()
        self.app.router.add_get(JWKS_PATH, self._handle)
        self._runner: web.AppRunner | None = None
        self._body: tuple[int, bytes] = (-1, b"")
        self.port = 0
        self.host = ""

    def _document(self) -> bytes:
        version, body = self._body
        if version != self.keys.version:
            body = json.dumps(self.keys.jwks(), separators=(",", ":")).encode()
            self._body = (self.keys.version, body)
        return body

    async def _handle(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._document(), content_type="application/json",
                            headers={"Cache-Control": f"public, max-age={self.max_age_s}"})

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0 = a free port); returns the bound port.

        Raises:
            OSError: the address cannot be bound.
            RuntimeError: already started.
        """
        if self._runner is not None:
            raise RuntimeError("JWKSServer already started")
        self._runner, self.port = await start_app(self.app, host, port)
        self.host = host
        _log.info("jwks serving", url=self.url)
        return self.port

    @property
    def url(self) -> str:
        """``http://host:port/.well-known/jwks.json`` once started."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{JWKS_PATH}"

    async def stop(self) -> None:
        """Stop listening (idempotent)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()


def parse_jwks(
    document: Any, algorithms: frozenset[str] = ASYMMETRIC_ALGORITHMS
) -> dict[str, VerificationKey]:
    """The usable signature keys of a JWKS document, by ``kid``.

    Keys without a ``kid``, with ``use`` other than ``sig``, of a symmetric type
    (``kty: oct``) or of an algorithm outside ``algorithms`` are skipped.

    Raises:
        JWKSError: not an object with a ``keys`` list.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JWKSError("JWKS document has no 'keys' list")
    out: dict[str, VerificationKey] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict):
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid or jwk.get("use", "sig") != "sig":
            continue
        if jwk.get("kty") == "oct":
            continue
        try:
            parsed = jwt.PyJWK(jwk)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        alg = parsed.algorithm_name
        if alg not in algorithms:
            continue
        out[kid] = VerificationKey(kid, alg, parsed.key)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class JWKSClientOptions:
    """How :class:`JWKSClient` caches and refreshes.

    Args:
        refresh_interval_s: refresh in the background when the copy is older than this
            (default 300).
        min_refresh_interval_s: at most one fetch per this many seconds, however many
            unknown ``kid``\\ s arrive (default 10).
        fetch_timeout_s: timeout of one fetch (default 5).
        max_document_bytes: larger documents are refused (default 65536): a larger
            ``Content-Length`` before the body is read, a body without one (chunked) once
            the bytes read pass it. The body is read to its end, whatever the number of
            reads it arrives in.
        algorithms: key algorithms accepted from the document (default all asymmetric).
        clock: monotonic clock for the intervals (default ``time.monotonic``).

    Raises:
        ConfigError: a value out of range or of the wrong type, or ``algorithms`` empty,
            given as one string or naming a symmetric or unknown algorithm (quoted).
    """

    refresh_interval_s: float = 300.0
    min_refresh_interval_s: float = 10.0
    fetch_timeout_s: float = 5.0
    max_document_bytes: int = 65536
    algorithms: frozenset[str] = ASYMMETRIC_ALGORITHMS
    clock: Clock = time.monotonic

    def __post_init__(self) -> None:
        check_seconds(self, ("refresh_interval_s", "fetch_timeout_s"))
        check_number("min_refresh_interval_s", self.min_refresh_interval_s)
        if not self.min_refresh_interval_s <= self.refresh_interval_s:
            raise ConfigError("min_refresh_interval_s must be in [0, refresh_interval_s], "
                              f"got {self.min_refresh_interval_s!r}")
        check_int("max_document_bytes", self.max_document_bytes, low=1024)
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
            so it may resolve the issuer through the registry), or a plain URL string.
        options: :class:`JWKSClientOptions`.
        session: an ``aiohttp.ClientSession`` to use (default: one owned by the client,
            created on first fetch and closed by :meth:`close`).

    Fetch failures are logged (URL and error type only) and keep the old keys; a token
    whose ``kid`` stays unknown is refused by the verifier with ``UNAUTHENTICATED``.
    """

    def __init__(self, url: UrlProvider | str, options: JWKSClientOptions | None = None, *,
                 session: aiohttp.ClientSession | None = None) -> None:
        self._url: UrlProvider = (lambda: url) if isinstance(url, str) else url
        self.options = options or JWKSClientOptions()
        self._session = session
        self._owns_session = session is None
        self._keys: dict[str, VerificationKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        self.fetches = 0

    async def get_key(self, kid: str) -> VerificationKey | None:
        """The key for ``kid``; fetches on first use or an unknown ``kid`` (rate-limited),
        and starts a background refresh when the copy is stale."""
        key = self._keys.get(kid)
        now = self.options.clock()
        if key is not None:
            if self._fetched_at is not None and (
                now - self._fetched_at >= self.options.refresh_interval_s
                and self._may_fetch(now)
            ):
                self._start_refresh()
            return key
        if self._inflight is not None or self._may_fetch(now):
            await asyncio.shield(self._start_refresh())
            return self._keys.get(kid)
        return None

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or (
            now - self._attempted_at >= self.options.min_refresh_interval_s
        )

    def _start_refresh(self) -> asyncio.Task[None]:
        if self._inflight is None:
            self._attempted_at = self.options.clock()
            task = asyncio.get_running_loop().create_task(self._refresh())
            self._inflight = task

            def _done(t: asyncio.Task[None]) -> None:
                self._inflight = None
                if not t.cancelled():
                    t.exception()

            task.add_done_callback(_done)
        return self._inflight

    async def refresh(self) -> None:
        """Fetch the document now (ignores the rate limit).

        Raises:
            JWKSError: the fetch failed or the document is malformed.
        """
        self._attempted_at = self.options.clock()
        self._apply(await self._fetch())

    async def _refresh(self) -> None:
        try:
            self._apply(await self._fetch())
        except JWKSError as exc:
            _log.warning("jwks refresh failed; keeping cached keys", error=str(exc),
                         keys=len(self._keys))
        except Exception as exc:  # e.g. the URL provider failed to resolve the issuer
            _log.warning("jwks refresh failed; keeping cached keys",
                         error=type(exc).__name__, keys=len(self._keys))

    def _apply(self, keys: dict[str, VerificationKey]) -> None:
        self._keys = keys
        self._fetched_at = self.options.clock()
        _log.debug("jwks refreshed", keys=len(keys))

    async def _fetch(self) -> dict[str, VerificationKey]:
        self.fetches += 1
        opts = self.options
        url = ""
        try:
            got = self._url()
            url = await got if inspect.isawaitable(got) else got
            if self._session is None:
                self._session = aiohttp.ClientSession()
            timeout = aiohttp.ClientTimeout(total=opts.fetch_timeout_s)
            async with self._session.get(url, timeout=timeout, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise JWKSError(f"JWKS fetch from {url} answered HTTP {resp.status}")
                body = await _read_capped(resp, opts.max_document_bytes, url)
            document = json.loads(body)
        except JWKSError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise JWKSError(f"JWKS fetch from {url or '<url>'} failed: "
                            f"{type(exc).__name__}") from exc
        return parse_jwks(document, opts.algorithms)

    @property
    def kids(self) -> frozenset[str]:
        """The ``kid``\\ s currently cached."""
        return frozenset(self._keys)

    async def close(self) -> None:
        """Cancel a refresh in flight and close the owned HTTP session (idempotent)."""
        if self._inflight is not None:
            self._inflight.cancel()
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> JWKSClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
