"""JWT access tokens: signing keys with rotation, an issuer, and a verifier (pure parts).

Follows RFC 7519 (JWT), RFC 7517 (JWK/JWKS), RFC 7638 (JWK thumbprint ``kid``), RFC 8725
(JWT best current practice) and RFC 9068 (``typ: at+jwt`` access tokens):

* only asymmetric algorithms (ES256/384/512, EdDSA, RS*/PS*); the accepted list is fixed
  by :class:`VerifierOptions`, never taken from the token (RFC 8725 §3.1); ``none`` and
  ``HS*`` cannot even be configured, so a token HMAC-signed with a public key (key
  confusion) is refused before any key is used;
* every token carries a ``kid``; the key found for it must be of the token's algorithm;
  an RSA key must have at least :data:`MIN_RSA_KEY_BITS` (2048) bits (RFC 7518 §3.3);
* ``iss`` must equal the configured issuer (compared by meshkit itself as well, whatever
  pyjwt is installed) and ``aud`` contain the configured audience; ``exp``/``nbf``/``iat`` are
  checked against an injectable clock with ``leeway_s`` and must be finite numbers (RFC
  7519 §2 NumericDate; NaN, Infinity, ``1e400`` or ``10**400`` make a malformed token);
  required claims must be present, and not an empty string (``"sub": ""``);
* tokens longer than ``max_token_bytes`` are refused before parsing.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import jwt
import structlog
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from meshkit._config import (
    check_bool,
    check_clock,
    check_instance,
    check_int,
    check_metadata_key,
    check_number,
    check_path,
    check_secret_holder,
    check_strings,
    holds_content,
    shown_path,
)
from meshkit._fields import FrozenMap
from meshkit._methods import MethodMatcher, normalized
from meshkit.auth._errors import InvalidTokenError, UnauthenticatedError
from meshkit.auth._jwt_types import Claims
from meshkit.errors import ConfigError

_log = structlog.get_logger("meshkit.auth")

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "MIN_RSA_KEY_BITS",
    "Clock",
    "IssuerOptions",
    "JWTAuthOptions",
    "JWTVerifier",
    "KeySet",
    "KeySource",
    "SigningKey",
    "TokenIssuer",
    "TokenVerifier",
    "VerificationKey",
    "VerifiedTokenCache",
    "VerifierOptions",
    "extract_bearer",
]

Clock = Callable[[], float]
"""A clock returning seconds: ``time.time`` for token times, ``time.monotonic`` for
intervals. Tests inject fakes."""

ASYMMETRIC_ALGORITHMS = frozenset({
    "ES256", "ES384", "ES512", "EdDSA", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
})
"""The JWS algorithms a verifier may be configured with (RFC 7518; RFC 8037 EdDSA)."""

MIN_RSA_KEY_BITS = 2048
"""The smallest RSA modulus, in bits, a token is verified with (RFC 7518 §3.3: "A key of
size 2048 bits or larger MUST be used" with RS*/PS*)."""

_sha256 = hashlib.sha256
_PRIVATE_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey,
                      ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)
_SIGNING_ALGORITHMS = ("ES256", "EdDSA")
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


