"""JWT issuing and verification, pure, with a fake clock; the token attacks of issue 3."""

from __future__ import annotations

import base64
import json
import re
import warnings
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from meshkit.auth import (
    InvalidTokenError,
    IssuerOptions,
    JWTAuthOptions,
    JWTVerifier,
    KeySet,
    SigningKey,
    TokenIssuer,
    UnauthenticatedError,
    VerifiedTokenCache,
    VerifierOptions,
    extract_bearer,
)
from meshkit.auth._jwt import VerificationKey
from meshkit.errors import ConfigError
from tests.auth.conftest import AUDIENCE, ISSUER

T0 = 1_700_000_000.0


class FakeClock:
    """A settable wall clock."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at T0."""
    return FakeClock()


@pytest.fixture
def mint(keys: KeySet, clock: FakeClock) -> Callable[..., str]:
    """Issue tokens at the fake clock's time."""
    iss = TokenIssuer(keys, IssuerOptions(issuer=ISSUER, audience=AUDIENCE, ttl_s=300,
                                          clock=clock))
    return iss.issue


@pytest.fixture
def verifier(keys: KeySet, clock: FakeClock) -> JWTVerifier:
    """A verifier over ``keys`` at the fake clock, 30 s leeway."""
    return JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE, leeway_s=30),
                       keys, clock=clock)


def b64(obj: object) -> str:
    """base64url(JSON) without padding."""
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


async def refused(verifier: JWTVerifier, token: str, reason: str) -> None:
    """Assert ``token`` is refused as UNAUTHENTICATED with ``reason``, never echoing it."""
    with pytest.raises(InvalidTokenError) as info:
        await verifier.verify(token)
    details = info.value.details() or ""
    assert reason in details
    assert token not in details and token[:40] not in details


async def test_issue_and_verify_round_trip(mint: Callable[..., str], verifier: JWTVerifier,
                                           keys: KeySet) -> None:
    """An issued token carries every registered claim, a kid and at+jwt, and verifies."""
    token = mint("user-1", scopes=("orders:read", "orders:write"))
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "kid": keys.current.kid, "typ": "at+jwt"}
    payload = jwt.decode(token, options={"verify_signature": False})
    assert set(payload) >= {"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "scope"}
    claims = await verifier.verify(token)
    assert claims.subject == "user-1" and claims.scopes == {"orders:read", "orders:write"}
    assert claims.expires_at == T0 + 300 and claims.audience == (AUDIENCE,)


async def test_eddsa_keys_work(clock: FakeClock) -> None:
    """EdDSA (Ed25519) keys sign and verify too."""
    keys = KeySet.generate("EdDSA")
    token = TokenIssuer(keys, IssuerOptions(issuer=ISSUER, audience=AUDIENCE, clock=clock)
                        ).issue("u")
    v = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys, clock=clock)
    assert (await v.verify(token)).subject == "u"


async def test_alg_none_refused(verifier: JWTVerifier, keys: KeySet) -> None:
    """A token with alg 'none' and no signature is refused (RFC 8725 §2.1)."""
    header = {"alg": "none", "typ": "at+jwt", "kid": keys.current.kid}
    payload = {"iss": ISSUER, "sub": "admin", "aud": AUDIENCE, "exp": T0 + 60, "iat": T0,
               "jti": "x"}
    await refused(verifier, f"{b64(header)}.{b64(payload)}.", "algorithm")


async def test_hs256_key_confusion_refused(verifier: JWTVerifier, keys: KeySet) -> None:
    """An HS256 token MACed with the public key's PEM as secret is refused."""
    pem = keys.current.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    payload = {"iss": ISSUER, "sub": "admin", "aud": AUDIENCE, "exp": T0 + 60, "iat": T0,
               "jti": "x"}
    head = {"alg": "HS256", "typ": "at+jwt", "kid": keys.current.kid}
    import hashlib
    import hmac
    signing_input = f"{b64(head)}.{b64(payload)}"
    sig = base64.urlsafe_b64encode(hmac.new(pem, signing_input.encode(), hashlib.sha256)
                                   .digest()).rstrip(b"=").decode()
    await refused(verifier, f"{signing_input}.{sig}", "algorithm")


