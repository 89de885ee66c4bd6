"""Workload identity on messages: the publisher signs, the consumer checks the mesh CA.

Why a signature and not NATS credentials derived from the mesh CA: NATS accounts and
users (NKeys, JWTs signed by an operator key) are a second PKI with its own keys, and a
NATS TLS client certificate proves the *connection*, not the message: once a message sits
in a stream and is redelivered to another consumer, or republished by a relay, nothing on
it says who wrote it. A per-message signature travels with the message through the stream,
the outbox and the dead-letter subject, and is checked against the same ``ca.pem`` that
gRPC peers are checked against (:class:`meshkit.auth.PeerVerifier`), so the mesh has one
root of trust. A dead letter is checked, by a consumer that reads dead letters
(``ConsumerOptions(dead_letters=True)``), against the subject and event id it was first
published with (``Meshkit-Original-Subject``, ``Meshkit-Original-Msg-Id``, written by the
consumer that dead-lettered it): the signature then vouches for the payload, the original
subject and id, not for the dead-letter subject nor for who dead-lettered it (those
headers are not signed; any other consumer checks a message against the subject it came
on, so an event copied to another subject with them is refused).

Headers written by :class:`MessageSigner` (all ASCII, no line breaks):

* ``Meshkit-Identity``: the publisher's SPIFFE ID (informational; the certificate decides,
  and :class:`MessageVerifier` refuses a message whose header names another);
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
import datetime as dt
import hashlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshkit._config import check_int, check_number, check_path, refuse_str
from meshkit._outage import OutageLog
from meshkit.auth import CertificateError, IdentityMatcher, PeerIdentity, PeerVerifier
from meshkit.auth._certs import _named_trust_domain, load_certificates, load_private_key
from meshkit.auth._identity import foreign_pattern_domain, validate_trust_domain
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


#: How often a signer or verifier made from files looks at them for a renewal, seconds
#: (as :class:`~meshkit.auth.TLSOptions`' ``reload_interval_s``).
_DEFAULT_RELOAD_INTERVAL_S = 5.0

_log = structlog.get_logger("meshkit.messaging")

_Stamp = tuple[tuple[int, int, int], ...]
_L = TypeVar("_L")


class _Watched:
    """Files reloaded when they change (a renewed certificate, a rotated CA bundle): at
    most every ``interval_s`` seconds (monotonic) at a use, their inode, size and mtime
    (followed through the symlinks a Kubernetes Secret mount swaps) are compared with
    those last loaded. Made before the first load, so a change during it is seen."""

    __slots__ = ("_files", "_interval_s", "_next", "_stamp", "_warned", "_what")

    def __init__(self, files: tuple[Path, ...], interval_s: float, what: str) -> None:
        self._files = files
        self._interval_s = interval_s
        self._what = what
        self._stamp = self._now()
        self._next = time.monotonic() + interval_s
        self._warned: _Stamp | None = None

    def _now(self) -> _Stamp | None:
        try:
            stats = [os.stat(f) for f in self._files]
        except OSError:  # one missing a moment (being replaced)
            return None
        return tuple((st.st_ino, st.st_size, st.st_mtime_ns) for st in stats)

    def reload(self, load: Callable[[], _L]) -> _L | None:
        """``load()`` when a check is due and the files changed, else ``None``. A load
        that fails (a file half written, a certificate and key not matching yet) keeps
        the old one, is logged once per change (``<what> reload failed``, the error's
        type and message, never a key) and is tried again at the next check."""
        now = time.monotonic()
        if now < self._next:
            return None
        # no lock: two threads checking at once both load (harmless), and a lock held by
        # another thread at a fork would stop the child's reloads for good
        self._next = now + self._interval_s
        stamp = self._now()
        if stamp is None or stamp == self._stamp:
            return None
        try:
            fresh = load()
        except Exception as exc:  # keep what was loaded before
            if self._warned != stamp:
                self._warned = stamp
                _log.warning(f"{self._what} reload failed", file=str(self._files[0]),
                             error=f"{type(exc).__name__}: {exc}")
            return None
        self._stamp = stamp
        _log.info(f"{self._what} reloaded", file=str(self._files[0]))
        return fresh


def _check_reload_interval(value: object) -> float | None:
    if value is not None:
        check_number("reload_interval_s", value)
    return value  # type: ignore[return-value]


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
        ConfigError: the key is not an ECDSA key (RSA, Ed25519: consumers verify
            ECDSA-P256-SHA256), does not belong to the certificate, the certificate
            carries no workload SPIFFE ID, or ``clock`` is not callable (quoted).
    """

    __slots__ = ("_clock", "_state", "_valid", "_validity", "_watch", "identity")

    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey, *,
                 clock: Callable[[], float] = time.time) -> None:
        if not callable(clock):  # clock=time.time(): its value; sign() would raise per message
            raise ConfigError(f"clock must be a callable returning epoch seconds, such as "
                              f"time.time, got {clock!r}")
        if not isinstance(key, ec.EllipticCurvePrivateKey):  # sign() would raise per message
            kind = type(key).__name__.removeprefix("_").removesuffix("PrivateKey") or "other"
            raise ConfigError("message signing needs an ECDSA workload key (what "
                              f"consumers verify), got a {kind} key")
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
        self._clock = clock
        # key and certificate replaced together (a reload), never one without the other
        self._state = (key, base64.b64encode(certificate.public_bytes(der)).decode())
        # the certificate's validity period, epoch seconds (a reload's check)
        self._valid = (certificate.not_valid_before_utc.timestamp(),
                       certificate.not_valid_after_utc.timestamp())
        # signing with a certificate out of its period: logged as an outage
        self._validity = OutageLog(_log, "message signer certificate valid again")
        self._watch: tuple[_Watched, Callable[[], MessageSigner]] | None = None

    @classmethod
    def from_files(cls, cert_file: str | os.PathLike[str],
                   key_file: str | os.PathLike[str], *,
                   reload_interval_s: float | None = _DEFAULT_RELOAD_INTERVAL_S,
                   clock: Callable[[], float] = time.time) -> MessageSigner:
        """A signer from a workload's PEM files (``<service>.pem``, ``<service>.key`` of
        ``meshkit certs issue``) that takes a renewed pair: at most every
        ``reload_interval_s`` seconds (default 5, as :class:`~meshkit.auth.TLSOptions`;
        >= 0), a :meth:`sign` compares the files' inode, size and mtime (through the
        symlinks a Kubernetes Secret mount swaps) with those loaded and loads the pair
        again when they changed. A pair that does not load (a file missing, a certificate
        and key written one after the other that do not match yet) keeps the old one,
        logged once (``message signer reload failed``) and tried again at the next check.
        So does a pair no consumer would take, as the TLS reloaders judge a renewal: a
        certificate expired or not valid yet on ``clock`` (a stale Secret restored, an
        issuer's clock ahead: every event signed with it would be refused and
        dead-lettered), or one of another SPIFFE ID than the signer's (a reload renews,
        it never changes the publisher's identity). ``None``: the files are read once.

        The certificate file may hold more than the leaf (a full chain up to the
        bundle's root), but not the intermediate CA that issued the leaf: a signature
        carries the leaf alone and consumers take a certificate issued directly by a CA
        of their ``ca.pem``, so every event would be refused (a ``ConfigError`` when
        made; a renewal that brings one is refused as above).

        Raises:
            meshkit.auth.CertificateError: an unreadable file.
            ConfigError: as the constructor, a bad ``reload_interval_s`` (quoted), or a
                certificate file holding the intermediate CA that issued its leaf (the
                file and the CA's subject named); a ``cert_file`` or ``key_file`` that is
                no path (``None`` from an unset variable, ``bytes``, a number).
        """
        interval = _check_reload_interval(reload_interval_s)
        pair = (Path(check_path("cert_file", cert_file)), Path(check_path("key_file", key_file)))
        watch = None if interval is None else _Watched(pair, interval, "message signer")

        def load() -> MessageSigner:
            certs = load_certificates(pair[0])
            _refuse_intermediate(pair[0], certs)
            return cls(certs[0], load_private_key(pair[1]), clock=clock)

        signer = load()

        def renew() -> MessageSigner:
            fresh = load()
            _check_renewal(signer, fresh, pair[0])
            return fresh

        if watch is not None:
            signer._watch = (watch, renew)
        return signer

    @classmethod
    def from_dir(cls, cert_dir: str | os.PathLike[str], service: str, *,
                 reload_interval_s: float | None = _DEFAULT_RELOAD_INTERVAL_S,
                 clock: Callable[[], float] = time.time) -> MessageSigner:
        """A signer for ``service`` from a meshkit certs directory (``MESHKIT_CERT_DIR``),
        reloaded as :meth:`from_files` says.

        Raises:
            ConfigError: ``cert_dir`` is no path (``None`` from an unset variable,
                ``bytes``, a number); :meth:`from_files`' errors.
            meshkit.auth.CertificateError: as :meth:`from_files`.
        """
        d = Path(check_path("cert_dir", cert_dir))
        return cls.from_files(d / f"{service}.pem", d / f"{service}.key",
                              reload_interval_s=reload_interval_s, clock=clock)

    def _reload(self, watch: tuple[_Watched, Callable[[], MessageSigner]]) -> None:
        fresh = watch[0].reload(watch[1])
        if fresh is not None:
            self._state, self._valid = fresh._state, fresh._valid

    def _out_of_validity(self, now: float, not_before: float, not_after: float) -> None:
        """Log signing with a certificate expired or not valid yet at ``now``: consumers
        refuse every event so signed (as an outage: once, then reminders)."""
        if now > not_after:
            what, why = "expired", f"the certificate expired at {_utc(not_after)}"
        else:
            what, why = "not valid yet", (f"the certificate is not valid until "
                                          f"{_utc(not_before)} (is a clock off?)")
        self._validity.failed(
            f"message signer certificate {what}",
            f"{why}: consumers refuse every event signed with it until a usable "
            "certificate is taken", spiffe_id=self.identity.spiffe_id)

    def sign(self, headers: dict[str, str], *, msg_id: str, subject: str,
             payload: bytes) -> None:
        """Add the identity headers for a message to ``headers`` (changed in place).
        ``msg_id`` must be the ``Nats-Msg-Id`` as it travels: nats-py trims header values
        and turns line breaks into spaces (:meth:`Publisher.publish
        <meshkit.messaging.Publisher.publish>` refuses an id it would change).

        It signs whatever the certificate's validity period (consumers judge it at the
        signed send time), but while the certificate is expired or not valid yet on
        ``clock`` it logs ``message signer certificate expired`` / ``... not valid yet``
        (warning, with the SPIFFE ID: once, then at most every 60 s), and
        ``message signer certificate valid again`` once it is not: consumers refuse
        every event so signed."""
        if self._watch is not None:
            self._reload(self._watch)
        key, cert_b64 = self._state
        identity = self.identity
        now = self._clock()
        not_before, not_after = self._valid
        if now < not_before or now > not_after:
            self._out_of_validity(now, not_before, not_after)
        elif self._validity.failing:
            self._validity.ok(spiffe_id=identity.spiffe_id)
        sent = str(int(now * 1000))
        sig = key.sign(_signed_bytes(msg_id, subject, sent, payload), _ECDSA)
        headers[HDR_IDENTITY] = identity.spiffe_id
        headers[HDR_CERT] = cert_b64
        headers[HDR_SENT_AT_MS] = sent
        headers[HDR_SIGNATURE] = base64.b64encode(sig).decode()