_STAMPED_KEY_FILE = re.compile(r"jwt-(\d{8}T\d{6}\.\d{6})Z-.*\.key", re.ASCII)
"""A key file named with its UTC creation time (:meth:`KeySet.rotate_directory`)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- keys -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A public key usable to verify tokens.

    Attributes:
        kid: the key id tokens name in their header.
        algorithm: the one JWS algorithm this key verifies, e.g. ``"ES256"``.
        key: the ``cryptography`` public key object; an RSA key under
            :data:`MIN_RSA_KEY_BITS` (2048) bits, or a private key object, verifies no
            token. Compared by ``==`` (key material), left out of the hash
            (``cryptography``'s keys have none): keys hash by ``kid`` and ``algorithm``.
    """

    kid: str
    algorithm: str
    key: Any = field(hash=False)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private signing key with its ``kid`` (the RFC 7638 thumbprint) and algorithm.

    Build with :meth:`generate` or :meth:`from_pem`; the private key never appears in
    ``repr``, logs or JWKS documents.

    Attributes:
        kid: the key id, its public key's RFC 7638 thumbprint.
        algorithm: ``"ES256"`` or ``"EdDSA"``.
        private_key: the ``cryptography`` private key (ECDSA P-256 or Ed25519).
    """

    kid: str
    algorithm: str
    private_key: PrivateKey = field(repr=False)

    @classmethod
    def generate(cls, algorithm: str = "ES256") -> SigningKey:
        """A new key: ``"ES256"`` (ECDSA P-256, default) or ``"EdDSA"`` (Ed25519).

        Raises:
            ConfigError: another algorithm.
        """
        if algorithm == "ES256":
            return cls.from_private_key(ec.generate_private_key(ec.SECP256R1()))
        if algorithm == "EdDSA":
            return cls.from_private_key(ed25519.Ed25519PrivateKey.generate())
        raise ConfigError(f"signing algorithm must be one of {_SIGNING_ALGORITHMS}, "
                          f"got {algorithm!r}")

    @classmethod
    def from_private_key(cls, key: PrivateKey) -> SigningKey:
        """Wrap a P-256 ECDSA or Ed25519 private key; the ``kid`` is its JWK thumbprint.

        Raises:
            ConfigError: another key type or curve.
        """
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            alg = "ES256"
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            alg = "EdDSA"
        else:
            raise ConfigError("signing keys must be ECDSA P-256 or Ed25519")
        jwk = _public_jwk(key.public_key())
        members = {k: jwk[k] for k in ("crv", "kty", "x", "y") if k in jwk}
        thumb = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True)
                               .encode()).digest()
        return cls(_b64(thumb), alg, key)

    @classmethod
    def from_pem(cls, data: bytes) -> SigningKey:
        """Load an unencrypted PKCS#8 PEM private key.

        Raises:
            ConfigError: unparsable or of an unsupported type, a curve ``cryptography``
                does not support included (``prime239v1``, SM2, explicit parameters:
                its ``UnsupportedAlgorithm``); content never quoted.
        """
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise ConfigError("cannot parse the JWT signing key PEM") from None
        except UnsupportedAlgorithm:  # an EC curve OpenSSL knows and cryptography does not
            raise ConfigError("signing keys must be ECDSA P-256 or Ed25519 (its key type "
                              "or curve is not supported)") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise ConfigError("signing keys must be ECDSA P-256 or Ed25519")
        return cls.from_private_key(key)

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (write it with mode 0600)."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())

    def public_jwk(self) -> dict[str, str]:
        """The public JWK (RFC 7517) with ``kid``, ``alg`` and ``use: sig``."""
        jwk = _public_jwk(self.private_key.public_key())
        jwk.update(kid=self.kid, alg=self.algorithm, use="sig")
        return jwk

    def verification_key(self) -> VerificationKey:
        """The public half as a :class:`VerificationKey`."""
        return VerificationKey(self.kid, self.algorithm, self.private_key.public_key())


def rsa_key_too_small(key: object) -> bool:
    """Whether ``key`` is an RSA key (public or private) under :data:`MIN_RSA_KEY_BITS`
    bits, which no token is verified with (RFC 7518 §3.3)."""
    return (isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey)
            and key.key_size < MIN_RSA_KEY_BITS)


def _public_jwk(pub: Any) -> dict[str, str]:
    if isinstance(pub, ec.EllipticCurvePublicKey):
        out = jwt.algorithms.ECAlgorithm.to_jwk(pub, as_dict=True)
    else:
        out = jwt.algorithms.OKPAlgorithm.to_jwk(pub, as_dict=True)
    return {k: str(v) for k, v in out.items()}


def _check_signing_key(key: object) -> None:
    if not isinstance(key, SigningKey):  # PEM bytes: SigningKey.from_pem(...)
        shown = "PEM bytes" if isinstance(key, bytes) else repr(key)
        raise ConfigError(f"a signing key must be a SigningKey (SigningKey.from_pem for "
                          f"PEM), got {shown}")


@runtime_checkable
class KeySource(Protocol):
    """Where a verifier finds public keys by ``kid``: a :class:`KeySet` (same process) or a
    :class:`~meshkit.auth.JWKSClient` (remote JWKS).

    A source may also offer ``async def get_key_for(self, kid: str, algorithm: str)``: the
    key for ``kid`` bound to ``algorithm`` (several keys may share a ``kid``, RFC 7517
    §4.5); :class:`JWTVerifier` then uses it instead of :meth:`get_key`. And a
    ``version`` attribute (any value) that changes whenever its keys change:
    :class:`JWTVerifier` then forgets the tokens it verified when it does, so a key
    removed from the source (a compromised one) revokes its cached tokens at once.
    :class:`KeySet` and :class:`~meshkit.auth.JWKSClient` have one. A source that learns
    of changes only when asked for a key (a remote copy refreshed on use) also has a
    ``refresh_interval_s`` (seconds): :class:`JWTVerifier` serves a token from its cache
    for at most that long before asking the source again, as
    :class:`~meshkit.auth.JWKSClient` does. And, for a remote copy, an
    ``async def get_key_refreshed(self, kid: str, algorithm: str,
    tried: tuple[VerificationKey, ...])``: :class:`JWTVerifier` calls it when the keys it
    got, ``tried`` (the first from ``get_key_for``/``get_key``), failed a token's signature
    (another key published under the ``kid``, or the issuer replaced its key under it) and
    verifies the token again with the key it returns, one not in ``tried``, if any
    (``None``: refused as before), asking again while the keys it returns fail (each key
    once, at most 8 a token); the source refreshes rate-limited, as for an unknown
    ``kid``.
    """

    async def get_key(self, kid: str) -> VerificationKey | None:
        """The key for ``kid``, or ``None`` if unknown (may refresh, rate-limited)."""
        ...


def _key_directory(directory: object) -> Path:
    """``directory`` (of ``jwt-*.key`` files) as a ``Path``.

    Raises:
        ConfigError: it is no path (:func:`~meshkit._config.check_path`: ``None``,
            ``bytes``, a number, ``""``), or holds a key's PEM (or a line break): the key
            itself read from a variable, named by its type, never quoted.
    """
    text = check_path("directory", directory)
    if holds_content(text):  # the key itself, read from a variable: never a path
        raise ConfigError(f"directory must be the path of the key files' directory, "
                          f"got {shown_path(directory)}")
    return Path(text)


class KeySet:
    """Signing keys with rotation: the current key signs, previous keys still verify.

    What :meth:`rotate` keeps published: the ``keep_previous`` newest previous keys, and
    beyond them every previous key a :class:`TokenIssuer` of this key set signed a token
    with that may still be accepted (until that key's latest ``exp`` + ``grace_s``, on
    ``clock``). So a token minted here stays verifiable until it expires however often the
    keys rotate. Keys given to the constructor or loaded from a directory have no such
    record (tokens other processes signed are unknown here): they go by count alone.

    Args:
        keys: newest first; ``keys[0]`` is the current signing key (at least one).
        keep_previous: how many previous keys :meth:`rotate` keeps published whatever
            they signed (default 1; >= 0).
        grace_s: how long after the latest ``exp`` it signed a previous key stays
            published: the verifiers' ``leeway_s`` (default 300, the largest leeway
            :class:`VerifierOptions` allows; >= 0).
        clock: wall clock in epoch seconds (default ``time.time``).

    Raises:
        ConfigError: no keys, ``keys`` not a sequence of :class:`SigningKey` (PEM bytes,
            one string), a duplicate kid, ``keep_previous`` not an integer >= 0,
            ``grace_s`` not a number >= 0 or ``clock`` not callable (``time.time()``: its
            reading; quoted).
    """

    def __init__(self, keys: Sequence[SigningKey], *, keep_previous: int = 1,
                 grace_s: float = 300.0, clock: Clock = time.time) -> None:
        if isinstance(keys, str | bytes) or not isinstance(keys, Sequence):
            raise ConfigError(f"keys must be a sequence of SigningKey, got {keys!r}")
        if not keys:
            raise ConfigError("a KeySet needs at least one signing key")
        for key in keys:
            _check_signing_key(key)
        check_int("keep_previous", keep_previous, low=0)
        check_number("grace_s", grace_s, finite=False)
        check_clock("clock", clock, wall=True)
        seen: set[str] = set()
        for key in keys:
            if key.kid in seen:
                raise ConfigError(f"duplicate kid in KeySet: {key.kid!r}")
            seen.add(key.kid)
        self._keys = tuple(keys)
        self._keep_previous = keep_previous
        self._grace_s = grace_s
        self._clock = clock
        self._signed_until: dict[str, float] = {}  # kid -> latest exp signed with it
        self.version = 1
        self._by_kid = {k.kid: k.verification_key() for k in self._keys}

    @classmethod
    def generate(cls, algorithm: str = "ES256", *, keep_previous: int = 1,
                 grace_s: float = 300.0, clock: Clock = time.time) -> KeySet:
        """A key set with one freshly generated key (see :meth:`SigningKey.generate`)."""
        return cls([SigningKey.generate(algorithm)], keep_previous=keep_previous,
                   grace_s=grace_s, clock=clock)

    @classmethod
    def from_directory(
        cls, directory: str | os.PathLike[str], *, algorithm: str = "ES256",
        keep_previous: int = 1, create: bool = True, grace_s: float = 300.0,
        clock: Clock = time.time,
    ) -> KeySet:
        """Load ``jwt-*.key`` PEM files (newest file = current); create one if none.

        A file's age is the UTC creation time in its name when it has one
        (``jwt-20261206T231500.123456Z-<kid>.key``, as :meth:`rotate_directory` writes),
        and such a file is newer than any file without one, which are ordered by mtime: a
        copy that rewrites the mtimes (a Kubernetes Secret) keeps the order. Name keys
        you write yourself the same way.

        Creation happens under an exclusive ``flock`` on ``<directory>/.create.lock`` and
        writes mode 0600, so processes starting together share one key rather than each
        writing its own. ``keep_previous + 1`` newest files are loaded; ``grace_s`` and
        ``clock`` are the constructor's.

        A ``jwt-*.key`` entry that vanished while listed or before it was read (a
        dangling link, as a Kubernetes Secret mount leaves one a moment; a name with a
        creation time too) is skipped: the next older file loads in its place, and a
        warning names it (one that stays is a link to a file not there).

        Raises:
            ConfigError: no key and ``create`` is false or none can be created (a
                read-only mount), or an unreadable key file (a link loop too) or one that
                is no key (the file named, never its content); ``directory`` holding a
                key's PEM (or a line break) rather than a path (named by its type, nothing
                created);
                ``create`` not ``True`` or ``False`` (a string read from the
                environment, ``"false"``, is truthy; quoted, nothing created);
                ``directory`` no path (``None`` from an unset variable, ``bytes``, a
                number, or ``""``, which would be the current directory).
        """
        check_int("keep_previous", keep_previous, low=0)  # used below, before __init__
        check_bool("create", create)
        d = _key_directory(directory)
        files = cls._key_files(d)
        if not files:
            if not create:
                raise ConfigError(f"no jwt-*.key signing key in {d}")
            # Check-and-create under an exclusive lock: instances starting together must
            # sign with one key, else each one's JWKS lacks the others' kid.
            try:
                d.mkdir(parents=True, exist_ok=True, mode=0o700)
                with open(d / ".create.lock", "a+b") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    try:
                        if not cls._key_files(d):
                            cls.rotate_directory(d, algorithm=algorithm)
                    finally:
                        fcntl.flock(lock, fcntl.LOCK_UN)
            except OSError as exc:  # a read-only mount left empty, a path under a file
                raise ConfigError(f"no jwt-*.key signing key in {d}, and none could be "
                                  f"created: {type(exc).__name__}") from None
            files = cls._key_files(d)
        listed = set(files)
        for p in d.glob("jwt-*.key"):  # left out by the listing: a dangling link
            if p not in listed and not p.exists():
                _skipped_key_file(p)
        keys: list[SigningKey] = []
        for f in files:
            if len(keys) > keep_previous:
                break
            try:
                data = f.read_bytes()
            except FileNotFoundError:  # vanished since listed (a Secret mount's swap)
                _skipped_key_file(f)
                continue
            except OSError as exc:
                raise ConfigError(f"cannot read {f}: {type(exc).__name__}") from None
            try:
                keys.append(SigningKey.from_pem(data))
            except ConfigError as exc:  # which of the files (never its content)
                raise ConfigError(f"{f}: {exc}") from None
        return cls(keys, keep_previous=keep_previous, grace_s=grace_s, clock=clock)

    @staticmethod
    def _key_files(d: Path) -> list[Path]:
        """``jwt-*.key`` files in ``d``, newest first: those whose name holds their
        creation time (``jwt-<YYYYMMDDTHHMMSS.ffffff>Z-<kid>.key``, as
        :meth:`rotate_directory` writes it) by that time, and newer than every file
        without one (written before names held it); those by mtime; ties by name. The
        name survives a copy (a Kubernetes Secret, ``cp``, config management) that gives
        every file the copy's mtime, in the copier's order, which once made an old key
        current after a rotation."""
        def age(p: Path) -> tuple[int, int, str]:
            # stat'ed first, whatever its name: a dangling link raises here, stamped too
            mtime_ns = p.stat().st_mtime_ns
            m = _STAMPED_KEY_FILE.fullmatch(p.name)
            if m is not None:
                with contextlib.suppress(ValueError):
                    when = datetime.datetime.strptime(m.group(1), "%Y%m%dT%H%M%S.%f")
                    stamp = when.replace(tzinfo=datetime.UTC).timestamp()
                    return 1, round(stamp * 1_000_000), p.name
            return 0, mtime_ns, p.name

        dated = []
        for p in d.glob("jwt-*.key"):
            try:
                dated.append((age(p), p))
            except FileNotFoundError:  # a dangling link (a Secret mount's swap), removed
                continue
            except OSError as exc:  # a link loop (ELOOP), a denied stat: no key to skip
                raise ConfigError(f"cannot read {p}: {type(exc).__name__}") from None
        return [p for _, p in sorted(dated, key=lambda e: e[0], reverse=True)]

    @staticmethod
    def rotate_directory(directory: str | os.PathLike[str], *, algorithm: str = "ES256") -> Path:
        """Write a new signing key file ``jwt-<UTC creation time>Z-<kid>.key`` (0600, e.g.
        ``jwt-20261206T231500.123456Z-<kid>.key``) into ``directory``; loaders then sign
        with it (the name's time orders the keys, not the mtime). Returns its path.

        The file appears atomically (written under a temporary name, then renamed), so a
        loader never reads a half-written key.

        Raises:
            ConfigError: ``directory`` is no path (``None`` from an unset variable,
                ``bytes``, a number, or ``""``, which would be the current directory), or
                holds a key's PEM (or a line break) rather than a path (named by its
                type); nothing written.
        """
        d = _key_directory(directory)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = SigningKey.generate(algorithm)
        # the creation time in the name orders the keys (see _key_files), not the mtime
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%f")
        path = d / f"jwt-{stamp}Z-{key.kid}.key"
        tmp = d / f".jwt-{key.kid}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(key.private_pem())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    @property
    def current(self) -> SigningKey:
        """The key new tokens are signed with."""
        return self._keys[0]

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        """Current key first, then the previous keys still published."""
        return self._keys

    def note_signed(self, kid: str, exp: float) -> None:
        """Record that a token expiring at ``exp`` was signed with key ``kid``, so
        :meth:`rotate` keeps the key published until ``exp + grace_s``
        (:class:`TokenIssuer` calls this for every token)."""
        if exp > self._signed_until.get(kid, -math.inf):
            self._signed_until[kid] = exp

    def rotate(self, new: SigningKey | None = None) -> SigningKey:
        """Make ``new`` (default: a fresh key of the current algorithm) the signing key;
        keep for verification the ``keep_previous`` newest older keys and any older key
        whose tokens may still be accepted (see the class docstring); drop the rest.
        Bumps :attr:`version`. Returns the new current key.

        ``new`` already current (same ``kid``, e.g. a reload of an unchanged key
        directory) changes nothing: no key dropped, :attr:`version` kept. ``new`` an older
        published key becomes current, listed once.

        Raises:
            ConfigError: ``new`` is no :class:`SigningKey` (PEM bytes: load them with
                :meth:`SigningKey.from_pem`)."""
        new = new or SigningKey.generate(self.current.algorithm)
        _check_signing_key(new)
        if new.kid == self.current.kid:
            return self.current
        now = self._clock()
        until = self._signed_until
        older = [k for k in self._keys if k.kid != new.kid]
        kept = [k for i, k in enumerate(older)
                if i < self._keep_previous
                or now < until.get(k.kid, -math.inf) + self._grace_s]
        self._keys = (new, *kept)
        self._by_kid = {k.kid: k.verification_key() for k in self._keys}
        self._signed_until = {k: v for k, v in until.items() if k in self._by_kid}
        self.version += 1
        return new

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWKS document (RFC 7517 §5): the public keys only."""
        return {"keys": [k.public_jwk() for k in self._keys]}

    def lookup(self, kid: str) -> VerificationKey | None:
        """The verification key for ``kid``, synchronously."""
        return self._by_kid.get(kid)

    async def get_key(self, kid: str) -> VerificationKey | None:
        """:class:`KeySource` for verifiers in the issuing process."""
        return self._by_kid.get(kid)