def test_symmetric_algorithms_cannot_be_configured() -> None:
    """HS256 and none are refused at construction: the allow-list is asymmetric only."""
    for alg in ("HS256", "none"):
        with pytest.raises(ConfigError, match=alg):
            VerifierOptions(issuer=ISSUER, audience=AUDIENCE, algorithms=(alg,))


async def test_expired_refused(mint: Callable[..., str], verifier: JWTVerifier,
                               clock: FakeClock) -> None:
    """A token is refused once exp + leeway has passed, and accepted just before."""
    token = mint("u", ttl_s=60)
    clock.now = T0 + 60 + 29
    await verifier.verify(token)  # now cached: the cache must expire it too
    clock.now = T0 + 60 + 30
    await refused(verifier, token, "expired")


async def test_not_yet_valid_refused(mint: Callable[..., str], verifier: JWTVerifier,
                                     clock: FakeClock) -> None:
    """A token whose nbf is beyond now + leeway is refused."""
    token = mint("u")
    clock.now = T0 - 31
    await refused(verifier, token, "not yet valid")


async def test_wrong_issuer_refused(keys: KeySet, verifier: JWTVerifier,
                                    clock: FakeClock) -> None:
    """A token from another issuer is refused."""
    other = TokenIssuer(keys, IssuerOptions(issuer="https://evil", audience=AUDIENCE,
                                            clock=clock))
    await refused(verifier, other.issue("u"), "issuer")


async def test_wrong_audience_refused(mint: Callable[..., str], verifier: JWTVerifier) -> None:
    """A token for another audience is refused."""
    await refused(verifier, mint("u", audience="billing"), "audience")


async def test_unknown_kid_refused(verifier: JWTVerifier, clock: FakeClock) -> None:
    """A token signed by a key the verifier does not know is refused."""
    stranger = TokenIssuer(KeySet.generate(), IssuerOptions(issuer=ISSUER, audience=AUDIENCE,
                                                             clock=clock))
    await refused(verifier, stranger.issue("u"), "key id unknown")


async def test_known_kid_other_key_refused(verifier: JWTVerifier, keys: KeySet,
                                           clock: FakeClock) -> None:
    """A token naming our kid but signed by another key fails the signature check."""
    rogue = SigningKey.generate()
    token = jwt.encode({"iss": ISSUER, "sub": "u", "aud": AUDIENCE, "exp": T0 + 60, "iat": T0,
                        "jti": "j"}, rogue.private_key, algorithm="ES256",
                       headers={"kid": keys.current.kid, "typ": "at+jwt"})
    await refused(verifier, token, "signature")


async def test_tampered_payload_refused(mint: Callable[..., str], verifier: JWTVerifier) -> None:
    """Changing the payload (sub, scope) breaks the signature."""
    head, _payload, sig = mint("user-1", scopes=("orders:read",)).split(".")
    forged = jwt.decode(mint("user-1"), options={"verify_signature": False})
    forged.update(sub="admin", scope="orders:write admin")
    await refused(verifier, f"{head}.{b64(forged)}.{sig}", "signature")


@pytest.mark.parametrize("scope", ["orders:read\tadmin", "orders:read\nadmin", "a b",
                                   "", 'say"hi', "back\\slash", "caf\u00e9", "nul\x00"])
def test_issue_refuses_scopes_that_are_no_scope_tokens(
        mint: Callable[..., str], scope: str) -> None:
    """RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), delimited by SP: a
    scope with a tab would be two scopes to a whitespace split, so it is refused, quoted."""
    with pytest.raises(ConfigError) as info:
        mint("user-1", scopes=("orders:write", scope))
    assert repr(scope) in str(info.value)


def test_issue_refuses_scopes_given_as_one_string(mint: Callable[..., str]) -> None:
    """``scopes="orders.read"`` would grant one scope per character: ConfigError."""
    with pytest.raises(ConfigError, match=r"'orders\.read'"):
        mint("user-1", scopes="orders.read")
    token = mint("user-1", scopes=["orders.read"])  # any iterable of scopes
    assert jwt.decode(token, options={"verify_signature": False})["scope"] == "orders.read"


