"""JWKS endpoint and the caching JWKS client (refresh rules with a fake clock)."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import jwt
import pytest
import structlog
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from meshkit._aio_http import start_app
from meshkit.auth import (
    InvalidTokenError,
    IssuerOptions,
    JWKSClient,
    JWKSClientOptions,
    JWKSError,
    JWKSServer,
    JWTVerifier,
    KeySet,
    SigningKey,
    TokenIssuer,
    VerifierOptions,
    parse_jwks,
)
from meshkit.auth._jwt import VerificationKey
from meshkit.errors import ConfigError
from tests.support.loops import LoopThread
from tests.support.loops import run as run_loop
from tests.support.wait import until


class Tick:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def served(keys: KeySet) -> AsyncIterator[JWKSServer]:
    """A JWKS server for ``keys`` on a free port."""
    server = JWKSServer(keys)
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


async def test_server_publishes_public_keys_only(served: JWKSServer, keys: KeySet) -> None:
    """GET /.well-known/jwks.json returns the public JWKs with kid, alg and use, no 'd'."""
    async with aiohttp.ClientSession() as s, s.get(served.url) as resp:
        assert resp.status == 200 and "max-age" in resp.headers["Cache-Control"]
        doc = await resp.json()
    (jwk,) = doc["keys"]
    assert jwk["kid"] == keys.current.kid and jwk["alg"] == "ES256" and jwk["use"] == "sig"
    assert "d" not in jwk
    assert set(parse_jwks(doc)) == {keys.current.kid}


async def test_no_fetch_per_call(served: JWKSServer, keys: KeySet) -> None:
    """Many lookups of a known kid cost one fetch."""
    async with JWKSClient(lambda: served.url) as client:
        for _ in range(50):
            assert await client.get_key(keys.current.kid) is not None
        assert client.fetches == 1


async def test_unknown_kid_refresh_is_rate_limited(served: JWKSServer, keys: KeySet) -> None:
    """Unknown kids trigger at most one fetch per min_refresh_interval_s."""
    tick = Tick()
    opts = JWKSClientOptions(min_refresh_interval_s=10, refresh_interval_s=300, clock=tick)
    async with JWKSClient(lambda: served.url, opts) as client:
        await client.get_key(keys.current.kid)
        for i in range(20):
            assert await client.get_key(f"bogus-{i}") is None
        assert client.fetches == 1
        keys.rotate()
        assert await client.get_key(keys.current.kid) is None  # still rate-limited
        tick.now += 10
        assert await client.get_key(keys.current.kid) is not None
        assert client.fetches == 2


async def test_interval_refresh_in_background(served: JWKSServer, keys: KeySet) -> None:
    """A stale copy still answers at once and is refreshed in the background."""
    tick = Tick()
    opts = JWKSClientOptions(min_refresh_interval_s=1, refresh_interval_s=60, clock=tick)
    async with JWKSClient(lambda: served.url, opts) as client:
        old = keys.current.kid
        await client.get_key(old)
        new = keys.rotate().kid
        tick.now += 61
        assert await client.get_key(old) is not None
        await until(lambda: new in client.kids, timeout_s=5, what="background refresh")
        assert client.fetches == 2


async def _failable_jwks(keys: KeySet) -> tuple[web.AppRunner, int, dict[str, bool]]:
    """A loopback JWKS endpoint serving ``keys`` that answers 503 while ``state["fail"]``:
    (its runner, to clean up; its port; ``state``)."""
    app = web.Application()
    state = {"fail": False}

    async def handle(_r: web.Request) -> web.Response:
        if state["fail"]:
            return web.Response(status=503)
        return web.json_response(keys.jwks())

    app.router.add_get("/jwks", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port, state


async def test_async_url_provider_and_failure_keeps_keys(keys: KeySet) -> None:
    """The URL comes from an async provider; a failed refresh keeps the cached keys."""
    runner, port, state = await _failable_jwks(keys)

    async def url() -> str:
        return f"http://127.0.0.1:{port}/jwks"

    tick = Tick()
    try:
        async with JWKSClient(url, JWKSClientOptions(min_refresh_interval_s=0, clock=tick)
                              ) as client:
            assert await client.get_key(keys.current.kid) is not None
            state["fail"] = True
            with structlog.testing.capture_logs() as logs:
                assert await client.get_key("unknown") is None
            assert await client.get_key(keys.current.kid) is not None
            assert any("503" in str(e.get("error")) for e in logs)
            with pytest.raises(JWKSError, match="503"):
                await client.refresh()
    finally:
        await runner.cleanup()


def test_parse_skips_unusable_keys(keys: KeySet) -> None:
    """Symmetric, encryption, kid-less and disallowed-algorithm keys are skipped."""
    good = keys.jwks()["keys"][0]
    doc = {"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"},
        {**good, "kid": "enc", "use": "enc"},
        {k: v for k, v in good.items() if k != "kid"},
        good,
    ]}
    assert set(parse_jwks(doc)) == {good["kid"]}
    assert parse_jwks(doc, frozenset({"EdDSA"})) == {}
    with pytest.raises(JWKSError):
        parse_jwks({"nokeys": 1})


@pytest.mark.parametrize("kty", [["EC"], {"EC": True}, 1, None])
def test_parse_skips_key_whose_kty_is_not_a_string(keys: KeySet, kty: object) -> None:
    """An unhashable ``kty`` raised TypeError (``in`` a frozenset): the whole document
    failed, and JWKSClient.refresh raised TypeError, not JWKSError. Only that key is
    ignored (RFC 7517 §5)."""
    good = keys.jwks()["keys"][0]
    assert set(parse_jwks({"keys": [{"kid": "odd", "kty": kty}, good]})) == {good["kid"]}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve_jwks() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Serve one handler at /jwks on a free port; returns its URL; stopped at teardown."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_get("/jwks", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}/jwks"

    yield start
    for r in runners:
        await r.cleanup()


def in_pieces(body: bytes, *, pieces: int = 2, content_length: bool = True) -> Handler:
    """A handler sending ``body`` in ``pieces`` writes a moment apart (as TCP segments of a
    larger document arrive over a network), with Content-Length or else chunked."""

    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if content_length:
            resp.content_length = len(body)
        await resp.prepare(request)
        step = -(-len(body) // pieces)
        try:
            for i in range(0, len(body), step):
                await resp.write(body[i:i + step])
                await asyncio.sleep(0.05)  # splits the body across reads; awaits no condition
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the client stopped reading (a document over its limit)
        return resp

    return handle


@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "chunked"])
async def test_document_arriving_in_pieces_is_read_whole(
        keys: KeySet, serve_jwks: Callable[[Handler], Awaitable[str]],
        content_length: bool) -> None:
    """A JWKS body that arrives in several reads is read to its end, not cut at what was
    buffered when the client first looked (which would lose every key)."""
    keys.rotate()
    doc = json.dumps(keys.jwks()).encode()
    url = await serve_jwks(in_pieces(doc, pieces=3, content_length=content_length))
    async with JWKSClient(url, JWKSClientOptions(fetch_timeout_s=3)) as client:
        await client.refresh()
        assert client.kids == {k.kid for k in keys.keys}


@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "chunked"])
async def test_document_over_max_bytes_refused(
        keys: KeySet, serve_jwks: Callable[[Handler], Awaitable[str]],
        content_length: bool) -> None:
    """A document over max_document_bytes is refused, declared (Content-Length) or not
    (chunked, arriving in pieces), and cached keys stay."""
    doc = json.dumps({**keys.jwks(), "pad": "x" * 2000}).encode()
    url = await serve_jwks(in_pieces(doc, pieces=3, content_length=content_length))
    async with JWKSClient(url, JWKSClientOptions(max_document_bytes=1024)) as client:
        with pytest.raises(JWKSError, match="exceeds 1024 bytes"):
            await client.refresh()
        assert client.kids == frozenset()


@pytest.mark.parametrize("max_age_s", [-1, 1.5, True, "300", math.nan])
def test_server_max_age_is_whole_seconds(keys: KeySet, max_age_s: object) -> None:
    """``Cache-Control: max-age`` takes delta-seconds (RFC 9111 §1.2.2): a float (or
    ``True``) was sent as ``max-age=1.5`` (``True``), which caches ignore; quoted."""
    with pytest.raises(ConfigError, match="max_age_s") as err:
        JWKSServer(keys, max_age_s=max_age_s)  # type: ignore[arg-type]
    assert repr(max_age_s) in str(err.value)
    assert JWKSServer(keys, max_age_s=0).max_age_s == 0


def test_max_document_bytes_validated() -> None:
    """max_document_bytes below 1024 is refused when the options are built, quoted."""
    with pytest.raises(ConfigError, match="100"):
        JWKSClientOptions(max_document_bytes=100)


# -- RFC 7517 key selection ---------------------------------------------------------------
ISSUER = "https://userd.meshkit.test"
AUDIENCE = "ecom"
T0 = 1_700_000_000.0


class DictKeys:
    """A KeySource over a parse_jwks() result (get_key only)."""

    def __init__(self, keys: dict[str, VerificationKey]) -> None:
        self.keys = keys

    async def get_key(self, kid: str) -> VerificationKey | None:
        return self.keys.get(kid)


def claims() -> dict[str, object]:
    return {"iss": ISSUER, "sub": "u", "aud": AUDIENCE, "iat": int(T0), "nbf": int(T0),
            "exp": int(T0) + 300, "jti": "j1", "scope": ""}


def serve_doc(doc: object) -> Handler:
    body = json.dumps(doc).encode()

    async def handle(_r: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return handle


def rsa_jwk(kid: str) -> tuple[rsa.RSAPrivateKey, dict[str, object]]:
    """An RSA key and its public JWK without ``alg``."""
    priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(priv.public_key()))
    jwk.update(kid=kid, use="sig")
    return priv, jwk


def test_parse_skips_key_of_unusable_alg_not_the_set(keys: KeySet) -> None:
    """RFC 7517 §5: a JWK out of the supported ranges is ignored; one ``alg: none`` key
    (pyjwt raises NotImplementedError for it) leaves the other keys usable."""
    good = keys.jwks()["keys"][0]
    doc = {"keys": [{**good, "kid": "odd", "alg": "none"}, {**good, "kid": "hs", "alg": "HS256"},
                    {**good, "kid": "num", "alg": 7}, good]}
    assert set(parse_jwks(doc)) == {good["kid"]}


async def test_client_survives_one_alg_none_key(
        keys: KeySet, serve_jwks: Callable[[Handler], Awaitable[str]]) -> None:
    """An IdP JWKS with one extra ``alg: none`` key: tokens of the good key still verify."""
    good = keys.jwks()["keys"][0]
    url = await serve_jwks(serve_doc({"keys": [{**good, "kid": "odd", "alg": "none"}, good]}))
    async with JWKSClient(url) as client:
        verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), client)
        token = TokenIssuer(keys, IssuerOptions(issuer=ISSUER, audience=AUDIENCE)).issue("u")
        assert (await verifier.verify(token)).subject == "u"


def test_parse_skips_key_whose_key_ops_lack_verify(keys: KeySet) -> None:
    """RFC 7517 §4.3: a key whose ``key_ops`` lacks ``verify`` (or is no list) is not a
    verification key; one with ``verify`` is."""
    good = {k: v for k, v in keys.jwks()["keys"][0].items() if k != "use"}
    doc = {"keys": [{**good, "kid": "enc-only", "key_ops": ["encrypt", "wrapKey"]},
                    {**good, "kid": "bad-ops", "key_ops": "verify"},
                    {**good, "kid": "ok", "key_ops": ["verify"]}]}
    assert set(parse_jwks(doc)) == {"ok"}


async def test_rsa_key_without_alg_binds_to_the_one_configured_rsa_alg() -> None:
    """RFC 7517 §4.4 (``alg`` OPTIONAL), RFC 8725 §3.1 (one algorithm per key): an RSA key
    without ``alg`` is bound to the one RS*/PS* algorithm allowed, so a PS256-only
    verifier can use it (pyjwt alone binds it to RS256, which was then dropped)."""
    priv, jwk = rsa_jwk("rsa1")
    keys = parse_jwks({"keys": [jwk]}, frozenset({"PS256"}))
    assert keys["rsa1"].algorithm == "PS256"
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE,
                                           algorithms=("PS256",)), DictKeys(keys),
                           clock=lambda: T0)
    token = jwt.encode(claims(), priv, algorithm="PS256",
                       headers={"kid": "rsa1", "typ": "at+jwt"})
    assert (await verifier.verify(token)).subject == "u"


def test_rsa_key_without_alg_and_several_rsa_algs() -> None:
    """Several RS*/PS* algorithms allowed: still one algorithm per key (RFC 8725 §3.1):
    RS256 when it is allowed (as before), else the key is ambiguous and ignored."""
    _priv, jwk = rsa_jwk("rsa1")
    assert parse_jwks({"keys": [jwk]})["rsa1"].algorithm == "RS256"
    assert parse_jwks({"keys": [jwk]}, frozenset({"PS256", "PS384"})) == {}
    assert parse_jwks({"keys": [{**jwk, "alg": "PS384"}]},
                      frozenset({"PS256", "PS384"}))["rsa1"].algorithm == "PS384"


async def test_duplicate_kid_of_different_kty_both_usable(
        serve_jwks: Callable[[Handler], Awaitable[str]]) -> None:
    """RFC 7517 §4.5: keys of different ``kty`` may share a ``kid``; the client keeps both
    and a token verifies with the one of its ``alg`` (parse_jwks, by kid, gives the
    first)."""
    ec_key, ed_key = SigningKey.generate("ES256"), SigningKey.generate("EdDSA")
    doc = {"keys": [{**ec_key.public_jwk(), "kid": "shared"},
                    {**ed_key.public_jwk(), "kid": "shared"}]}
    assert parse_jwks(doc)["shared"].algorithm == "ES256"
    url = await serve_jwks(serve_doc(doc))
    async with JWKSClient(url) as client:
        verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE,
                                               algorithms=("ES256", "EdDSA")), client,
                               clock=lambda: T0)
        for key in (ec_key, ed_key):
            token = jwt.encode(claims(), key.private_key, algorithm=key.algorithm,
                               headers={"kid": "shared", "typ": "at+jwt"})
            assert (await verifier.verify(token)).subject == "u"
        assert client.kids == {"shared"}
        assert client.fetches == 1


async def test_deeply_nested_document_is_jwks_error(
        serve_jwks: Callable[[Handler], Awaitable[str]]) -> None:
    """A 60 000-deep ``[[[...`` body (within max_document_bytes) is a malformed document:
    JWKSError, not json's RecursionError."""
    async def handle(_r: web.Request) -> web.Response:
        return web.Response(body=b"[" * 60000, content_type="application/json")

    url = await serve_jwks(handle)
    async with JWKSClient(url) as client:
        with pytest.raises(JWKSError, match="RecursionError"):
            await client.refresh()


async def test_messages_and_logs_never_show_url_credentials(
        serve_jwks: Callable[[Handler], Awaitable[str]]) -> None:
    """Messages never carry a password or token: the URL's userinfo and query are left
    out of JWKSError messages and of the background refresh's log."""
    async def handle(_r: web.Request) -> web.Response:
        return web.Response(status=500, body=b"{}")

    url = (await serve_jwks(handle)).replace("http://", "http://jwks:s3cr3t-pw@")
    url += "?access_token=t0k3n"
    async with JWKSClient(url, JWKSClientOptions(min_refresh_interval_s=0)) as client:
        with pytest.raises(JWKSError) as info:
            await client.refresh()
        with structlog.testing.capture_logs() as logs:
            await client.get_key("any")
    for text in (str(info.value), repr(logs)):
        assert "s3cr3t-pw" not in text and "t0k3n" not in text
        assert "/jwks answered HTTP 500" in text


def test_client_fetches_in_a_second_asyncio_run(keys: KeySet) -> None:
    """A client used in one ``asyncio.run()`` (built once, e.g. in ``ServeOptions`` at
    import, a server started per run or per pytest-asyncio test) fetches in the next: its
    owned session is made again for the new loop, so a key rotated meanwhile is learned
    (it kept the first loop's session: every later fetch failed ``Event loop is closed``,
    "keeping cached keys", and the rotated key's tokens were refused for good)."""
    server = JWKSServer(keys)
    thread = LoopThread()
    try:
        thread.run(server.start("127.0.0.1", 0))
        client = JWKSClient(server.url, JWKSClientOptions(min_refresh_interval_s=0))

        async def kid_of(kid: str) -> str | None:
            async with asyncio.timeout(8):
                key = await client.get_key(kid)
                return None if key is None else key.kid

        first = keys.current.kid
        assert run_loop(kid_of(first)) == first
        second = keys.rotate().kid
        assert run_loop(kid_of(second)) == second
        assert client.fetches == 2

        async def close() -> None:
            async with asyncio.timeout(8):
                await client.close()

        run_loop(close())
    finally:
        thread.run(server.stop())
        thread.close()


def test_client_fetches_from_two_running_loops_at_once(keys: KeySet) -> None:
    """One client used by two servers each running its loop in a thread of its own: a
    lookup in one loop while the other's fetch is in flight waits for that fetch and gets
    its keys (it neither awaits the other loop's task nor uses its session, nor starts a
    fetch of its own outside the rate limit: tests/auth/test_jwks_fetch_storm_across_loops.py)."""
    arrived: list[int] = []
    release = threading.Event()

    async def start() -> tuple[web.AppRunner, str]:
        async def handle(_r: web.Request) -> web.Response:
            arrived.append(1)
            await asyncio.get_running_loop().run_in_executor(None, release.wait, 8)
            return web.json_response(keys.jwks())

        app = web.Application()
        app.router.add_get("/jwks", handle)
        runner, port = await start_app(app, "127.0.0.1", 0)
        return runner, f"http://127.0.0.1:{port}/jwks"

    server, other = LoopThread(), LoopThread()
    try:
        runner, url = server.run(start())
        client = JWKSClient(url, JWKSClientOptions(min_refresh_interval_s=10))
        kid = keys.current.kid
        first = asyncio.run_coroutine_threadsafe(client.get_key(kid), other.loop)
        deadline = time.monotonic() + 8
        while not arrived and time.monotonic() < deadline:
            time.sleep(0.01)
        assert arrived, "the first fetch never reached the server"

        async def get() -> VerificationKey | None:
            async with asyncio.timeout(8):
                waiting = asyncio.ensure_future(client.get_key(kid))
                await asyncio.sleep(0.05)  # waiting for the other loop's fetch
                release.set()
                return await waiting

        assert run_loop(get()) is not None
        assert first.result(10) is not None
        assert client.fetches == 1
        other.run(client.close())
        run_loop(client.close())
        server.run(runner.cleanup())
    finally:
        release.set()
        server.close()
        other.close()


# -- RFC 7518 §3.3: RSA keys of 2048 bits or more -------------------------------------------
async def test_rsa_key_under_2048_bits_is_ignored(
        serve_jwks: Callable[[Handler], Awaitable[str]]) -> None:
    """RFC 7518 §3.3: an RS*/PS* key MUST be 2048 bits or larger; RFC 7517 §5: a JWK out
    of the supported ranges SHOULD be ignored. A 1024-bit RSA key in the IdP's JWKS was
    used: pyjwt only warned (``InsecureKeyLengthWarning``; under ``-W error`` the call
    failed UNKNOWN) and a token signed with it was accepted, so whoever factors the
    modulus mints any identity. Now the key is ignored like ``alg: none`` (its tokens are
    refused ``token key id unknown``, UNAUTHENTICATED, with no warning raised), the client
    logs it once (kid and size, not again on the next refresh) and a 2048-bit key of the
    same document still verifies."""
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(weak.public_key()))
    weak_jwk.update(kid="weak", alg="RS256", use="sig")
    strong, strong_jwk = rsa_jwk("strong")
    doc = {"keys": [weak_jwk, strong_jwk]}
    assert set(parse_jwks(doc)) == {"strong"}
    url = await serve_jwks(serve_doc(doc))
    opts = JWKSClientOptions(min_refresh_interval_s=0)
    with structlog.testing.capture_logs() as logs:
        async with JWKSClient(url, opts) as client:
            verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE,
                                                   algorithms=("RS256",)), client,
                                   clock=lambda: T0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pyjwt warns when it signs with it
                forged = jwt.encode(claims(), weak, algorithm="RS256",
                                    headers={"kid": "weak", "typ": "at+jwt"})
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                with pytest.raises(InvalidTokenError, match="key id unknown"):
                    await verifier.verify(forged)
                token = jwt.encode(claims(), strong, algorithm="RS256",
                                   headers={"kid": "strong", "typ": "at+jwt"})
                assert (await verifier.verify(token)).subject == "u"
            assert client.kids == {"strong"}
            await client.refresh()
            assert client.fetches >= 2
    ignored = [e for e in logs if "under 2048 bits" in e["event"]]
    assert len(ignored) == 1, logs
    assert ignored[0]["kids"] == ["weak"] and ignored[0]["bits"] == [1024]


# -- fetch_timeout_s bounds the whole fetch ------------------------------------------------
async def test_hung_async_url_provider_is_bounded_by_fetch_timeout(keys: KeySet) -> None:
    """``fetch_timeout_s`` is the timeout of one fetch, and the URL provider is called per
    fetch (e.g. to resolve the issuer through the registry). Only the HTTP GET was under
    the timeout: a provider that hung once (a registry lookup never answered) left the
    refresh task running for good, every later unknown ``kid`` joined it and no fetch was
    ever started again, so after a key rotation every token was refused for the life of
    the process. Now the provider's await is inside the fetch's timeout: that fetch fails
    (logged, TimeoutError; ``refresh()`` raises JWKSError) and the next one finds the
    key."""
    server = JWKSServer(keys)
    await server.start("127.0.0.1", 0)
    calls = 0

    async def url() -> str:
        nonlocal calls
        calls += 1
        if calls in (1, 2):
            await asyncio.Event().wait()  # this registry lookup never answers
        return server.url

    # two hung fetches wait it out; the third's GET to the loopback server fits it
    opts = JWKSClientOptions(fetch_timeout_s=0.5, min_refresh_interval_s=0)
    try:
        async with JWKSClient(url, opts) as client:
            with structlog.testing.capture_logs() as logs:
                async with asyncio.timeout(8):
                    assert await client.get_key(keys.current.kid) is None
            assert any("TimeoutError" in str(e.get("error")) for e in logs), logs
            with pytest.raises(JWKSError, match="TimeoutError"):
                async with asyncio.timeout(8):
                    await client.refresh()
            async with asyncio.timeout(8):
                assert await client.get_key(keys.current.kid) is not None
            assert calls == 3
    finally:
        await server.stop()


async def test_refresh_outage_is_logged_once_with_reminders_and_its_end(keys: KeySet) -> None:
    """A server verifies JWTs against an identity provider's JWKS and the provider's
    endpoint answers 503 for a sustained time (stale keys keep serving), then recovers.

    Before: ``"jwks refresh failed; keeping cached keys"`` at WARNING on every refresh
    attempt (one per ``min_refresh_interval_s``, 10 s by default: 360 an hour per JWKS
    URL), and the end of the outage only at DEBUG ("jwks refreshed"), so at the usual INFO
    level the log never said the provider was back.

    Now meshkit's outage convention (``OutageLog``, on the client's injectable clock):
    one warning at the first failure, a reminder at most every 60 s with the number of
    failures so far, and ``"jwks refresh recovered"`` at INFO with the outage's length
    and failure count on the first refresh that works again."""
    runner, port, state = await _failable_jwks(keys)
    tick = Tick()
    opts = JWKSClientOptions(min_refresh_interval_s=1, clock=tick)
    try:
        async with JWKSClient(f"http://127.0.0.1:{port}/jwks", opts) as client:
            assert await client.get_key(keys.current.kid) is not None
            state["fail"] = True
            start = tick.now = tick.now + 1
            with structlog.testing.capture_logs() as logs:
                for _ in range(30):  # 30 attempts over 30 s: one warning
                    assert await client.get_key("unknown") is None
                    tick.now += 1
                assert await client.get_key(keys.current.kid) is not None  # stale keys serve
                tick.now = start + 61  # a minute later: one reminder
                for _ in range(5):
                    assert await client.get_key("unknown") is None
                    tick.now += 1
                state["fail"] = False
                ended_at = tick.now
                assert await client.get_key("unknown") is None  # fetched: not in the set
                assert client.fetches == 37
                tick.now += 1
                assert await client.get_key("unknown") is None  # fetched again: no line
            failed = [e for e in logs if e["event"] == "jwks refresh failed; keeping cached keys"]
            assert [e["log_level"] for e in failed] == ["warning", "warning"], logs
            assert [e["failures"] for e in failed] == [1, 31]
            assert "503" in failed[0]["error"] and failed[1]["failing_for_s"] == 61
            (back,) = [e for e in logs if e["event"] == "jwks refresh recovered"]
            assert back["log_level"] == "info", back
            assert back["outage_s"] == ended_at - start and back["failures"] == 35, back

            # the next outage is announced again
            state["fail"] = True
            with structlog.testing.capture_logs() as logs:
                tick.now += 1
                assert await client.get_key("unknown") is None
            assert [e["failures"] for e in logs
                    if e["event"].startswith("jwks refresh failed")] == [1], logs
    finally:
        await runner.cleanup()
