"""Bearer-token propagation on outgoing calls made while handling a request."""

from __future__ import annotations

from typing import Any

from meshkit._config import check_bool, check_metadata_key, check_strings
from meshkit.auth._context import _token
from meshkit.interceptors import ClientCallDetails, ClientInterceptor, StreamProceed, UnaryProceed

__all__ = ["TokenForwarder"]


class TokenForwarder(ClientInterceptor):
    """Forward the verified bearer token of the request being handled on outgoing calls.

    A per-call :class:`meshkit.ClientInterceptor` for ``DialOptions.interceptors``. When a
    call is made inside a handler whose caller's token
    :class:`~meshkit.auth.JWTAuthInterceptor` verified, it adds
    ``authorization: Bearer <token>`` unless the call already carries that key or, with
    the default ``metadata_key``, brings its own per-call credentials
    (``credentials=grpc.access_token_call_credentials(...)`` or any
    ``grpc.CallCredentials``: they add their own ``authorization``, and a second one
    beside it would have the next server refuse the call ``UNAUTHENTICATED``, a repeated
    header; the call's own credentials are then the ones sent). With a ``metadata_key``
    of its own the token is added beside the call's credentials. Off unless installed;
    outside a handler it does nothing.

    Args:
        services: dialed service names the token may be sent to (default ``None``: any
            service of the channels it is installed on). Tokens are credentials: only
            forward to services that verify them.
        metadata_key: the metadata key (default ``"authorization"``, RFC 6750 §2.1).
        allow_plaintext: let it be installed on a plaintext channel
            (``DialOptions(insecure=True)``), where the token goes out in the clear
            (default ``False``: such ``DialOptions`` are a ``ConfigError``, as grpc-go's
            token credentials require transport security); for loopback demos and tests.

    Raises:
        ConfigError: a bad metadata key (not a lowercase text key of the characters gRPC
            allows, ``0-9 a-z _ - .``: no ``-bin`` binary key, no ``:`` pseudo-header, as
            ``JWTAuthOptions.metadata_key``), or ``services`` given as one string, not
            a collection, or holding something other than a string (``b"userd"``, which
            would match no service; quoted); ``allow_plaintext`` not ``True`` or
            ``False``.
    """

    __slots__ = ("_key", "_plaintext", "_services", "_yields")

    def __init__(self, *, services: tuple[str, ...] | None = None,
                 metadata_key: str = "authorization", allow_plaintext: bool = False) -> None:
        check_metadata_key("metadata_key", metadata_key)
        check_bool("allow_plaintext", allow_plaintext)
        self._plaintext = allow_plaintext
        self._services = None if services is None else frozenset(
            check_strings("services", services))
        self._key = metadata_key
        # per-call credentials write authorization: the forwarded token yields to them
        self._yields = metadata_key == "authorization"

    @property
    def writes_authorization(self) -> bool:
        """Whether the token goes out as ``authorization`` (the default key), the header
        call credentials write too."""
        return self._yields

    @property
    def allow_plaintext(self) -> bool:
        """Whether it may be installed on a plaintext (``insecure=True``) channel."""
        return self._plaintext

    def _stamp(self, details: ClientCallDetails) -> None:
        token = _token.get()
        if token is None or (details.credentials is not None and self._yields):
            return
        if self._services is not None and details.service not in self._services:
            return
        key = self._key
        for k, _v in details.metadata:
            if k == key:
                return
        details.metadata.append((key, "Bearer " + token))

    async def intercept_unary(
        self, details: ClientCallDetails, request: Any, proceed: UnaryProceed
    ) -> Any:
        """Add the token, then make the call."""
        self._stamp(details)
        return await proceed(details, request)

    async def intercept_stream(
        self, details: ClientCallDetails, request: Any, proceed: StreamProceed
    ) -> Any:
        """Add the token, then open the call."""
        self._stamp(details)
        return await proceed(details, request)