async def test_scope_claim_splits_on_space_only(keys: KeySet, verifier: JWTVerifier,
                                                clock: FakeClock) -> None:
    """The verified ``scope`` claim is split on SP alone (RFC 6749 §3.3): a tab inside a
    scope of a token signed elsewhere does not make a second scope; runs of spaces make
    no empty scope."""
    key = keys.current
    token = jwt.encode({"iss": ISSUER, "sub": "u", "aud": AUDIENCE, "iat": int(T0),
                        "exp": int(T0) + 60, "jti": "j", "scope": "orders:read\tadmin  b"},
                       key.private_key, algorithm=key.algorithm,
                       headers={"kid": key.kid, "typ": "at+jwt"})
    claims = await verifier.verify(token)
    assert claims.scopes == {"orders:read\tadmin", "b"}


@pytest.mark.parametrize("mangle", [
    lambda t: t[: len(t) // 2],
    lambda t: t.rsplit(".", 1)[0],
    lambda t: "!!!." + t.split(".", 1)[1],
    lambda t: "not a token",
    lambda t: "a.b.c",
])
async def test_truncated_or_non_base64_refused(
    mint: Callable[..., str], verifier: JWTVerifier, mangle: Callable[[str], str]
) -> None:
    """Truncated, non-base64 and garbage tokens are refused as malformed or badly signed."""
    with pytest.raises(InvalidTokenError) as info:
        await verifier.verify(mangle(mint("u")))
    assert info.value.details() in ("malformed token", "token signature or key not accepted")


async def test_huge_token_refused_before_parsing(verifier: JWTVerifier) -> None:
    """A token over max_token_bytes is refused without being parsed."""
    await refused(verifier, "a" * 10_000 + ".b.c", "too large")


async def test_missing_required_claim_refused(keys: KeySet, verifier: JWTVerifier) -> None:
    """A token without jti (a required claim) is refused."""
    token = jwt.encode({"iss": ISSUER, "sub": "u", "aud": AUDIENCE, "exp": T0 + 60, "iat": T0},
                       keys.current.private_key, algorithm="ES256",
                       headers={"kid": keys.current.kid, "typ": "at+jwt"})
    await refused(verifier, token, "required claim")


_HUGE = "1" + "0" * 400


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", _HUGE,
                                 "-" + _HUGE],
                         ids=["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "10**400",
                              "-10**400"])
async def test_non_finite_or_out_of_range_time_claims_refused_as_malformed(
        keys: KeySet, verifier: JWTVerifier, claim: str, raw: str) -> None:
    """A NumericDate (RFC 7519 section 2) must be a finite JSON number (RFC 8259 section 6
    has no NaN/Infinity; 1e400 and a 401-digit integer do not fit a double): such an exp,
    nbf or iat is a malformed token (UNAUTHENTICATED), never a token that never expires,
    and never an OverflowError (UNKNOWN)."""
    claims: dict[str, Any] = {"iss": ISSUER, "sub": "u", "aud": AUDIENCE, "exp": T0 + 60,
                              "nbf": T0, "iat": T0, "jti": "j"}
    claims[claim] = "@"
    body = json.dumps(claims).replace('"@"', raw).encode()
    token = jwt.api_jws.encode(body, keys.current.private_key, algorithm="ES256",
                               headers={"kid": keys.current.kid, "typ": "at+jwt"})
    await refused(verifier, token, "malformed token")
    assert len(verifier.cache) == 0


async def test_wrong_typ_refused(keys: KeySet, verifier: JWTVerifier) -> None:
    """An ID token (typ JWT) is not accepted as an access token."""
    token = jwt.encode({"iss": ISSUER, "sub": "u", "aud": AUDIENCE, "exp": T0 + 60, "iat": T0,
                        "jti": "j"}, keys.current.private_key, algorithm="ES256",
                       headers={"kid": keys.current.kid, "typ": "JWT"})
    await refused(verifier, token, "type")


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "Application/AT+JWT"])
async def test_access_token_typ_accepted_with_or_without_media_prefix(
        keys: KeySet, verifier: JWTVerifier, typ: str) -> None:
    """RFC 9068 section 4 accepts typ "at+jwt" or "application/at+jwt" (RFC 7515 section
    4.1.9: the prefix may be omitted; media types are case-insensitive)."""
    token = jwt.encode({"iss": ISSUER, "sub": "u", "aud": AUDIENCE, "exp": T0 + 60, "iat": T0,
                        "jti": "j"}, keys.current.private_key, algorithm="ES256",
                       headers={"kid": keys.current.kid, "typ": typ})
    assert (await verifier.verify(token)).subject == "u"