def _skipped_key_file(path: Path) -> None:
    """Warn that the ``jwt-*.key`` entry ``path`` was skipped (gone: a dangling link). A
    Secret mount's swap leaves one for a moment; one that stays is a misconfiguration
    (a link to a file not there) that would otherwise pass unseen, an older key or a new
    one signing in its place. The path only, never any content."""
    _log.warning("jwt signing key file skipped: it does not exist (a dangling link?)",
                 file=str(path))


# -- scopes ---------------------------------------------------------------------------------
_SCOPE_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - {'"', "\\"}


def check_scopes(name: str, value: object) -> tuple[str, ...]:
    """``value`` (the field ``name``: scopes) as a tuple of RFC 6749 §3.3 scope tokens,
    ``scope-token = 1*( %x21 / %x23-5B / %x5D-7E )``: non-empty, printable ASCII without
    space, ``"`` or ``\\``. The ``scope`` claim joins them with single spaces (RFC 8693
    §4.2), so a tab or newline inside a scope would make two scopes of one.

    Raises:
        ConfigError: ``value`` is one string (``"orders.read"`` would be its characters) or
            not iterable, or a scope is no scope token (the scope quoted).
    """
    if isinstance(value, str):
        raise ConfigError(f"{name} must be a tuple of scopes, got the string {value!r}")
    if not isinstance(value, Iterable):
        raise ConfigError(f"{name} must be a tuple of scopes, got {value!r}")
    scopes = tuple(value)
    for s in scopes:
        if not isinstance(s, str) or not s or not _SCOPE_CHARS.issuperset(s):
            raise ConfigError(f"{name}: a scope must be a non-empty RFC 6749 scope token "
                              f"(printable ASCII, no space, '\"' or '\\\\'), got {s!r}")
    return scopes


