"""Password hashing with scrypt from the standard library.

A hash is stored as one string, ``scrypt$<n>$<r>$<p>$<salt>$<hash>`` with the
salt and hash in unpadded URL-safe base64, so the cost parameters can be raised
later without breaking existing hashes. Verification compares in constant time.
Passwords are hashed in Unicode NFKC form (NIST SP 800-63B 5.1.1.2), so the same
password typed composed (``ä``, U+00E4) or decomposed (``a`` + U+0308) by another
keyboard or OS is the same password.
Both functions are CPU-bound (tens of milliseconds): async code should call
them through :func:`asyncio.to_thread`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
import unicodedata

SCHEME = "scrypt"
N, R, P = 2**14, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32
MIN_LENGTH = 8
MAX_LENGTH = 1024
_MAXMEM = 64 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _kdf(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=dklen
    )


def normalize_password(password: str) -> str:
    """The form a password is hashed in: Unicode NFKC."""
    return unicodedata.normalize("NFKC", password)


def hash_password(password: str) -> str:
    """Hash ``password`` (its :func:`normalize_password` form) with a fresh random
    16-byte salt; return the encoded string.

    The caller validates the length (:data:`MIN_LENGTH`..:data:`MAX_LENGTH`
    characters) first; this function hashes whatever it is given.
    """
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _kdf(normalize_password(password), salt, N, R, P, KEY_BYTES)
    return f"{SCHEME}${N}${R}${P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Return whether ``password`` matches ``encoded`` (from :func:`hash_password`).

    The password's :func:`normalize_password` form is checked; when that is not the
    password as given, and does not match, the raw password is checked too (a hash
    made before passwords were normalised), so such a password costs two hashings.
    A malformed or unsupported ``encoded`` string gives False, never an error.
    """
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != SCHEME:
            return False
        expected = _unb64(digest)
        params = (_unb64(salt), int(n), int(r), int(p), len(expected))
        normalized = normalize_password(password)
        if hmac.compare_digest(_kdf(normalized, *params), expected):
            return True
        if normalized == password:
            return False
        actual = _kdf(password, *params)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


@functools.cache
def dummy_hash() -> str:
    """Return a hash of a random password, made once per process.

    Verify against it when the email is unknown, so that a failed login takes
    the same time whether or not the user exists.
    """
    return hash_password(secrets.token_urlsafe(16))


def verify_or_dummy(password: str, encoded: str | None) -> bool:
    """Verify like :func:`verify_password`; with no hash, burn the same time and return False.

    For logins: pass ``None`` when the email is unknown, so a failed login
    takes the same time whether or not the user exists.
    """
    if encoded is None:
        verify_password(password, dummy_hash())
        return False
    return verify_password(password, encoded)