def _refuse_intermediate(cert_file: Path, certs: Sequence[x509.Certificate]) -> None:
    """Refuse a certificate file holding, after the leaf, the intermediate CA that
    issued it (a CA that is not self-signed): a signature carries the leaf alone and
    :class:`MessageVerifier` takes a certificate issued directly by a CA of its
    ``ca.pem``, so every consumer would refuse every event signed with it.

    Raises:
        ConfigError: why, naming the file and the intermediate's subject.
    """
    leaf = certs[0]
    for ca in certs[1:]:
        if ca.subject != leaf.issuer or _issued_by(ca, ca) or not _issued_by(leaf, ca):
            continue
        raise ConfigError(
            f"{cert_file} holds the workload certificate with the intermediate CA that "
            f"issued it ({ca.subject.rfc4514_string()!r}): message signatures carry the "
            "workload certificate alone, and consumers (MessageVerifier) accept only one "
            "issued directly by a CA of their ca.pem, so they would refuse every event "
            "signed with it; sign with a certificate the bundle CA issues directly")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _check_renewal(current: MessageSigner, fresh: MessageSigner, cert_file: Path) -> None:
    """Refuse ``fresh`` (the files as read now) as the pair ``current`` signs with from
    now on: its certificate names another SPIFFE ID, or is outside its validity period
    (RFC 5280 §4.1.2.5, both bounds inclusive) on ``current``'s clock.

    Raises:
        CertificateError: why (the file and the bound or identities quoted); the message
            ends saying the current certificate is kept.
    """
    if fresh.identity != current.identity:
        raise CertificateError(
            f"{cert_file} is now the certificate of {fresh.identity.spiffe_id}, not of "
            f"{current.identity.spiffe_id}: a reload renews the publisher's certificate, "
            "it never changes its identity; the current certificate is kept")
    now = current._clock()
    not_before, not_after = fresh._valid
    if now > not_after:
        raise CertificateError(
            f"{cert_file} expired at {_utc(not_after)}: consumers would refuse every "
            "event signed with it; the current certificate is kept")
    if now < not_before:
        raise CertificateError(
            f"{cert_file} is not valid until {_utc(not_before)} (is the issuer's clock "
            "ahead?): consumers would refuse every event signed with it until then; the "
            "current certificate is kept")


