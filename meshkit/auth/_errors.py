"""The auth part of meshkit's error tree (see :mod:`meshkit.errors`).

====================================  ==================================================
error                                 where / gRPC status
====================================  ==================================================
:class:`AuthError`                    base of the non-RPC auth errors below
:class:`CertificateError`             bad, missing or mismatched certificate material
                                      (also a :class:`~meshkit.errors.ConfigError`)
:class:`KeyExistsError`               refusing to overwrite a key or certificate file
:class:`JWKSError`                    a JWKS document could not be fetched or parsed
:class:`UnauthenticatedError`         ``UNAUTHENTICATED`` (no or bad credentials)
:class:`InvalidTokenError`            ``UNAUTHENTICATED`` (a bearer token failed checks)
:class:`PermissionDeniedError`        ``PERMISSION_DENIED`` (known caller, not allowed)
====================================  ==================================================

Messages never contain a token, a key, a password or another caller's identity.
"""

from __future__ import annotations

import grpc

from meshkit.errors import ConfigError, MeshError, MeshRpcError

__all__ = [
    "AuthError",
    "CertificateError",
    "InvalidTokenError",
    "JWKSError",
    "KeyExistsError",
    "PermissionDeniedError",
    "UnauthenticatedError",
]


class AuthError(MeshError):
    """Base class of meshkit's non-RPC authentication and certificate errors."""


class CertificateError(AuthError, ConfigError):
    """Certificate or key material is missing, unparsable, expired or inconsistent.

    Raised when options are built or files are loaded (a :class:`ConfigError`, so it is
    also a ``ValueError``); never on the wire. The message names the file, not its content.
    """


class KeyExistsError(AuthError, FileExistsError):
    """A private key or certificate already exists and overwriting was not asked for."""


class JWKSError(AuthError):
    """A JWKS document (RFC 7517) could not be fetched, was too large or was malformed."""


class UnauthenticatedError(MeshRpcError):
    """The caller presented no credentials or bad ones: status ``UNAUTHENTICATED``.

    Args:
        details: a short, secret-free reason, e.g. ``"missing bearer token"``.
    """

    def __init__(self, details: str = "unauthenticated") -> None:
        super().__init__(grpc.StatusCode.UNAUTHENTICATED, details)


class InvalidTokenError(UnauthenticatedError):
    """A bearer token failed verification (RFC 7519 / RFC 8725): ``UNAUTHENTICATED``.

    Args:
        details: the category of failure (``"token expired"``, ``"malformed token"``...),
            never the token or the key.
    """


class PermissionDeniedError(MeshRpcError):
    """The caller is known but not allowed to make this call: ``PERMISSION_DENIED``.

    Args:
        details: a message naming the method at most, never the policy or other identities.
    """

    def __init__(self, details: str = "permission denied") -> None:
        super().__init__(grpc.StatusCode.PERMISSION_DENIED, details)