# -- issuing --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class IssuerOptions:
    """How :class:`TokenIssuer` mints access tokens.

    Args:
        issuer: ``iss``, e.g. ``"https://userd.meshkit.local"`` (non-empty).
        audience: default ``aud``, e.g. ``"meshkit"`` (non-empty).
        ttl_s: default lifetime in seconds (default 900; 0 < ttl_s <= 86400), rounded up
            to whole seconds: ``exp = iat + ceil(ttl_s)`` (0.5 gives 1 s, never a token
            born expired).
        clock: wall clock in epoch seconds (default ``time.time``).

    Raises:
        ConfigError: empty issuer/audience, ttl out of range or ``clock`` not callable
            (``time.time()``: its reading; quoted).
    """

    issuer: str
    audience: str
    ttl_s: float = 900.0
    clock: Clock = time.time

    def __post_init__(self) -> None:
        if not self.issuer or not isinstance(self.issuer, str):
            raise ConfigError(f"issuer must be a non-empty string, got {self.issuer!r}")
        if not self.audience or not isinstance(self.audience, str):
            raise ConfigError(f"audience must be a non-empty string, got {self.audience!r}")
        check_number("ttl_s", self.ttl_s, low_open=True, high=86400.0)
        check_clock("clock", self.clock, wall=True)