def _publisher_domains(ca_pem: bytes, given: Sequence[str] | None, *, patterns: bool
                       ) -> frozenset[str] | None:
    """The trust domains :class:`MessageVerifier` takes publishers of (``None``: any):
    ``given``, checked, or the one the CAs of ``ca_pem`` name (see its ``trust_domains``).

    Raises:
        ConfigError: ``given`` one string, empty, or holding a bad trust domain (quoted);
            ``ca_pem`` naming several and neither ``given`` nor ``patterns``.
    """
    if given is not None:
        refuse_str("trust_domains", given)
        domains = frozenset(validate_trust_domain(td) for td in given)
        if not domains:
            raise ConfigError("trust_domains is empty: every publisher would be refused; "
                              "None takes the trust domain the ca_pem CAs name")
        return domains
    named: set[str] = set()
    for ca in x509.load_pem_x509_certificates(ca_pem):
        try:
            td = _named_trust_domain(ca)
        except CertificateError:  # malformed extensions: it vouches for nothing
            continue
        if td is not None:
            named.add(td)
    if len(named) > 1:
        if patterns:  # allowed_publishers decide, as before
            return None
        raise ConfigError(
            f"ca_pem holds the CAs of several trust domains ({', '.join(sorted(named))}): "
            "a workload of any of them would pass as a verified publisher; give "
            "trust_domains (those whose workloads may publish) or allowed_publishers")
    return frozenset(named) or None