@pytest.mark.parametrize("typ", ["application/jwt", "text/at+jwt", "at+jwt/x", ""])
async def test_other_media_types_refused_as_typ(
        keys: KeySet, verifier: JWTVerifier, typ: str) -> None:
    """Only the application/ prefix may be added: another type or subtype is refused."""
    token = jwt.encode({"iss": ISSUER, "sub": "u", "aud": AUDIENCE, "exp": T0 + 60, "iat": T0,
                        "jti": "j"}, keys.current.private_key, algorithm="ES256",
                       headers={"kid": keys.current.kid, "typ": typ})
    await refused(verifier, token, "type")


async def test_cache_skips_signature_checks_until_exp(
    mint: Callable[..., str], verifier: JWTVerifier, clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A verified token is served from the cache, without a second signature check."""
    token = mint("u")
    decodes = []
    real = jwt.PyJWT.decode

    def counting(self: jwt.PyJWT, *a: object, **k: object) -> object:
        decodes.append(1)
        return real(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(jwt.PyJWT, "decode", counting)
    for _ in range(5):
        assert (await verifier.verify(token)).subject == "u"
    assert len(decodes) == 1
    clock.now = T0 + 300 + 30
    await refused(verifier, token, "expired")
    assert len(decodes) == 2


def test_cache_is_bounded_lru() -> None:
    """The cache evicts the least recently used entry and stores only token hashes."""
    clock = FakeClock()
    cache = VerifiedTokenCache(2, clock=clock)
    from meshkit.auth import Claims

    c = Claims(subject="s", issuer="i", audience=(), scopes=frozenset(), expires_at=T0 + 10)
    a, b, d = (cache.key(t) for t in ("ta", "tb", "td"))
    cache.put(a, c)
    cache.put(b, c)
    assert cache.get(a) is c
    cache.put(d, c)
    assert cache.get(b) is None and cache.get(a) is c and len(cache) == 2
    assert all(len(k) == 32 for k in cache._data)


async def test_rotation_keeps_previous_key_verifying(mint: Callable[..., str],
                                                     verifier: JWTVerifier,
                                                     keys: KeySet) -> None:
    """After one rotation old tokens verify; after two the oldest key is gone."""
    old = mint("u")
    keys.rotate()
    new = mint("u2")
    assert jwt.get_unverified_header(new)["kid"] == keys.current.kid
    verifier.cache.max_entries = 0
    await verifier.verify(old)
    keys.rotate()
    await refused(verifier, old, "key id unknown")
    assert len(keys.jwks()["keys"]) == 2
    assert all("d" not in k for k in keys.jwks()["keys"])


async def test_rotation_keeps_a_key_published_until_its_tokens_expire(
        clock: FakeClock) -> None:
    """Rotating twice within a token's lifetime keeps the key that signed it (beyond
    keep_previous) until its exp + grace_s; then the next rotation drops it, and keys
    that signed nothing go by count."""
    keys = KeySet.generate(keep_previous=1, grace_s=30, clock=clock)
    issuer = TokenIssuer(keys, IssuerOptions(issuer=ISSUER, audience=AUDIENCE, ttl_s=300,
                                             clock=clock))
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE, leeway_s=30,
                                           cache_size=0), keys, clock=clock)
    first = keys.current.kid
    old = issuer.issue("u")
    second = keys.rotate().kid
    third = keys.rotate().kid
    assert [k.kid for k in keys.keys] == [third, second, first]
    clock.now = T0 + 300 + 29
    assert (await verifier.verify(old)).subject == "u"
    fourth = keys.rotate().kid
    assert first in {k.kid for k in keys.keys}  # 329 < 300 + 30
    clock.now = T0 + 300 + 30
    keys.rotate()
    assert [k.kid for k in keys.keys][1:] == [fourth]
    assert not {second, third} & {k.kid for k in keys.keys}
    await refused(verifier, old, "key id unknown")
    with pytest.raises(ConfigError, match="-1"):
        KeySet.generate(grace_s=-1)


def test_key_set_refuses_a_duplicate_kid_quoting_it() -> None:
    """The duplicate kid is named, and counts and seconds of the wrong type are
    ConfigErrors (``keep_previous="1"`` raised TypeError)."""
    key = SigningKey.generate()
    with pytest.raises(ConfigError, match=re.escape(repr(key.kid))):
        KeySet([key, SigningKey.generate(), key])
    for kw, quoted in (({"keep_previous": "1"}, "'1'"), ({"keep_previous": True}, "True"),
                       ({"keep_previous": -1}, "-1"), ({"grace_s": "300"}, "'300'")):
        with pytest.raises(ConfigError, match=quoted):
            KeySet([key], **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("ttl_s", "lifetime"), [(0.5, 1), (1.0, 1), (1.2, 2), (299.9, 300)])
async def test_fractional_ttl_rounds_up_never_born_expired(
        keys: KeySet, clock: FakeClock, ttl_s: float, lifetime: int) -> None:
    """exp is iat + ceil(ttl_s): a 0.5 s token lives 1 s rather than expiring when issued
    (exp == iat), and a verifier without leeway accepts it at once."""
    clock.now = T0 + 0.75
    issuer = TokenIssuer(keys, IssuerOptions(issuer=ISSUER, audience=AUDIENCE, ttl_s=ttl_s,
                                             clock=clock))
    strict = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE, leeway_s=0),
                         keys, clock=clock)
    claims = await strict.verify(issuer.issue("u"))
    assert claims.issued_at == T0 and claims.expires_at == T0 + lifetime
    assert (await strict.verify(issuer.issue("u", ttl_s=0.1))).expires_at == T0 + 1


def test_extract_bearer() -> None:
    """Only 'authorization: Bearer <t>' yields a token; other schemes and repeats are refused."""
    assert extract_bearer([("authorization", "Bearer abc")]) == "abc"
    assert extract_bearer([("x-token", "Bearer abc")]) is None
    assert extract_bearer(None) is None
    for md in ([("authorization", "Basic dTpw")],
               [("authorization", "Bearer a"), ("authorization", "Bearer b")],
               [("authorization", "Bearer ")]):
        with pytest.raises(UnauthenticatedError) as info:
            extract_bearer(md)
        assert "dTpw" not in (info.value.details() or "")


def test_method_scopes_and_public_methods() -> None:
    """Exact method scopes win over service scopes, which win over defaults."""
    opts = JWTAuthOptions(public_methods=("/s.A/Login", "/s.Pub/*"),
                          method_scopes={"/s.A/Place": ("orders:write",),
                                         "/s.A/*": ("orders:read",)},
                          default_scopes=("basic",))
    assert opts.is_public("/s.A/Login") and opts.is_public("/s.Pub/Any")
    assert not opts.is_public("/s.A/Place")
    assert opts.required_scopes("/s.A/Place") == {"orders:write"}
    assert opts.required_scopes("/s.A/Get") == {"orders:read"}
    assert opts.required_scopes("/s.B/Get") == {"basic"}
    with pytest.raises(ConfigError, match="got"):
        JWTAuthOptions(method_scopes={"/s.A/Place": ("a b",)})


@pytest.mark.parametrize("where", ["method", "default"])
@pytest.mark.parametrize("bad", [("a\tb",), ("a\nb",), ("",), ('a"b',), ("é",), "orders.read"])
def test_scopes_must_be_scope_tokens(where: str, bad: Any) -> None:
    """JWTAuthOptions holds its scopes to RFC 6749 §3.3 scope tokens as the issuer does
    (whitespace, control, non-ASCII, ``"`` refused) and refuses one string: quoted."""
    kw: dict[str, Any] = ({"method_scopes": {"/s.A/*": bad}} if where == "method"
                          else {"default_scopes": bad})
    with pytest.raises(ConfigError) as info:
        JWTAuthOptions(**kw)
    assert repr(bad if isinstance(bad, str) else bad[0]) in str(info.value)


@pytest.mark.parametrize("pattern", ["/s.A/Login", "s.A/Login", "A/Login", "A/Log*", "*/Login",
                                     "s.*/*", "*"])
def test_public_methods_accept_every_spelling(pattern: str) -> None:
    """public_methods takes full, slash-less, short and glob method patterns."""
    opts = JWTAuthOptions(public_methods=(pattern,))
    assert opts.is_public("/s.A/Login")
    assert opts.is_public("/t.B/Other") is (pattern == "*")


def test_method_scopes_exact_then_longest_glob_then_default() -> None:
    """method_scopes follow MethodMatcher: exact > longest glob > default_scopes."""
    opts = JWTAuthOptions(method_scopes={
        "A/Place": ("orders:write",),  # exact, short spelling
        "s.A/*": ("orders:read",),  # 4 literal characters
        "*/Get*": ("get",),  # 4 literals, 2 '*': loses the tie on fewer '*'
        "*/GetAdmin": ("admin",),  # 9
    }, default_scopes=("basic",))
    assert opts.required_scopes("/s.A/Place") == {"orders:write"}
    assert opts.required_scopes("/s.A/GetUser") == {"orders:read"}
    assert opts.required_scopes("/s.A/GetAdmin") == {"admin"}
    assert opts.required_scopes("/t.B/GetX") == {"get"}
    assert opts.required_scopes("/t.B/Put") == {"basic"}


@pytest.mark.parametrize("bad", ["Login", "/s.A", "", "/s.A/Login ", "/a/b/c"])
def test_bad_method_patterns_refused_quoted(bad: str) -> None:
    """A key that is not a method pattern fails at construction, quoting it."""
    for opts in ({"public_methods": (bad,)}, {"method_scopes": {bad: ("x",)}}):
        with pytest.raises(ConfigError) as info:
            JWTAuthOptions(**opts)
        assert repr(bad) in str(info.value)


def test_keyset_directory_shared_and_0600(tmp_path: object) -> None:
    """from_directory creates one 0600 key that a second loader shares."""
    import os
    from pathlib import Path

    d = Path(str(tmp_path)) / "jwt"
    a = KeySet.from_directory(d)
    b = KeySet.from_directory(d)
    assert a.current.kid == b.current.kid
    (f,) = d.glob("jwt-*.key")
    assert os.stat(f).st_mode & 0o777 == 0o600
    assert "PRIVATE" not in repr(a.current)


def _load_kid_after_barrier(directory: str, barrier: Any) -> str:
    barrier.wait(timeout=30)
    return KeySet.from_directory(directory).current.kid


def test_keyset_directory_processes_starting_together_share_one_key(tmp_path: object) -> None:
    """Instances started at the same moment on an empty directory all sign with one key
    (the ecom demo starts two user services at once; each must publish the other's kid)."""
    import multiprocessing
    from pathlib import Path

    # spawn, not fork: by now this pytest process runs grpc's and other threads, and a
    # child forked while one of them held a lock hangs (it did once, in the whole suite)
    ctx = multiprocessing.get_context("spawn")
    n = 6
    d = str(Path(str(tmp_path)) / "jwt")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(n)
        with ctx.Pool(n) as pool:
            kids = pool.starmap(_load_kid_after_barrier, [(d, barrier)] * n, chunksize=1)
    assert len(set(kids)) == 1, kids
    assert len(list(Path(d).glob("jwt-*.key"))) == 1
    assert not list(Path(d).glob("*.tmp"))


class OneKey:
    """A custom KeySource answering one key for any kid."""

    def __init__(self, key: VerificationKey) -> None:
        self.key = key

    async def get_key(self, kid: str) -> VerificationKey | None:
        return self.key


async def test_rsa_key_under_2048_bits_from_a_key_source_is_refused(clock: FakeClock) -> None:
    """RFC 7518 §3.3: an RS*/PS* key MUST be 2048 bits or larger. A custom KeySource's
    1024-bit RSA key verified tokens: pyjwt only warned (``InsecureKeyLengthWarning``;
    under ``-W error`` the call failed UNKNOWN), so a forged token signed with a factored
    small key was accepted. Now such a key is refused before the signature is checked
    (``token signature or key not accepted``, UNAUTHENTICATED, no warning), while a
    2048-bit key verifies."""
    opts = VerifierOptions(issuer=ISSUER, audience=AUDIENCE, algorithms=("RS256",))
    payload = {"iss": ISSUER, "sub": "admin", "aud": AUDIENCE, "iat": int(T0),
               "exp": int(T0) + 300, "jti": "j1", "scope": "admin"}
    for bits, accepted in ((1024, False), (2048, True)):
        priv = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        source = OneKey(VerificationKey("k", "RS256", priv.public_key()))
        verifier = JWTVerifier(opts, source, clock=clock)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pyjwt warns when it signs with 1024 bits
            token = jwt.encode(payload, priv, algorithm="RS256",
                               headers={"kid": "k", "typ": "at+jwt"})
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            if accepted:
                assert (await verifier.verify(token)).subject == "admin"
            else:
                await refused(verifier, token, "token signature or key not accepted")