class TokenIssuer:
    """Mints signed access tokens (RFC 9068 shape) with the key set's current key.

    Args:
        keys: the :class:`KeySet`; its current key signs, its ``kid`` goes in the header.
        options: :class:`IssuerOptions`.

    Raises:
        ConfigError: ``keys`` is no :class:`KeySet` or ``options`` no
            :class:`IssuerOptions` (swapped, a ``VerifierOptions``; quoted).
    """

    def __init__(self, keys: KeySet, options: IssuerOptions) -> None:
        check_secret_holder("keys", keys, KeySet, optional=False)
        check_instance("options", options, IssuerOptions, optional=False)
        self.keys = keys  # each token's exp is noted in it (KeySet.note_signed)
        self.options = options

    def issue(
        self,
        subject: str,
        *,
        scopes: Iterable[str] = (),
        audience: str | None = None,
        ttl_s: float | None = None,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A compact JWS access token for ``subject``.

        Claims: ``iss``, ``sub``, ``aud``, ``iat`` (the clock's whole second), ``nbf``
        (= iat), ``exp`` (iat + ``ceil(ttl_s)``: a fractional ttl is rounded up, so a
        token is never issued already expired), ``jti`` (128 random bits), ``scope``
        (space-separated RFC 6749 §3.3 scope tokens); header ``alg``, ``kid``,
        ``typ: at+jwt``. ``extra_claims`` cannot override the registered ones. The key set
        notes ``exp`` against the signing key (:meth:`KeySet.note_signed`), so rotation
        keeps it published.

        Raises:
            ConfigError: empty subject, ``scopes`` given as one string, a scope that is no
                RFC 6749 §3.3 scope token (empty, or with a space, tab, other control or
                non-ASCII character, ``"`` or ``\\``; see :func:`check_scopes`), a bad
                ``ttl_s`` (not a number, ``True``, out of range), an ``audience`` that
                is not a non-empty string (``""``; quoted), or ``extra_claims`` that is
                no mapping of non-empty string names to JSON values (RFC 8259: NaN or
                infinity, a datetime, a set, bytes are none; the claim named, its value
                never quoted), or holds a nested object with a name that is no string
                (``{1: ...}``: JSON would write ``"1"``, possibly twice in one object,
                RFC 7519 §4; the claim and that name quoted).
        """
        if not subject or not isinstance(subject, str):
            raise ConfigError(f"subject must be a non-empty string, got {subject!r}")
        scope_list = check_scopes("scopes", scopes)
        ttl = self.options.ttl_s if ttl_s is None else ttl_s
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= 86400:
            raise ConfigError(f"ttl_s must be a number of seconds in (0, 86400], got {ttl!r}")
        if audience is not None and (not isinstance(audience, str) or not audience):
            # "" is no "not given": the default audience would be another than named
            raise ConfigError(f"audience must be a non-empty string, got {audience!r}")
        now = int(self.options.clock())
        exp = now + math.ceil(ttl)  # never exp == iat (a token born expired)
        payload = _extra_claims(extra_claims)
        payload.update(
            iss=self.options.issuer, sub=subject,
            aud=self.options.audience if audience is None else audience,
            iat=now, nbf=now, exp=exp, jti=secrets.token_urlsafe(16),
            scope=" ".join(scope_list),
        )
        key = self.keys.current
        self.keys.note_signed(key.kid, exp)
        return jwt.encode(payload, key.private_key, algorithm=key.algorithm,
                          headers={"kid": key.kid, "typ": "at+jwt"})


def _extra_claims(extra: object) -> dict[str, Any]:
    """``extra`` (:meth:`TokenIssuer.issue`'s ``extra_claims``) as a new dict, checked to
    be JSON a verifier anywhere parses: Python's json writes NaN and infinity as bare
    words no RFC 8259 parser takes, turns a non-string name into a string, and raises a
    bare ``TypeError`` on a datetime or a set.

    Raises:
        ConfigError: no mapping (named by its type), a name that is no non-empty string
            (quoted), or a value that is no JSON (the claim named, never its value).
    """
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise ConfigError("extra_claims must be a mapping of claim names to JSON values, "
                          f"got a {type(extra).__name__}")
    for name, value in extra.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"extra_claims: claim names must be non-empty strings, "
                              f"got {name!r}")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            raise ConfigError(
                f"extra_claims[{name!r}] is no JSON value (RFC 8259: strings, finite "
                "numbers, booleans, null, lists and objects of them; NaN or infinity, "
                "a datetime, a set or bytes are none)") from None
        bad = _non_string_name(value)
        if bad:
            member = bad[0]
            raise ConfigError(
                f"extra_claims[{name!r}]: member name {member!r} is no string; JSON would "
                f"write it as {json.dumps(member)!r}, which may duplicate another name "
                "(RFC 7519 §4: claim names must be unique; RFC 8259 §4)")
    return dict(extra)


def _non_string_name(value: object) -> tuple[object] | tuple[()]:
    """``(name,)``: the first member name that is no string in the objects nested in
    ``value`` (a JSON value: :func:`json.dumps` took it; ``None`` may be that name), else
    ``()``. A dict's ``1``, ``True`` or
    ``None`` name is written ``"1"``, ``"true"``, ``"null"``: beside that string name, the
    object would hold one name twice."""
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, Mapping):
            for k, item in v.items():
                if not isinstance(k, str):
                    return (k,)
                todo.append(item)
        elif isinstance(v, list | tuple):
            todo.extend(v)
    return ()


def check_algorithms(name: str, value: object) -> tuple[str, ...]:
    """``value`` (the field ``name``: JWS algorithms to accept) as a tuple.

    Raises:
        ConfigError: ``value`` is one string, empty, or names an algorithm outside
            :data:`ASYMMETRIC_ALGORITHMS` (``none``, ``HS256``...); the value quoted.
    """
    algorithms = check_strings(name, value)
    if not algorithms:
        raise ConfigError(f"{name} must not be empty, got {value!r}")
    for alg in algorithms:
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise ConfigError(f"algorithm {alg!r} is not allowed; use one of "
                              f"{sorted(ASYMMETRIC_ALGORITHMS)}")
    return algorithms


# -- verifying ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class VerifierOptions:
    """What :class:`TokenVerifier` / :class:`JWTVerifier` accept.

    Args:
        issuer: the only accepted ``iss``.
        audience: the accepted ``aud`` (the token's ``aud`` must contain it).
        algorithms: accepted JWS algorithms, fixed here, never read from tokens (default
            ``("ES256", "EdDSA")``; only :data:`ASYMMETRIC_ALGORITHMS`).
        leeway_s: clock-skew allowance for ``exp``/``nbf``/``iat`` (default 30 s; 0..300).
        required_claims: claims that must be present and, when a string, not empty
            (default ``iss sub aud exp iat jti``).
        typ: required ``typ`` header (default ``"at+jwt"``, RFC 9068 / RFC 8725 §3.11);
            ``None`` accepts any (``""`` is refused: it is no media type). Compared as a
            media type (RFC 6838 §4.2 names, no parameters): case-insensitively, and with
            ``application/`` taken as present when the value has no ``/`` (RFC 7515
            §4.1.9), so ``"at+jwt"`` accepts ``at+jwt`` and ``application/at+jwt``, the two
            spellings RFC 9068 §4 requires a resource server to accept.
        max_token_bytes: longer tokens are refused before parsing (default 8192).
        cache_size: verified-token LRU entries (default 10000; 0 disables caching).

    Raises:
        ConfigError: an issuer/audience that is empty or not a string, a ``typ`` that is
            neither a media type name nor ``None``, an unsupported or symmetric algorithm
            (``none``, ``HS256``...), or a value out of range (quoted).
    """

    issuer: str
    audience: str
    algorithms: tuple[str, ...] = ("ES256", "EdDSA")
    leeway_s: float = 30.0
    required_claims: tuple[str, ...] = ("iss", "sub", "aud", "exp", "iat", "jti")
    typ: str | None = "at+jwt"
    max_token_bytes: int = 8192
    cache_size: int = 10_000

    def __post_init__(self) -> None:
        for name in ("issuer", "audience"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
        if self.typ is not None and (
            not isinstance(self.typ, str) or not self.typ.isascii()
            or not _MEDIA_TYPE.fullmatch(_media_type(self.typ))
        ):
            raise ConfigError(f"typ must be a media type such as 'at+jwt' (None: any), "
                              f"got {self.typ!r}")
        object.__setattr__(self, "algorithms", check_algorithms("algorithms", self.algorithms))
        object.__setattr__(self, "required_claims",
                           check_strings("required_claims", self.required_claims))
        check_number("leeway_s", self.leeway_s, high=300.0)
        check_int("max_token_bytes", self.max_token_bytes, low=256, high=1 << 20)
        check_int("cache_size", self.cache_size, low=0)


_NAME = r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}"
_MEDIA_TYPE = re.compile(f"{_NAME}/{_NAME}")
"""``type/subtype`` of RFC 6838 §4.2 restricted names (lower-cased; no parameters)."""


def _media_type(typ: str) -> str:
    """``typ`` as a full, lower-case media type: RFC 7515 §4.1.9 has a recipient treat a
    value without ``/`` as if ``application/`` were prepended; media types are
    case-insensitive (RFC 2045 §5.1)."""
    typ = typ.lower()
    return typ if "/" in typ else "application/" + typ


_MALFORMED = "malformed token"
_MAX_KEYS_TRIED = 8
"""Keys of one ``kid`` a token's signature is tried with at most (a key source's
``get_key_refreshed``)."""
_BAD_SIG = "token signature or key not accepted"


class TokenVerifier:
    """Verifies one token against one key, synchronously, with an injectable clock.

    The pure core of :class:`JWTVerifier`; every failure raises :class:`InvalidTokenError`
    (``UNAUTHENTICATED``) whose message is a category, never the token or a key.

    Args:
        options: :class:`VerifierOptions`.
        clock: wall clock in epoch seconds (default ``time.time``).

    Raises:
        ConfigError: ``options`` is no :class:`VerifierOptions` (an
            :class:`IssuerOptions`) or ``clock`` is not callable (``time.time()``: its
            reading); quoted.
    """

    __slots__ = ("_algs", "_decoder", "_options", "_typ", "clock")

    def __init__(self, options: VerifierOptions, *, clock: Clock = time.time) -> None:
        check_instance("options", options, VerifierOptions, optional=False)
        check_clock("clock", clock, wall=True)
        self._options = options
        self._algs = frozenset(options.algorithms)
        self._typ = None if options.typ is None else _media_type(options.typ)
        self._decoder = jwt.PyJWT()
        self.clock = clock

    @property
    def options(self) -> VerifierOptions:
        """The options this verifier enforces."""
        return self._options

    def check_size(self, token: str) -> None:
        """Refuse empty tokens and tokens over ``max_token_bytes``.

        Raises:
            InvalidTokenError: ``"malformed token"`` (empty, or a character outside ASCII:
                a compact JWS is base64url and dots, RFC 7515 §7.1; a lone surrogate, as
                ``surrogateescape`` decoding leaves one, would not even encode) /
                ``"token too large"``.
        """
        if not token or not token.isascii():  # isascii: O(1), a flag of the str
            raise InvalidTokenError(_MALFORMED)
        if len(token) > self._options.max_token_bytes:
            raise InvalidTokenError("token too large")

    def header(self, token: str) -> tuple[str, str]:
        """``(alg, kid)`` from the token's header, checked against the options.

        Raises:
            InvalidTokenError: too large, not three base64url parts, bad JSON (``NaN``,
                ``Infinity`` or ``1e400`` anywhere in it too: RFC 7519 §7.2), ``alg`` not
                in the configured list (incl. ``none`` and ``HS*``), a ``typ`` that is not
                the configured media type (``application/`` optional, any case), or a
                missing/oversized ``kid``.
        """
        self.check_size(token)
        if token.count(".") != 2:
            raise InvalidTokenError(_MALFORMED)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidTokenError(_MALFORMED) from None
        if not _valid_json(header):  # NaN, Infinity, 1e400: no JSON (RFC 7519 §7.2)
            raise InvalidTokenError(_MALFORMED)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algs:
            raise InvalidTokenError("token algorithm not accepted")
        typ = self._typ
        if typ is not None and _media_type(str(header.get("typ", ""))) != typ:
            raise InvalidTokenError("token type not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise InvalidTokenError("token has no usable key id")
        if "crit" in header:
            raise InvalidTokenError("token has unsupported critical headers")
        return alg, kid

    def verify(self, token: str, alg: str, key: VerificationKey) -> Claims:
        """Verify ``token``'s signature with ``key`` and validate its claims.

        Args:
            token: the compact JWS.
            alg: its header ``alg`` as returned by :meth:`header`.
            key: the key found for its ``kid``; it must be for ``alg``.

        Returns:
            The :class:`Claims`.

        Raises:
            InvalidTokenError: key/algorithm mismatch, a private key object (a key
                source must give public keys) or an RSA key under
                :data:`MIN_RSA_KEY_BITS` (2048) bits (RFC 7518 §3.3; ``"token signature or
                key not accepted"``, as for a bad signature), wrong ``iss`` or ``aud``,
                missing required claim, expired (``exp``), not yet valid (``nbf``), issued
                in the future (``iat``), or malformed claims (``NaN``, ``Infinity`` or
                ``1e400`` in any claim: no JSON, RFC 7519 §7.2). A required claim whose
                value is the empty string (``"sub": ""``) counts as missing.
        """
        opts = self._options
        if key.algorithm != alg or alg not in self._algs or (
            alg[0] != "E" and rsa_key_too_small(key.key)  # RS*/PS* (not ES*, EdDSA)
        ) or isinstance(key.key, _PRIVATE_KEY_TYPES):  # pyjwt: AttributeError for RSA
            raise InvalidTokenError(_BAD_SIG)
        try:
            payload = self._decoder.decode(
                token, key.key, algorithms=[alg], audience=opts.audience, issuer=opts.issuer,
                # enforce_minimum_key_length: pyjwt's own check, for a key given in another
                # form (PEM text) by a pyjwt that has it; it raises InvalidKeyError
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                         "enforce_minimum_key_length": True,
                         "require": list(opts.required_claims)},
            )
        except jwt.InvalidSignatureError:
            raise InvalidTokenError(_BAD_SIG) from None
        except jwt.InvalidAudienceError:
            raise InvalidTokenError("token audience not accepted") from None
        except jwt.InvalidIssuerError:
            raise InvalidTokenError("token issuer not accepted") from None
        except jwt.MissingRequiredClaimError:
            raise InvalidTokenError("token lacks a required claim") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise InvalidTokenError(_MALFORMED) from None
        if not _valid_json(payload):  # NaN, Infinity, 1e400 in any claim (RFC 7519 §7.2)
            raise InvalidTokenError(_MALFORMED)
        if payload.get("iss") != opts.issuer:
            # compared here too: pyjwt 2.10.0 (which pyjwt>=2.9 admits) took any part of
            # the issuer string (CVE-2024-53861: ``iss in issuer``)
            raise InvalidTokenError("token issuer not accepted")
        for name in opts.required_claims:  # pyjwt checks presence only: "sub": "" passed
            if payload.get(name) == "":
                raise InvalidTokenError("token lacks a required claim")
        return self.claims_from(payload)

    def claims_from(self, payload: Mapping[str, Any]) -> Claims:
        """Validate the time claims against the clock and build :class:`Claims`.

        Raises:
            InvalidTokenError: ``"token expired"``, ``"token not yet valid"`` or
                ``"malformed token"`` (a claim of the wrong type, or an ``exp``/``nbf``/
                ``iat`` that is not a finite number a double can hold: NaN, +/-Infinity,
                ``1e400``, ``10**400``; RFC 7519 §2 NumericDate, RFC 8259 §6).
        """
        now = self.clock()
        leeway = self._options.leeway_s
        exp: Any = payload.get("exp")
        nbf = payload.get("nbf")
        iat = payload.get("iat")
        sub = payload.get("sub", "")
        aud = payload.get("aud", ())
        scope = payload.get("scope", "")
        jti = payload.get("jti")
        if not _num(exp) or (nbf is not None and not _num(nbf)) or (
            iat is not None and not _num(iat)
        ) or not isinstance(sub, str) or not isinstance(scope, str) or (
            jti is not None and not isinstance(jti, str)
        ):
            raise InvalidTokenError(_MALFORMED)
        if now >= exp + leeway:
            raise InvalidTokenError("token expired")
        if nbf is not None and now + leeway < nbf:
            raise InvalidTokenError("token not yet valid")
        if iat is not None and now + leeway < iat:
            raise InvalidTokenError("token not yet valid")
        auds = (aud,) if isinstance(aud, str) else tuple(str(a) for a in aud)
        return Claims(
            subject=sub, issuer=str(payload.get("iss", "")), audience=auds,
            # RFC 6749 §3.3: scopes are delimited by SP (%x20) alone; a tab is no delimiter
            scopes=frozenset(scope.split(" ")) - {""}, expires_at=float(exp),
            issued_at=None if iat is None else float(iat),
            not_before=None if nbf is None else float(nbf), token_id=jti,
            raw=MappingProxyType(dict(payload)),
        )


def _valid_json(value: object) -> bool:
    """Whether ``value`` (a JOSE header or claims set as Python's json read it) was
    valid JSON (RFC 8259 §6): Python's parser also reads ``NaN``, ``Infinity`` and
    numbers beyond a double (``1e400``, read as infinity), which RFC 7519 §7.2 has a
    verifier refuse ("a completely valid JSON object") and other JOSE libraries do."""
    try:
        json.dumps(value, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return False
    return True


def _num(v: object) -> bool:
    """Whether ``v`` is a usable NumericDate (RFC 7519 §2): a JSON number that is finite as
    a double. Refused: booleans, strings, NaN and +/-Infinity (not JSON, RFC 8259 §6, but
    Python's parser reads them), ``1e400`` (parsed as inf) and integers beyond a double's
    range (``10**400``: comparing one with a float raises OverflowError)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a double
        return False


class VerifiedTokenCache:
    """A bounded LRU of verified tokens, keyed by SHA-256 of the token, until ``exp``.

    Lets repeated calls with one token skip the signature check. Entries leave when the
    cache is full (least recently used first) or when ``exp + leeway_s`` passes, or the
    ``max_age_s`` given to :meth:`put` (whichever comes first).

    Args:
        max_entries: capacity, an int >= 0 (0 disables the cache).
        leeway_s: the verifier's leeway, so cache hits expire exactly as fresh checks
            would: seconds, 0..300 as :class:`VerifierOptions` takes it (default 0).
        clock: wall clock in epoch seconds (default ``time.time``).

    Raises:
        ConfigError: ``max_entries`` no int >= 0, ``leeway_s`` no number in 0..300 (NaN
            would keep every token a hit past its expiry), or ``clock`` not callable
            (``time.time()``: its reading); quoted.
    """

    __slots__ = ("_data", "_leeway", "clock", "max_entries")

    def __init__(self, max_entries: int, *, leeway_s: float = 0.0,
                 clock: Clock = time.time) -> None:
        check_int("max_entries", max_entries, low=0)
        check_number("leeway_s", leeway_s, high=300.0)
        check_clock("clock", clock, wall=True)
        self.max_entries = max_entries
        self._leeway = leeway_s
        self.clock = clock
        # key -> (deadline on ``clock``, claims): the deadline computed once, at put
        self._data: OrderedDict[bytes, tuple[float, Claims]] = OrderedDict()

    @staticmethod
    def key(token: str) -> bytes:
        """The cache key of ``token`` (the token itself is never stored)."""
        return _sha256(token.encode()).digest()

    def get(self, key: bytes) -> Claims | None:
        """The cached claims, or ``None`` (also when expired, which evicts the entry)."""
        entry = self._data.get(key)
        if entry is None:
            return None
        if self.clock() >= entry[0]:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return entry[1]

    def clear(self) -> None:
        """Forget every entry (the verifier's key source changed its keys)."""
        self._data.clear()

    def put(self, key: bytes, claims: Claims, *, max_age_s: float | None = None) -> None:
        """Remember verified ``claims`` under ``key``, evicting the LRU entry when full,
        until ``exp + leeway_s`` or, when given, ``max_age_s`` seconds from now if that
        comes first (``None``: no such bound)."""
        if self.max_entries <= 0:
            return
        deadline = claims.expires_at + self._leeway
        if max_age_s is not None:
            deadline = min(deadline, self.clock() + max_age_s)
        self._data[key] = (deadline, claims)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class JWTVerifier:
    """Verifies bearer tokens: cache, header checks, key lookup, signature, claims.

    Args:
        options: :class:`VerifierOptions`.
        keys: a :class:`KeySource` (a :class:`KeySet`, or a
            :class:`~meshkit.auth.JWKSClient` for remote JWKS).
        clock: wall clock in epoch seconds (default ``time.time``).

    :meth:`verify` raises :class:`InvalidTokenError` (``UNAUTHENTICATED``) on any failure,
    including an unknown ``kid`` after the key source's (rate-limited) refresh, and a
    signature the ``kid``'s key does not verify after the source, asked again
    (``get_key_refreshed``: a :class:`~meshkit.auth.JWKSClient` gives the other keys it
    holds for the ``kid`` and algorithm, then refreshes, rate-limited), gave no other key
    for it (each key tried once, at most 8 a token). Such a token (a forged one naming a
    known ``kid``) waits for a refresh it makes or joins: at most the client's
    ``fetch_timeout_s``; a token the first key found for its ``kid`` verifies never waits.

    Raises:
        ConfigError: ``options`` is no :class:`VerifierOptions`, or ``keys`` (also when
            assigned later) has no ``get_key`` method: a URL string (wrap it in a
            :class:`~meshkit.auth.JWKSClient`), ``None``, a class (quoted); or is a
            :class:`~meshkit.auth.JWKSClient` whose ``algorithms`` share none with
            ``options.algorithms`` (every token would be refused); or ``clock`` is not
            callable (``time.time()``: its reading).

    Verified tokens are cached until their ``exp``, but no longer than the key source's
    keys stay the same: when its ``version`` changes (a key added or removed: a rotation,
    a JWKS refresh that brought other keys) or the source is replaced, the cache is
    cleared, so a token whose key was removed is refused on its next call (checked per
    call: one attribute read and compare). A source with a ``refresh_interval_s`` (a
    :class:`~meshkit.auth.JWKSClient`) learns of a change only when asked for a key, which
    a cache hit does not do: a token is then served from the cache for at most that many
    seconds before it is verified again (asking the source, which refreshes a stale copy),
    so a key removed from a JWKS stops its tokens within about two intervals. A token
    whose verification overlapped a change of the keys is answered, but cached only if
    the source, asked again, still gives the key it was checked with (that key may be an
    old one, read before the change).
    """

    __slots__ = ("_cache", "_core", "_find", "_keys", "_refetch", "_version")

    def __init__(self, options: VerifierOptions, keys: KeySource, *,
                 clock: Clock = time.time) -> None:
        check_instance("options", options, VerifierOptions, optional=False)
        self._core = TokenVerifier(options, clock=clock)
        self._cache = VerifiedTokenCache(options.cache_size, leeway_s=options.leeway_s,
                                         clock=clock)
        self.keys = keys

    @property
    def keys(self) -> KeySource:
        """The :class:`KeySource` keys are looked up in (may be replaced)."""
        return self._keys

    @keys.setter
    def keys(self, keys: KeySource) -> None:
        # else every call fails later, UNAUTHENTICATED 'token could not be verified'
        if isinstance(keys, type) or not callable(getattr(keys, "get_key", None)):
            raise ConfigError("keys must be a key source (a KeySet, a JWKSClient or an "
                              f"object with an async get_key(kid)), got {keys!r}")
        offered = getattr(keys, "algorithms", None)  # a JWKSClient's (its options')
        if isinstance(offered, frozenset) and offered.isdisjoint(self._core.options.algorithms):
            # no key it keeps could verify a token this verifier takes: all refused
            raise ConfigError(
                f"the key source keeps keys of {sorted(offered)} only, and this verifier "
                f"takes tokens of {sorted(self._core.options.algorithms)} only: every token "
                "would be refused; give them an algorithm in common")
        self._keys = keys
        # tokens the previous source's keys verified are not this one's to accept
        self._version: object = getattr(keys, "version", None)
        self._cache.clear()
        # resolved once, not per call: the (kid, alg) lookup when the source has one
        self._find: Callable[[str, str], Awaitable[VerificationKey | None]] | None = (
            getattr(keys, "get_key_for", None))
        # asked again when a token's signature fails: a key replaced under its kid
        self._refetch: Callable[[str, str, tuple[VerificationKey, ...]],
                                Awaitable[VerificationKey | None]] | None = (
            getattr(keys, "get_key_refreshed", None))

    @property
    def options(self) -> VerifierOptions:
        """The options this verifier enforces."""
        return self._core.options

    @property
    def cache(self) -> VerifiedTokenCache:
        """The verified-token cache (for statistics and tests)."""
        return self._cache

    def cached(self, token: str) -> Claims | None:
        """The claims of ``token`` when it was verified before and has not expired (the
        per-call path of a returning caller, without a coroutine), else ``None``: then
        :meth:`verify` it."""
        if not token or len(token) > self._core._options.max_token_bytes or (
                not token.isascii()):  # no JWS: a lone surrogate would not even encode
            return None  # verify() says why
        if getattr(self._keys, "version", None) != self._version:
            self._keys_changed()
            return None
        return self._cache.get(_sha256(token.encode()).digest())  # VerifiedTokenCache.key

    def _keys_changed(self) -> None:
        """The key source's keys changed: forget what the old keys verified."""
        self._version = getattr(self._keys, "version", None)
        self._cache.clear()

    async def verify(self, token: str) -> Claims:
        """Verify ``token`` and return its claims (cached until ``exp``).

        Raises:
            InvalidTokenError: the token is refused (``UNAUTHENTICATED``).
        """
        self._core.check_size(token)
        keys = self._keys
        version = getattr(keys, "version", None)
        if version != self._version:
            self._keys_changed()
        ck = self._cache.key(token)
        hit = self._cache.get(ck)
        if hit is not None:
            return hit
        alg, kid = self._core.header(token)
        find = self._find
        key = await (keys.get_key(kid) if find is None else find(kid, alg))
        if key is None:
            raise InvalidTokenError("token key id unknown")
        tried = [key]
        while True:
            try:
                claims = self._core.verify(token, alg, key)
                break
            except InvalidTokenError as exc:
                # a key replaced under its kid, or another key published under it: the
                # source (a JWKSClient) gives the next one, or its (rate-limited) refresh
                # brings the new one, which no unknown kid would ask for. Each key once,
                # whatever order a refresh meanwhile lists them in.
                refetch = self._refetch
                if (refetch is None or exc.details() != _BAD_SIG
                        or len(tried) >= _MAX_KEYS_TRIED):
                    raise
                fresh = await refetch(kid, alg, tuple(tried))
                if fresh is None or fresh in tried:
                    raise
                tried.append(fresh)
                key = fresh
        # Cached only against the keys ``key`` is one of: after a change meanwhile (a
        # rotation, a fetch of this or another thread) ``key`` may be an old key read
        # before an await, and caching its token would keep a removed key's token
        # accepted until its exp; so the source is asked again (rare: only calls that
        # overlap a change, e.g. the one whose unknown kid made the first fetch).
        if self._keys is not keys:
            return claims  # the source was replaced meanwhile (its setter cleared the cache)
        now = getattr(keys, "version", None)
        if now != version:
            again = await (keys.get_key(kid) if find is None else find(kid, alg))
            if again != key or self._keys is not keys or getattr(keys, "version", None) != now:
                return claims  # answered (valid when the call began), not remembered
            if now != self._version:
                self._keys_changed()
        self._cache.put(ck, claims, max_age_s=getattr(keys, "refresh_interval_s", None))
        return claims


# -- the interceptor's configuration ------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class JWTAuthOptions:
    """Which methods need a token and which scopes, for
    :class:`~meshkit.auth.JWTAuthInterceptor`.

    Methods are named by method patterns (:mod:`meshkit._methods`): full
    ``"/ecom.v1.OrderService/PlaceOrder"``, slash-less ``"ecom.v1.OrderService/PlaceOrder"``,
    short ``"OrderService/PlaceOrder"``, or globs such as ``"/ecom.v1.OrderService/*"``,
    ``"*/Get*"`` and ``"*"``. Precedence is MethodMatcher's: an exact pattern wins, then the
    longest glob (most literal characters; ties: fewer ``*``, then code-point order), then
    the default. "Exact method over its service key ``/pkg.Svc/*`` over the default" is the
    special case of that rule. Both answers are cached per method (one dict lookup a call).

    Args:
        public_methods: patterns of methods callable without a token (default none). A
            token that *is* sent to a public method is still verified (invalid →
            ``UNAUTHENTICATED``) so handlers can see its claims, but no scope is required
            of it (a caller could drop the token).
        method_scopes: ``{method pattern: scopes}``, the scopes a token must all carry,
            e.g. ``{"/ecom.v1.OrderService/PlaceOrder": ("orders:write",),
            "/ecom.v1.OrderService/*": ("orders:read",)}``; kept as a read-only copy
            (scopes as tuples), so changing the given mapping later changes nothing.
        default_scopes: scopes for methods no ``method_scopes`` pattern matches (default
            none).
        metadata_key: the metadata key carrying ``Bearer <token>`` (default
            ``"authorization"``, RFC 6750 §2.1); a text key of the characters gRPC allows
            (see :func:`meshkit._config.check_metadata_key`).

    Raises:
        ConfigError: a bad method pattern (see :class:`~meshkit._methods.MethodMatcher`),
            a pattern both in ``public_methods`` and in ``method_scopes`` with scopes (a
            public method's scopes are never checked; a scoped pattern as specific as a
            public one matching a method a server serves fails its start, see
            :meth:`~meshkit.auth.JWTAuthInterceptor.check_methods`),
            ``public_methods`` or scopes given as one string or not a collection of
            strings (``None``), ``method_scopes`` not a mapping, a scope that is no RFC 6749
            §3.3 scope token (a space, tab, control or non-ASCII character, ``"`` or
            ``\\``; see :func:`check_scopes`), or a bad metadata key (quoted).
    """

    public_methods: tuple[str, ...] = ()
    method_scopes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default_scopes: tuple[str, ...] = ()
    metadata_key: str = "authorization"
    _public: MethodMatcher[bool] = field(init=False, repr=False, compare=False,
                                         default_factory=lambda: MethodMatcher({}, False))
    _scopes: MethodMatcher[frozenset[str]] = field(
        init=False, repr=False, compare=False,
        default_factory=lambda: MethodMatcher({}, frozenset()))

    def __post_init__(self) -> None:
        object.__setattr__(self, "public_methods",
                           check_strings("public_methods", self.public_methods))
        public = MethodMatcher.of(self.public_methods, where="public_methods")
        if not isinstance(self.method_scopes, Mapping):
            raise ConfigError("method_scopes must be a mapping of method patterns to scopes, "
                              f"got {self.method_scopes!r}")
        # check_scopes before tuple(): tuple("orders.read") would be its characters
        method_scopes = {m: check_scopes("method_scopes", v)
                         for m, v in self.method_scopes.items()}
        object.__setattr__(self, "default_scopes",
                           check_scopes("default_scopes", self.default_scopes))
        check_metadata_key("metadata_key", self.metadata_key)
        # a copy: the caller's dict changed later must not change these frozen options
        # (nor part them from the matcher below, compiled now)
        object.__setattr__(self, "method_scopes", FrozenMap(method_scopes))
        both = {normalized(p) for p in self.public_methods}.intersection(
            normalized(m) for m, v in method_scopes.items() if v)
        if both:  # public methods' scopes are never checked (see JWTAuthInterceptor)
            raise ConfigError(
                f"JWTAuthOptions: {sorted(both)} both public (public_methods) and scoped "
                "(method_scopes): a public method's scopes are not checked (a caller could "
                "drop the token); drop one of the two")
        object.__setattr__(self, "_public", public)
        object.__setattr__(self, "_scopes", MethodMatcher(
            {m: frozenset(s) for m, s in method_scopes.items()},
            frozenset(self.default_scopes), where="method_scopes"))

    def is_public(self, method: str) -> bool:
        """Whether full method name ``method`` may be called without a token."""
        return self._public.lookup(method)

    def required_scopes(self, method: str) -> frozenset[str]:
        """The scopes a token calling full method name ``method`` must carry."""
        return self._scopes.lookup(method)


def extract_bearer(
    metadata: Iterable[tuple[str, str | bytes]] | None, key: str = "authorization"
) -> str | None:
    """The bearer token in ``metadata`` (RFC 6750 §2.1), or ``None`` if there is none.

    Args:
        metadata: invocation metadata as ``(key, value)`` pairs.
        key: the metadata key (default ``"authorization"``).

    Raises:
        UnauthenticatedError: the key appears more than once, is binary, or uses another
            scheme than ``Bearer`` (e.g. ``Basic``); the value is never quoted.
    """
    found: str | None = None
    for k, v in metadata or ():
        if k != key:
            continue
        if found is not None or not isinstance(v, str):
            raise UnauthenticatedError("malformed authorization metadata")
        scheme, _, token = v.partition(" ")
        if scheme.lower() != "bearer":
            raise UnauthenticatedError("authorization scheme must be Bearer")
        found = token.strip()
        if not found:
            raise UnauthenticatedError("malformed authorization metadata")
    return found