def _check_publisher_domains(patterns: Sequence[str], domains: frozenset[str]) -> None:
    """Refuse an ``allowed_publishers`` pattern whose trust domain (``*`` wildcards) is
    none of ``domains``: a publisher of any other is refused before the patterns are
    read, so such a pattern (a typo: ``meshkit.locl``) would admit no one and every event
    of the publisher it names would be refused and dead-lettered.

    Raises:
        ConfigError: such a pattern (quoted, with the trust domains taken).
    """
    for pattern in patterns:
        if (domain := foreign_pattern_domain(pattern, domains)) is not None:
            raise ConfigError(
                f"allowed_publishers: {pattern!r} is of trust domain {domain!r}, but this "
                f"verifier takes publishers of {', '.join(map(repr, sorted(domains)))} "
                "only (trust_domains): it would match no publisher")


def _utc(t: float) -> str:
    return f"{dt.datetime.fromtimestamp(t, dt.UTC):%Y-%m-%dT%H:%M:%S}Z"


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
            (default) admits every verified workload of ``trust_domains``.
        trust_domains: the trust domains whose workloads may publish, a tuple or list
            of lowercase DNS names (``("meshkit.local",)``); a publisher of another one
            is refused (``foreign trust domain``), as the gRPC peer check refuses a peer
            of a domain other than its ``trust_domain``. Default ``None``: the trust
            domain the CAs of ``ca_pem`` name (their ``spiffe://<td>`` URI SAN, as
            ``meshkit certs init`` makes them), read once when the verifier is made (a
            reloaded bundle does not widen it); when they name several (a federated
            bundle holding a partner mesh's CA), a ``ConfigError`` unless
            ``allowed_publishers`` is given (its patterns decide then): without it,
            the partner's ``orderd`` would pass as a verified ``orderd``; when none
            names one (a corporate or cert-manager root), publishers of any trust
            domain the CAs vouch for are taken, as before.
        max_entries: certificate cache bound (default 256, >= 1).
        max_message_age_s: refuse a message signed longer ago than this, seconds
            (default 604800.0, 7 days; > 0, finite);
            ``None``: no bound (a stolen key then signs backdated messages for ever).
        clock: wall clock, Unix seconds (default ``time.time``).

    Raises:
        ConfigError: bad ``max_entries`` (``True`` included), ``max_message_age_s``,
            ``clock``, pattern or trust domain, ``allowed_publishers`` or
            ``trust_domains`` given as one string, ``trust_domains`` empty (values
            quoted), ``trust_domains`` not given while ``ca_pem`` names several and
            no ``allowed_publishers`` are given (the trust domains named), or an
            ``allowed_publishers`` pattern of none of the trust domains taken (quoted:
            it would match no publisher);
            CertificateError: ``ca_pem`` has no certificate.
    """

    __slots__ = ("_allowed", "_cache", "_clock", "_domains", "_max", "_max_age_s",
                 "_verifier", "_watch")

    def __init__(self, ca_pem: bytes, *, allowed_publishers: Sequence[str] = (),
                 trust_domains: Sequence[str] | None = None,
                 max_entries: int = 256,
                 max_message_age_s: float | None = _DEFAULT_MAX_MESSAGE_AGE_S,
                 clock: Callable[[], float] = time.time) -> None:
        check_int("max_entries", max_entries, low=1)  # True too: no cache of one
        if max_message_age_s is not None:
            check_number("max_message_age_s", max_message_age_s, low_open=True)
        self._max_age_s = max_message_age_s
        self._verifier = PeerVerifier(ca_pem, clock=clock)
        self._allowed = (IdentityMatcher(allowed_publishers, where="allowed_publishers",
                                         peers=True)
                         if allowed_publishers else None)
        self._domains = _publisher_domains(ca_pem, trust_domains,
                                           patterns=self._allowed is not None)
        if self._allowed is not None and self._domains is not None:
            _check_publisher_domains(self._allowed.patterns, self._domains)
        self._cache: dict[str, _Known] = {}
        self._max = max_entries
        self._clock = clock
        self._watch: tuple[_Watched, Callable[[], bytes]] | None = None

    @classmethod
    def from_file(cls, ca_file: str | os.PathLike[str], *,
                  allowed_publishers: Sequence[str] = (),
                  trust_domains: Sequence[str] | None = None, max_entries: int = 256,
                  max_message_age_s: float | None = _DEFAULT_MAX_MESSAGE_AGE_S,
                  clock: Callable[[], float] = time.time,
                  reload_interval_s: float | None = _DEFAULT_RELOAD_INTERVAL_S,
                  ) -> MessageVerifier:
        """A verifier over the CA bundle (PEM) in ``ca_file``; the keywords as the
        constructor's (spelled out so a type checker sees a misspelled one). It takes a
        changed bundle (a CA rotation adds the new CA to ``ca.pem``): at most every
        ``reload_interval_s`` seconds (default 5; >= 0) a :meth:`verify` compares the
        file's inode, size and mtime with those loaded, loads it again when they changed
        and forgets its cached verdicts; a bundle that does not load keeps the old one
        (logged once: ``message verifier reload failed``). ``None``: read once.

        Raises:
            OSError: ``ca_file`` cannot be read; ConfigError: a bad ``reload_interval_s``
                (quoted), a ``ca_file`` that is no path (``None`` from an unset variable,
                ``bytes``, a number); the constructor's errors.
        """
        interval = _check_reload_interval(reload_interval_s)
        path = Path(check_path("ca_file", ca_file))
        watch = None if interval is None else _Watched((path,), interval, "message verifier")
        verifier = cls(path.read_bytes(), allowed_publishers=allowed_publishers,
                       trust_domains=trust_domains, max_entries=max_entries,
                       max_message_age_s=max_message_age_s, clock=clock)
        if watch is not None:
            verifier._watch = (watch, path.read_bytes)
        return verifier

    def _reload(self, watch: tuple[_Watched, Callable[[], bytes]]) -> None:
        clock = self._clock

        def load() -> PeerVerifier:
            return PeerVerifier(watch[1](), clock=clock)

        fresh = watch[0].reload(load)
        if fresh is not None:
            self._verifier = fresh
            self._cache = {}  # verdicts of the old bundle (a CA removed from it)

    def _known(self, cert_b64: str, at: float) -> _Known:
        """The certificate ``cert_b64``, verified at ``at`` (the send time), cached."""
        hit = self._cache.get(cert_b64)
        if hit is not None and hit.valid_from_s <= at < hit.until_s:
            return hit
        try:
            cert = x509.load_der_x509_certificate(base64.b64decode(cert_b64, validate=True))
            # the times the verdict holds for: the leaf's and its CA's periods, so a send
            # time past the CA's notAfter is refused by a warm cache as by a fresh one
            identity, since, until = self._verifier._verify_span(cert, at)
            key = cert.public_key()
        except CertificateError as exc:  # a ValueError too: first
            raise MessageIdentityError(
                f"publisher certificate refused at the message's send time: {exc}") from None
        except (ValueError, binascii.Error, x509.InvalidVersion, UnsupportedAlgorithm):
            # the publisher wrote the header: DER that parses lazily into an error (a
            # field read by the check, an X.509 version of 122, a key of no known type)
            raise MessageIdentityError("unreadable publisher certificate") from None
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
                match the message id, subject, send time and payload, a
                ``Meshkit-Identity`` header naming another SPIFFE ID than the
                certificate's (the header is not signed; without it the certificate
                alone decides), a publisher of a trust domain not in ``trust_domains``,
                or a publisher not in ``allowed_publishers``.
        """
        if self._watch is not None:
            self._reload(self._watch)
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
        claimed = h.get(HDR_IDENTITY)  # unsigned: never let it name another publisher
        if claimed is not None and claimed != known.identity.spiffe_id:
            raise MessageIdentityError(
                f"{HDR_IDENTITY} header names {claimed[:200]!r}, but the message is signed "
                f"by {known.identity.spiffe_id}")
        domains = self._domains
        if domains is not None and known.identity.trust_domain not in domains:
            raise MessageIdentityError(
                f"publisher {known.identity.spiffe_id} is of a foreign trust domain "
                f"(accepted: {', '.join(sorted(domains))})")
        if self._allowed is not None and not self._allowed.matches(known.identity.spiffe_id):
            raise MessageIdentityError(
                f"publisher {known.identity.spiffe_id} is not allowed on {subject}")
        return known.identity
