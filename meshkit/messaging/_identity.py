"""Workload identity on messages: the publisher signs, the consumer checks the mesh CA.

Why a signature and not NATS credentials derived from the mesh CA: NATS accounts and
users (NKeys, JWTs signed by an operator key) are a second PKI with its own keys, and a
NATS TLS client certificate proves the *connection*, not the message: once a message sits
in a stream and is redelivered to another consumer, or republished by a relay, nothing on
it says who wrote it. A per-message signature travels with the message through the stream,
the outbox and the dead-letter subject, and is checked against the same ``ca.pem`` that
gRPC peers are checked against (:class:`meshkit.auth.PeerVerifier`), so the mesh has one
root of trust. A dead letter is checked against the subject and event id it was first
published with (``Meshkit-Original-Subject``, ``Meshkit-Original-Msg-Id``, written by the
consumer that dead-lettered it): the signature then vouches for the payload, the original
subject and id, not for the dead-letter subject nor for who dead-lettered it (those
headers are not signed).

Headers written by :class:`MessageSigner` (all ASCII, no line breaks):

* ``Meshkit-Identity``: the publisher's SPIFFE ID (informational; the certificate decides);
* ``Meshkit-Cert``: the publisher's workload certificate, base64 DER (~600 bytes);
* ``Meshkit-Sent-At-Ms``: Unix milliseconds when the message was signed;
* ``Meshkit-Signature``: base64 ECDSA-P256-SHA256 over
  ``meshkit-msg-v1 \\n <Nats-Msg-Id> \\n <subject> \\n <sent-at-ms> \\n sha256(payload)``.

The signature binds the event id, the subject, the send time and the payload, so none
can be changed or moved to another subject. The certificate is checked at the signed send
time (``Meshkit-Sent-At-Ms``), not at the time of the check: a JetStream message is
legitimately consumed long after it was published (a consumer catching up after an
outage, a redelivery, a new durable reading a stream that keeps a day) and workload
certificates live 24 h, so checking them "now" would dead-letter validly signed events
once their signer's certificate expired. The send time is bounded instead: at most 60 s
in the future (clock skew), and at most ``max_message_age_s`` in the past (7 days by
default). That bound is the price of the rule: whoever steals a workload key can still
sign messages backdated into its certificate's validity period until
``max_message_age_s`` after the certificate expired (a stolen key of a live certificate
signs anything anyway until it expires). Replays are harmless because consumers are
idempotent by event id. Cost (measured on the 2-core VM): signing ~40 µs, checking ~90 µs
per message, the certificate chain check cached per certificate for send times within its
and its CA's validity periods.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshkit._config import check_number
from meshkit.auth import CertificateError, IdentityMatcher, PeerIdentity, PeerVerifier
from meshkit.auth._certs import load_certificate, load_private_key
from meshkit.errors import ConfigError, MeshError

__all__ = [
    "HDR_CERT",
    "HDR_IDENTITY",
    "HDR_SENT_AT_MS",
    "HDR_SIGNATURE",
    "MessageIdentityError",
    "MessageSigner",
    "MessageVerifier",
]

HDR_IDENTITY = "Meshkit-Identity"
HDR_CERT = "Meshkit-Cert"
HDR_SENT_AT_MS = "Meshkit-Sent-At-Ms"
HDR_SIGNATURE = "Meshkit-Signature"

_ECDSA = ec.ECDSA(hashes.SHA256())

#: How far a message's signed send time may be ahead of the verifier's clock (the
#: publisher's clock running ahead), seconds.
_FUTURE_SKEW_S = 60.0

#: :class:`MessageVerifier`'s default ``max_message_age_s``: 7 days, longer than a stream
#: usually keeps messages (ecom's keeps one day) plus a consumer's redeliveries.
_DEFAULT_MAX_MESSAGE_AGE_S = 7 * 24 * 3600.0


class MessageIdentityError(MeshError):
    """A message's publisher identity is missing, forged or not allowed; the message says
    which (never a key or certificate body)."""


def _signed_bytes(msg_id: str, subject: str, sent_at_ms: str, payload: bytes) -> bytes:
    digest = hashlib.sha256(payload).hexdigest()
    return f"meshkit-msg-v1\n{msg_id}\n{subject}\n{sent_at_ms}\n{digest}".encode()


class MessageSigner:
    """Signs outgoing messages with a workload's key (see the module docstring).

    Args:
        certificate: the workload certificate (issued by the mesh CA, one SPIFFE ID).
        key: its ECDSA private key.
        clock: wall clock, Unix seconds (default ``time.time``).

    Raises:
        ConfigError: the key does not belong to the certificate, or the certificate
            carries no workload SPIFFE ID.
    """

    __slots__ = ("_cert_b64", "_clock", "_key", "identity")

    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey, *,
                 clock: Callable[[], float] = time.time) -> None:
        pub = certificate.public_key()
        raw = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if pub.public_bytes(der, raw) != key.public_key().public_bytes(der, raw):
            raise ConfigError("the signing key does not belong to the certificate "
                              f"{certificate.subject.rfc4514_string()!r}")
        try:
            identity = PeerVerifier(None).verify(certificate)
        except CertificateError as exc:
            raise ConfigError(f"not a workload certificate: {exc}") from None
        self.identity: PeerIdentity = identity
        self._key = key
        self._clock = clock
        self._cert_b64 = base64.b64encode(certificate.public_bytes(der)).decode()

    @classmethod
    def from_files(cls, cert_file: str | os.PathLike[str],
                   key_file: str | os.PathLike[str]) -> MessageSigner:
        """A signer from a workload's PEM files (``<service>.pem``, ``<service>.key`` of
        ``meshkit certs issue``). Raises :class:`meshkit.auth.CertificateError` for an
        unreadable file and :class:`ConfigError` as the constructor."""
        return cls(load_certificate(cert_file), load_private_key(key_file))

    @classmethod
    def from_dir(cls, cert_dir: str | os.PathLike[str], service: str) -> MessageSigner:
        """A signer for ``service`` from a meshkit certs directory (``MESHKIT_CERT_DIR``)."""
        d = Path(cert_dir)
        return cls.from_files(d / f"{service}.pem", d / f"{service}.key")

    def sign(self, headers: dict[str, str], *, msg_id: str, subject: str,
             payload: bytes) -> None:
        """Add the identity headers for a message to ``headers`` (changed in place).
        ``msg_id`` must be the ``Nats-Msg-Id`` as it travels: nats-py trims header values
        and turns line breaks into spaces (:meth:`Publisher.publish
        <meshkit.messaging.Publisher.publish>` refuses an id it would change)."""
        sent = str(int(self._clock() * 1000))
        sig = self._key.sign(_signed_bytes(msg_id, subject, sent, payload), _ECDSA)
        headers[HDR_IDENTITY] = self.identity.spiffe_id
        headers[HDR_CERT] = self._cert_b64
        headers[HDR_SENT_AT_MS] = sent
        headers[HDR_SIGNATURE] = base64.b64encode(sig).decode()


@dataclass(frozen=True, slots=True)
class _Known:
    """A certificate verified for every send time in ``[valid_from_s, until_s)``: while
    it and the bundle CA that vouched for it are all valid (from the latest notBefore to
    past the earliest notAfter)."""

    identity: PeerIdentity
    public_key: ec.EllipticCurvePublicKey
    valid_from_s: float
    until_s: float


class MessageVerifier:
    """Checks the identity headers of incoming messages against the mesh CA.

    The certificate must pass :meth:`meshkit.auth.PeerVerifier.verify` (issued directly
    by a CA of ``ca_pem``, a workload) at the message's signed send time
    (``Meshkit-Sent-At-Ms``), not at the time of the check: a message signed while its
    publisher's certificate was valid stays verifiable after the certificate expired (a
    consumer catching up after an outage, a redelivery). The send time itself must be at
    most 60 s ahead of ``clock`` and at most
    ``max_message_age_s`` behind it. Verdicts are cached per certificate (bounded by
    ``max_entries``) for send times within the validity periods of the certificate and
    of the CA that vouched for it (the earliest notAfter of the two ends it).

    The trade-off: ``max_message_age_s`` is also how long after its certificate expired a
    stolen workload key can still sign messages that pass (backdated into the
    certificate's validity period). Keep it above the longest a stream keeps a message
    plus the consumer's redeliveries (or a longer outage you want consumers to catch up
    from), and no longer. Dead letters are verified by their original send time too: a
    consumer reprocessing dead letters older than the bound needs a verifier with a
    longer one (or ``None``).

    Args:
        ca_pem: the trust bundle (the mesh ``ca.pem``).
        allowed_publishers: identity patterns (``spiffe://<td>/svc/orderd``, ``*``
            wildcards as :class:`meshkit.auth.IdentityMatcher`), a tuple or list; empty
            (default) admits every verified workload.
        max_entries: certificate cache bound (default 256, >= 1).
        max_message_age_s: refuse a message signed longer ago than this, seconds
            (default 604800.0, 7 days; > 0, finite);
            ``None``: no bound (a stolen key then signs backdated messages for ever).
        clock: wall clock, Unix seconds (default ``time.time``).

    Raises:
        ConfigError: bad ``max_entries``, ``max_message_age_s`` or pattern, or
            ``allowed_publishers`` given as one string (values quoted);
            CertificateError: ``ca_pem`` has no certificate.
    """

    __slots__ = ("_allowed", "_cache", "_clock", "_max", "_max_age_s", "_verifier")

    def __init__(self, ca_pem: bytes, *, allowed_publishers: Sequence[str] = (),
                 max_entries: int = 256,
                 max_message_age_s: float | None = _DEFAULT_MAX_MESSAGE_AGE_S,
                 clock: Callable[[], float] = time.time) -> None:
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigError(f"max_entries must be an integer >= 1, got {max_entries!r}")
        if max_message_age_s is not None:
            check_number("max_message_age_s", max_message_age_s, low_open=True)
        self._max_age_s = max_message_age_s
        self._verifier = PeerVerifier(ca_pem, clock=clock)
        self._allowed = (IdentityMatcher(allowed_publishers, where="allowed_publishers",
                                         peers=True)
                         if allowed_publishers else None)
        self._cache: dict[str, _Known] = {}
        self._max = max_entries
        self._clock = clock

    @classmethod
    def from_file(cls, ca_file: str | os.PathLike[str], *,
                  allowed_publishers: Sequence[str] = (), max_entries: int = 256,
                  max_message_age_s: float | None = _DEFAULT_MAX_MESSAGE_AGE_S,
                  clock: Callable[[], float] = time.time) -> MessageVerifier:
        """A verifier over the CA bundle (PEM) in ``ca_file``; the keywords as the
        constructor's (spelled out so a type checker sees a misspelled one).

        Raises:
            OSError: ``ca_file`` cannot be read; the constructor's errors.
        """
        return cls(Path(ca_file).read_bytes(), allowed_publishers=allowed_publishers,
                   max_entries=max_entries, max_message_age_s=max_message_age_s,
                   clock=clock)

    def _known(self, cert_b64: str, at: float) -> _Known:
        """The certificate ``cert_b64``, verified at ``at`` (the send time), cached."""
        hit = self._cache.get(cert_b64)
        if hit is not None and hit.valid_from_s <= at < hit.until_s:
            return hit
        try:
            cert = x509.load_der_x509_certificate(base64.b64decode(cert_b64, validate=True))
        except (ValueError, binascii.Error):
            raise MessageIdentityError("unreadable publisher certificate") from None
        try:
            # the times the verdict holds for: the leaf's and its CA's periods, so a send
            # time past the CA's notAfter is refused by a warm cache as by a fresh one
            identity, since, until = self._verifier._verify_span(cert, at)
        except CertificateError as exc:
            raise MessageIdentityError(
                f"publisher certificate refused at the message's send time: {exc}") from None
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise MessageIdentityError("publisher certificate has no ECDSA key")
        known = _Known(identity, key, since, until)
        self._cache.pop(cert_b64, None)
        while len(self._cache) >= self._max:
            del self._cache[next(iter(self._cache))]
        self._cache[cert_b64] = known
        return known

    def verify(self, headers: Mapping[str, str] | None, *, msg_id: str, subject: str,
               payload: bytes) -> PeerIdentity:
        """The verified publisher of a message.

        Raises:
            MessageIdentityError: no or malformed identity headers, a send time more than
                60 s in the future or older than ``max_message_age_s``, a certificate the
                mesh CA does not vouch for at the send time, a signature that does not
                match the message id, subject, send time and payload, or a publisher not
                in ``allowed_publishers``.
        """
        h = headers or {}
        cert_b64, sig_b64, sent = h.get(HDR_CERT), h.get(HDR_SIGNATURE), h.get(HDR_SENT_AT_MS)
        if not cert_b64 or not sig_b64 or not sent:
            raise MessageIdentityError("message carries no publisher identity")
        if not (len(sent) <= 15 and sent.isascii() and sent.isdigit()):
            raise MessageIdentityError(f"malformed {HDR_SENT_AT_MS} header")
        sent_s = int(sent) / 1000
        now = self._clock()
        if sent_s > now + _FUTURE_SKEW_S:
            raise MessageIdentityError(
                f"message sent {sent_s - now:.0f} s in the future (more than "
                f"{_FUTURE_SKEW_S:.0f} s ahead of this clock)")
        if self._max_age_s is not None and now - sent_s > self._max_age_s:
            raise MessageIdentityError(
                f"message older than max_message_age_s ({self._max_age_s:.10g} s): "
                f"sent {now - sent_s:.0f} s ago")
        known = self._known(cert_b64, sent_s)
        try:
            sig = base64.b64decode(sig_b64, validate=True)
            known.public_key.verify(sig, _signed_bytes(msg_id, subject, sent, payload), _ECDSA)
        except (ValueError, binascii.Error, InvalidSignature):
            raise MessageIdentityError("message signature does not match") from None
        if self._allowed is not None and not self._allowed.matches(known.identity.spiffe_id):
            raise MessageIdentityError(
                f"publisher {known.identity.spiffe_id} is not allowed on {subject}")
        return known.identity
