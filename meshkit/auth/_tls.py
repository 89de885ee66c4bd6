"""mTLS for meshkit: server and channel credentials from workload certificate files.

How each side verifies the other with what grpcio's Python API allows:

* **server → client**: ``require_client_authentication=True``; BoringSSL checks the client
  chain against the mesh CA (which also refuses another CA's, expired and not-yet-valid
  certificates, and anything outside the CA's name constraints) during the handshake. It
  does *not* apply the trust anchor's ``pathlen:0``: a leaf issued by a sub-CA signed
  with the mesh CA key gets through (``openssl verify`` refuses that chain). grpcio offers
  no verify callback in Python, so right after the handshake, per call,
  :class:`~meshkit.auth.PeerIdentityInterceptor` re-verifies the peer certificate from
  ``context.auth_context()`` with :meth:`TLSOptions.peer_verifier` (leaf issued by a CA
  of ``ca_file``, directly or through intermediates the client presented along a path
  that keeps every CA's pathlen, the anchor's included, basicConstraints, keyUsage and
  name constraints, a workload SPIFFE ID; cached per certificate) and refuses anything
  else with
  ``UNAUTHENTICATED``; it then decides *which* workload may call (connection-level
  ``allowed_peers``), and :class:`~meshkit.auth.AuthzInterceptor` decides per method.
* **client → server**: grpcio's Python API gives a client neither the server's
  certificate (grpc.aio calls have no ``auth_context()``) nor a verification hook
  (``grpc.ssl_channel_credentials`` takes only the roots and the client's key pair; the
  core's certificate verifier is not exposed), so identity is checked as the TLS host
  name: every workload certificate carries the DNS SAN ``<service>.svc.<td>`` next to its
  SPIFFE ID ``spiffe://<td>/svc/<service>``, and :meth:`TLSOptions.channel_options` sets
  ``grpc.ssl_target_name_override`` to the expected service's identity name. Host-name
  verification *is* identity verification: a server holding another workload's
  certificate fails the handshake (``UNAVAILABLE``). The binding of the two names is
  guaranteed by meshkit's issuer and by the CA's name constraints (``svc.<td>`` is the
  only place identity names can live, and only under the trust domain's SPIFFE IDs): the
  issuer refuses an extra DNS name in ``svc.<td>`` other than the workload's own identity
  name (``userd.svc.<td>`` or ``*.svc.<td>`` for orderd), and :class:`TLSOptions` refuses
  to load a certificate carrying one. A certificate made with the CA key outside
  meshkit's issuer is not re-checked on the client side (see the limitation below).
  **Limitation:** the server's chain is checked by BoringSSL alone, so the CA's
  ``pathlen:0`` is not enforced here: a server certificate issued through a sub-CA signed
  with the mesh CA key is accepted for any identity name inside the CA's name
  constraints (which BoringSSL does enforce, through sub-CAs too). Only the CA key can
  make such a sub-CA, and meshkit never does (:func:`~meshkit.auth.issue_workload`
  refuses a non-CA issuer and always writes ``CA:FALSE``): keep the CA key offline, never
  sign a CA with it, and rotate the CA if it ever was. meshkit adds no client-side check:
  a second, out-of-band TLS connection to inspect the chain would not verify the
  connection gRPC actually uses.

Rotation: :meth:`TLSOptions.server_credentials` uses ``grpc.dynamic_ssl_server_credentials``,
whose fetcher grpc calls before each new connection's handshake; meshkit re-reads the
files at most every ``reload_interval_s`` and only swaps in a key/certificate pair that
matches. Client credentials are immutable in grpcio: :class:`ChannelCredentialsReloader`
re-reads the files and bumps a ``generation`` so a channel can rebuild its sub-channels.
Existing connections keep the certificate they were made with; pair rotation with the
``grpc.max_connection_age_ms`` server option to bound that. Files that cannot be read or do
not match (mid-renewal, or broken), or whose new certificate is expired or not valid yet
(a stale Secret rolled back, an issuer's clock ahead: peers would refuse every
handshake), names another SPIFFE ID than the one in force (another workload's Secret:
a reload renews, it never changes the workload's identity) or, on a server, drops the
identity DNS name or serverAuth, are skipped and the current pair kept; as meshkit logs
outages, that is one warning when it starts (another when the error changes), a reminder
at most every 60 s while it lasts, and ``certificate files readable again`` (info) when
they read again.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
import structlog
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshkit._config import check_bool, check_number, check_path, check_secret_holder
from meshkit._env import CERT_DIR, env_value
from meshkit._outage import OutageLog
from meshkit.auth._certs import (
    CA_CERT,
    _named_trust_domain,
    _uris,
    load_certificates,
    load_workload_key,
)
from meshkit.auth._errors import CertificateError
from meshkit.auth._identity import (
    MALFORMED_EXTENSION_ERRORS,
    IdentityMatcher,
    PeerVerifier,
    SpiffeId,
    _signed_by,
    foreign_pattern_domain,
    identity_dns_name,
    validate_service_label,
    validate_trust_domain,
    workload_id,
)
from meshkit.auth._server import PeerIdentityInterceptor
from meshkit.errors import ConfigError

__all__ = [
    "ChannelCredentialsReloader",
    "TLSMaterial",
    "TLSOptions",
    "check_server_identity",
    "tls_from_dir",
]

_log = structlog.get_logger("meshkit.auth.tls")
Clock = Callable[[], float]
_MAX_DNS_NAME = 253  # characters of a written DNS name (RFC 1035 §2.3.4: 255 octets)


@dataclass(frozen=True, slots=True)
class TLSMaterial:
    """One consistent read of the files: PEM bytes plus what was checked in them.

    Attributes:
        ca_pem, cert_pem, key_pem: the file contents (``key_pem`` never logged);
            ``ca_pem`` in the order grpc's handshake needs (:func:`_handshake_order`).
        spiffe_id: the certificate's SPIFFE ID.
        not_after: the certificate's expiry, epoch seconds.
        fingerprint: hex SHA-256 over the certificate chain's DER (the leaf and the
            intermediates after it) and the CA bundle (``ca_pem``, in its order).
        dns_names: the leaf's DNS SANs, as written (default none).
        not_before: the certificate's notBefore, epoch seconds (default ``-inf``:
            unknown).
        server_auth: whether grpc's TLS takes the certificate as a server's: it and the
            intermediate CAs it presents below the bundle have no extended key usage, or
            one listing serverAuth (default ``True``).
        roots_until: epoch seconds from which ``ca_pem``'s order may be wrong for the
            handshake (a CA certificate beside another of its name and key enters or
            leaves its validity period: :func:`_handshake_order`); the reloaders read the files
            again then (default ``inf``: never).
    """

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    spiffe_id: str
    not_after: float
    fingerprint: str
    dns_names: tuple[str, ...] = ()
    not_before: float = -math.inf
    server_auth: bool = True
    roots_until: float = math.inf


def _check_current(m: TLSMaterial, cert_file: Path, now: float) -> None:
    """Refuse a renewal no peer would accept now: a leaf past its notAfter or before its
    notBefore at ``now`` (epoch seconds; RFC 5280 §4.1.2.5, both bounds inclusive, and
    BoringSSL refuses it in every handshake). Swapping it in for the current pair would
    fail every new connection, so the reloaders keep the current pair and retry.

    Raises:
        CertificateError: the leaf is expired or not valid yet (its bound quoted).
    """
    if now > m.not_after:
        raise CertificateError(
            f"{cert_file} expired at {_utc(m.not_after)}: the current certificate is kept")
    if now < m.not_before:
        raise CertificateError(
            f"{cert_file} is not valid until {_utc(m.not_before)} (is the issuer's clock "
            "ahead?): the current certificate is kept")


def _identity_change(current: TLSMaterial, new: TLSMaterial, cert_file: Path, *,
                     server: bool) -> str | None:
    """Why ``new`` (files read now) is no renewal of ``current`` (the pair in force), or
    ``None``: it names another SPIFFE ID (a Secret of another workload mounted, a copy
    into the wrong directory), or, for a ``server``, lacks the identity DNS name
    ``<service>.svc.<td>`` clients verify while ``current`` carries it. Either way every
    peer would see another workload, or none it can verify."""
    if new.spiffe_id != current.spiffe_id:
        return (f"{cert_file} is now the certificate of {new.spiffe_id}, not of "
                f"{current.spiffe_id}: a reload renews a workload's certificate, it never "
                "changes its identity; the current certificate is kept")
    if not server:
        return None
    sid = SpiffeId.parse(current.spiffe_id)
    if sid.service is None:
        return None
    ident = identity_dns_name(sid.trust_domain, sid.service)

    def carries(m: TLSMaterial) -> bool:
        return ident in (d.lower().rstrip(".") for d in m.dns_names)

    if carries(current) and not carries(new):
        return (f"{cert_file} ({new.spiffe_id}) now lacks the DNS SAN {ident}, which "
                "meshkit clients verify as the server's identity; the current "
                "certificate is kept")
    return None


def _no_server_auth(cert_file: Path) -> str:
    return (f"{cert_file} has an extended key usage without serverAuth (the certificate's, "
            "or an intermediate CA's it presents): grpc's TLS (BoringSSL) refuses it as a "
            "server certificate in every client's handshake (anyExtendedKeyUsage does not "
            "stand for it; RFC 5280 §4.2.1.12)")


def check_renewal(current: TLSMaterial, new: TLSMaterial, cert_file: Path, *,
                  server: bool, now: float) -> None:
    """Refuse files that may not replace the pair in force, as the TLS reloaders judge
    them (the server's certificate gauges follow the same rule, :mod:`meshkit.server`).

    A change of the CA bundle alone (the same leaf) is always taken. A new leaf is refused
    when it is expired or not valid yet at ``now`` (epoch seconds, the wall clock; RFC 5280
    §4.1.2.5), names another SPIFFE ID than ``current`` (X.509-SVID §2: a reload renews a
    workload's certificate, it never changes its identity), or, for a ``server``, drops
    the identity DNS name ``current`` carries or lacks serverAuth (the certificate's, or
    an intermediate's it presents: BoringSSL refuses it in every client's handshake).

    Args:
        current: the material in force.
        new: the files as read now (:meth:`TLSOptions.read`).
        cert_file: the certificate's path, quoted in the error.
        server: judge as a server's certificate (identity DNS name, serverAuth).
        now: the wall-clock time, epoch seconds.

    Raises:
        CertificateError: why ``new`` is refused; the message ends by saying the current
            certificate is kept.
    """
    if new.cert_pem == current.cert_pem:  # a new CA bundle, not a new leaf
        return
    _check_current(new, cert_file, now)
    change = _identity_change(current, new, cert_file, server=server)
    if change is not None:
        raise CertificateError(change)
    if server and not new.server_auth:
        raise CertificateError(f"{_no_server_auth(cert_file)}: the current certificate is kept")


def _out_of_validity(m: TLSMaterial, cert_file: Path, now: float, who: str
                     ) -> tuple[str, str] | None:
    """``("expired" | "not valid yet", why)`` when the certificate ``m`` in force is
    outside its validity period at ``now`` (wall clock, epoch seconds; notAfter
    inclusive), else ``None``; ``who`` (``"servers"``, ``"clients"``) refuse it."""
    if now > m.not_after:
        return "expired", (f"{cert_file} ({m.spiffe_id}) expired at {_utc(m.not_after)}: "
                           f"{who} refuse every new connection until it is renewed")
    if now < m.not_before:
        return "not valid yet", (
            f"{cert_file} ({m.spiffe_id}) is not valid until {_utc(m.not_before)} (is the "
            f"issuer's or this host's clock off?): {who} refuse every new connection "
            "until then")
    return None


def _utc(t: float) -> str:
    return f"{dt.datetime.fromtimestamp(t, dt.UTC):%Y-%m-%dT%H:%M:%S}Z"


def _read_material(ca_file: Path, cert_file: Path, key_file: Path,
                   trust_domain: str | None) -> TLSMaterial:
    """Read and check the CA bundle, certificate chain and key files.

    Raises:
        CertificateError: an unreadable file, a key grpc's TLS cannot use, a key not
            matching the certificate, malformed extensions, not exactly one URI SAN
            (X.509-SVID §2), a malformed SPIFFE ID (SPIFFE ID §2) or one that is no
            workload ID, another trust domain, or a certificate peers would refuse.
    """
    cas = load_certificates(ca_file)
    chain = load_certificates(cert_file)
    key = load_workload_key(key_file)
    leaf = chain[0]
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    spki = key.public_key().public_bytes(enc, pub)
    if spki != leaf.public_key().public_bytes(enc, pub):
        _refuse_chain_order(chain, spki, cert_file, key_file)
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        dns = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        uris, dns = [], ()
    except MALFORMED_EXTENSION_ERRORS as exc:  # cryptography: malformed or duplicated
        raise CertificateError(f"{cert_file} has malformed extensions "
                               f"({type(exc).__name__})") from None
    if len(uris) != 1 or not uris[0].startswith("spiffe://"):  # X.509-SVID §2
        raise CertificateError(f"{cert_file} must carry exactly one URI SAN, a SPIFFE ID "
                               f"(X.509-SVID §2); it has {len(uris)} URI SAN(s)")
    try:
        sid = SpiffeId.parse(uris[0])
    except ConfigError as exc:  # SPIFFE ID §2: e.g. an empty path segment
        raise CertificateError(f"{cert_file} carries a malformed SPIFFE ID: {exc}") from None
    if sid.service is None:
        raise CertificateError(f"{cert_file} carries {sid}, which is not a workload identity "
                               "(spiffe://<td>/svc/<service>)")
    td = trust_domain or _bundle_trust_domain(cas, ca_file)
    if sid.trust_domain != td:
        raise CertificateError(f"{cert_file} is for trust domain {sid.trust_domain!r}, "
                               f"expected {td!r}")
    ekus = _presented_ekus(leaf, chain[1:], cas, cert_file)
    roots, roots_until = _handshake_order(cas, time.time())
    ca_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in roots)
    try:  # what peers will check: issued by the bundle (directly or through the chain's
        # intermediates), within every CA's constraints
        PeerVerifier(ca_pem).verify(leaf, chain[1:])
    except CertificateError as exc:
        raise CertificateError(f"{cert_file} would be refused by peers: {exc}") from None
    for whose, eku in ekus:
        if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            # RFC 5280 takes anyExtendedKeyUsage for any purpose; grpc's BoringSSL does
            # not, and checks every certificate of the chain below the peer's anchor
            raise CertificateError(
                f"{cert_file} would be refused by peers: {whose} extended key usage lacks "
                "clientAuth, which grpc's TLS (BoringSSL) requires of a client "
                "certificate and of the intermediate CAs it presents (anyExtendedKeyUsage "
                "does not stand for it; RFC 5280 §4.2.1.12)")
    cert_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    # the whole chain: a renewed intermediate beside the same leaf is a renewal too
    digest = hashlib.sha256(b"".join(c.public_bytes(enc) for c in chain) + b"\0" + ca_pem
                            ).hexdigest()
    return TLSMaterial(ca_pem, cert_pem, key_pem, str(sid), leaf.not_valid_after_utc.timestamp(),
                       digest, dns, leaf.not_valid_before_utc.timestamp(),
                       all(eku is None or ExtendedKeyUsageOID.SERVER_AUTH in eku
                           for _, eku in ekus), roots_until)


def _handshake_order(cas: Sequence[x509.Certificate], now: float
                     ) -> tuple[list[x509.Certificate], float]:
    """The bundle ``cas`` in the order to hand grpc as roots at ``now`` (epoch seconds),
    and the time from which that order may change.

    grpc's BoringSSL takes as a certificate's issuer the first CA of the roots with its
    issuer name (and key identifier), valid or not: a CA renewed with its key beside the
    old certificate (same name and key, another validity period) fails every handshake
    when the first of the two is expired or not valid yet, whatever the other. So the
    certificates sharing a subject and key keep the place of the first of them in the
    bundle (other CAs keep theirs: CAs of one name with different keys are told apart
    by the leaf's authority key identifier, or else taken in the file's order, as
    before) and are ordered: valid at ``now`` (notBefore through notAfter) first, the
    latest to expire first; then those not valid yet, the earliest first; then the
    expired ones. The order holds until one of them enters or leaves its validity
    period: that time is returned (``inf`` when no two share a subject and key).
    """
    groups: dict[tuple[x509.Name, object], list[x509.Certificate]] = {}
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    for ca in cas:
        try:
            key: object = ca.public_key().public_bytes(*spki)
        except (ValueError, TypeError, UnsupportedAlgorithm):  # a key of no known type
            key = id(ca)  # a group of its own
        groups.setdefault((ca.subject, key), []).append(ca)
    if all(len(group) == 1 for group in groups.values()):
        return list(cas), math.inf

    def rank(ca: x509.Certificate) -> tuple[int, float]:
        nb = ca.not_valid_before_utc.timestamp()
        na = ca.not_valid_after_utc.timestamp()
        if now < nb:
            return 1, nb
        return (0, -na) if now <= na else (2, -na)

    out: list[x509.Certificate] = []
    until = math.inf
    for group in groups.values():  # in the order of each group's first certificate
        out.extend(sorted(group, key=rank))
        for ca in group if len(group) > 1 else ():
            # entering its period at notBefore, leaving it just past notAfter
            for t in (ca.not_valid_before_utc.timestamp(),
                      math.nextafter(ca.not_valid_after_utc.timestamp(), math.inf)):
                if now < t < until:
                    until = t
    return out, until


def _bundle_trust_domain(cas: Sequence[x509.Certificate], ca_file: Path,
                         cert_file: Path | None = None) -> str:
    """The trust domain of the bundle ``cas``: the one the workload's certificate
    (``cert_file``, when given) is in, if a CA of the bundle names it (a bundle
    federating another mesh holds CAs naming several); else the one named by the first
    CA of the bundle that names one (a ``spiffe://<td>`` URI SAN, as meshkit's and
    SPIRE's CAs carry): another CA trusted beside the mesh CA (a corporate or
    cert-manager root) names none.

    Raises:
        CertificateError: no CA of the bundle names one (the message says to give
            ``trust_domain=``), or the one that would has malformed extensions.
    """
    malformed: CertificateError | None = None
    named: list[str] = []
    for ca in cas:
        try:
            td = _named_trust_domain(ca)
        except CertificateError as exc:  # malformed extensions: the bundle's next CA
            malformed = malformed or exc
            continue
        if td is not None and td not in named:
            named.append(td)
    if len(named) > 1 and cert_file is not None:
        own = _leaf_trust_domain(cert_file)
        if own in named:
            return own
    if named:
        return named[0]
    if malformed is not None:
        raise CertificateError(f"{ca_file}: {malformed}") from None
    raise CertificateError(
        f"no CA certificate of {ca_file} names a SPIFFE trust domain (a spiffe://<td> "
        "URI SAN, as meshkit's and SPIRE's CAs carry): give it, "
        "TLSOptions(trust_domain=...)")


def _leaf_trust_domain(cert_file: Path) -> str | None:
    """The trust domain of the SPIFFE ID of ``cert_file``'s first certificate, or
    ``None`` when it cannot be read (:func:`_read_material` then says why)."""
    try:
        uris = _uris(load_certificates(cert_file)[0])
        return SpiffeId.parse(uris[0]).trust_domain if len(uris) == 1 else None
    except (CertificateError, ConfigError):
        return None


def _presented_ekus(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
                    cas: Sequence[x509.Certificate], cert_file: Path
                    ) -> list[tuple[str, x509.ExtendedKeyUsage | None]]:
    """The extended key usages grpc's BoringSSL checks in a peer's handshake, each with
    whose it is: the leaf's, then those of the intermediate CAs of ``cert_file`` on its
    path up to a CA of the bundle ``cas`` (which peers hold as a trust anchor, whose
    purpose is not checked); ``None`` for a certificate without the extension.

    Raises:
        CertificateError: one of them has malformed extensions.
    """
    def eku_of(cert: x509.Certificate) -> x509.ExtendedKeyUsage | None:
        try:
            return cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return None
        except MALFORMED_EXTENSION_ERRORS as exc:
            raise CertificateError(f"{cert_file} has malformed extensions "
                                   f"({type(exc).__name__})") from None

    out = [("its", eku_of(leaf))]
    cert, left = leaf, list(intermediates)
    while not any(ca.subject == cert.issuer and _signed_by(cert, ca) for ca in cas):
        up = next((c for c in left if c.subject == cert.issuer and _signed_by(cert, c)), None)
        if up is None:
            break
        left.remove(up)
        out.append((f"its intermediate CA {up.subject.rfc4514_string()!r}'s", eku_of(up)))
        cert = up
    return out


def _refuse_chain_order(chain: list[x509.Certificate], spki: bytes, cert_file: Path,
                        key_file: Path) -> None:
    """The key matches no certificate first in ``cert_file``: say whether the file is in
    the wrong order (the key's certificate further down; RFC 8446 §4.4.2 and RFC 5246
    §7.4.2 want the sender's certificate first, then the CAs that issued it) rather than
    send the user to regenerate keys. The file is not reordered silently: grpc presents it
    as written. Always raises :class:`CertificateError`."""
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    at = next((i for i, c in enumerate(chain)
               if c.public_key().public_bytes(enc, pub) == spki), None)
    if at is not None:
        raise CertificateError(
            f"{cert_file} is in the wrong order: the certificate of {key_file} "
            f"({chain[at].subject.rfc4514_string()}) is number {at + 1} of {len(chain)}, "
            f"after {chain[0].subject.rfc4514_string()}; the workload's leaf must come "
            "first, then the CAs that issued it (RFC 8446 §4.4.2)")
    try:
        bc = chain[0].extensions.get_extension_for_class(x509.BasicConstraints).value
        first_is_ca = bc.ca
    except x509.ExtensionNotFound:
        first_is_ca = False
    except MALFORMED_EXTENSION_ERRORS:
        first_is_ca = False
    hint = (f" (and its first certificate, {chain[0].subject.rfc4514_string()}, is a CA: "
            "the workload's leaf must come first)" if first_is_ca else "")
    raise CertificateError(f"private key {key_file} does not match certificate "
                           f"{cert_file}{hint}")


class _ReadFromCA(str):
    """A trust domain :class:`TLSOptions` read from its CA certificate (``trust_domain``
    left out), as the field holds it: a ``str`` for every reader, told apart by its type
    only, so that ``dataclasses.replace()`` (which passes every field back) reads it again
    from the new ``ca_file`` instead of keeping the old CA's as if given."""

    __slots__ = ()

    def __reduce__(self) -> tuple[type[_ReadFromCA], tuple[str]]:
        """Pickle and copy rebuild it from its text."""
        return (_ReadFromCA, (str(self),))


@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class TLSOptions:
    """mTLS settings of one workload, from PEM files (see the module docstring).

    The files are read and checked when the object is built: the key must match the
    certificate (the first one of ``cert_file``; a file listing the leaf after its CA is
    refused as in the wrong order, not reordered), which must carry exactly one URI SAN
    (X.509-SVID §2), a workload ID ``spiffe://<td>/svc/<service>`` in ``trust_domain``,
    and pass the checks peers make (:class:`~meshkit.auth.PeerVerifier`, validity period
    aside): issued by a CA of ``ca_file`` directly or through the intermediates that
    follow the leaf in ``cert_file``, within every CA's constraints, not itself a CA.

    Args:
        ca_file: the mesh CA certificate(s) (trust bundle), PEM; this and the other files
            are paths (``str`` or ``os.PathLike``), read back as ``Path``.
        cert_file: this workload's certificate (chain, leaf first, then the
            intermediate CAs up to one of ``ca_file``, if any), PEM.
        key_file: its private key, PEM (mode 0600; PKCS#8, or PKCS#1 / SEC 1): ECDSA P-256
            or P-384, or RSA of at least 2048 bits (cert-manager's default), the keys
            grpc's BoringSSL can use (:func:`~meshkit.auth.load_workload_key`).
        trust_domain: the SPIFFE trust domain; default: read from the CA certificates
            (a ``spiffe://<td>`` URI SAN: the trust domain of ``cert_file``'s SPIFFE ID
            when a CA of ``ca_file`` names it, as in a bundle federating another mesh,
            else the first CA naming one; another CA trusted beside the mesh CA, such
            as a corporate root, names none), and read again from the new one by
            ``dataclasses.replace()`` (a trust domain given is kept). Either way the
            field reads as the trust domain in effect (a ``str``).
        allowed_peers: SPIFFE ID patterns (``*`` wildcards) allowed to connect to servers
            using these options, enforced by :meth:`peer_interceptor`; empty (default)
            allows every workload of the trust domain.
        reload_interval_s: how often the files are re-checked for a renewed certificate
            (default 5.0 s; a number > 0, ``math.inf`` for never).
        clock: monotonic clock for the reload interval (default ``time.monotonic``); the
            peer verifier reads the wall clock (``time.time``) for validity periods.

    Raises:
        CertificateError: a file is missing/unreadable, the key is of a type or size
            grpc's TLS cannot use or is too weak (P-521, Ed25519, RSA under 2048 bits:
            named), the key does not match, the
            certificate's extensions are malformed, with no ``trust_domain`` given no
            CA certificate of the bundle names one (the message says to give it; one
            with malformed extensions named), the certificate has no URI SAN
            or one besides its SPIFFE ID, its SPIFFE ID is
            no workload ID or in another trust domain, or peers would refuse the
            certificate (the message says why; an extended key usage without
            clientAuth included, the certificate's or that of an intermediate CA of
            ``cert_file`` below ``ca_file``, which grpc's servers refuse,
            anyExtendedKeyUsage alone too).
        ConfigError: a value out of range or of the wrong type (quoted: a file that is
            no ``str`` or ``os.PathLike``, such as ``None``, or ``""``; a
            ``reload_interval_s`` that is no number, ``True`` or a string included; a
            ``clock`` that cannot be called, such as ``time.monotonic()``'s value), or
            an ``allowed_peers`` pattern that can match no workload's SPIFFE ID
            (``spiffe://<trust domain>/svc/<service>``) or none of ``trust_domain``
            (the peer check refuses every other trust domain's peers first).

    Example::

        tls = TLSOptions(ca_file="certs/ca.pem", cert_file="certs/userd.pem",
                         key_file="certs/userd.key")
        ServeOptions(tls=tls)  # serve(): mTLS, the peer check, certificate reload
        DialOptions(tls=tls)   # dial(): the same for the client side

    (``server_credentials()``, ``channel_credentials()`` and :meth:`peer_interceptor`
    are for plain grpc.aio servers and channels; ``serve()`` refuses a peer check among
    ``ServeOptions.interceptors`` and installs its own from ``tls``.)

    The options copy and deep-copy (sharing what was read), and pickle (for worker
    processes) as their fields: unpickled, they are built again, reading the files there.
    """

    ca_file: Path
    cert_file: Path
    key_file: Path
    trust_domain: str | None = None
    allowed_peers: tuple[str, ...] = ()
    reload_interval_s: float = 5.0
    clock: Clock = time.monotonic
    _initial: TLSMaterial | None = field(init=False, repr=False, compare=False, default=None)
    _verifier: PeerVerifier | None = field(init=False, repr=False, compare=False, default=None)

    # written out (the dataclass' own __init__ is off) so that type checkers take paths
    # as str or os.PathLike and peers as any sequence, while the fields read as Path and
    # tuple; dataclasses.replace() calls it with the fields by name
    def __init__(self, *, ca_file: str | os.PathLike[str], cert_file: str | os.PathLike[str],
                 key_file: str | os.PathLike[str], trust_domain: str | None = None,
                 allowed_peers: Sequence[str] = (), reload_interval_s: float = 5.0,
                 clock: Clock = time.monotonic) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "ca_file", ca_file)
        setattr_(self, "cert_file", cert_file)
        setattr_(self, "key_file", key_file)
        setattr_(self, "trust_domain", trust_domain)
        setattr_(self, "allowed_peers", allowed_peers)
        setattr_(self, "reload_interval_s", reload_interval_s)
        setattr_(self, "clock", clock)
        setattr_(self, "_initial", None)
        setattr_(self, "_verifier", None)
        self.__post_init__()

    def __post_init__(self) -> None:
        for name in ("ca_file", "cert_file", "key_file"):
            object.__setattr__(self, name, Path(check_path(name, getattr(self, name))))
        # math.inf: never re-read
        check_number("reload_interval_s", self.reload_interval_s, low_open=True, finite=False)
        if not callable(self.clock):  # clock=time.monotonic(): its value, not the clock
            raise ConfigError(f"clock must be a callable returning seconds, such as "
                              f"time.monotonic, got {self.clock!r}")
        if isinstance(self.allowed_peers, str) or not isinstance(self.allowed_peers, Iterable):
            # None too: () allows every workload of the trust domain
            raise ConfigError(f"allowed_peers must be a tuple, got {self.allowed_peers!r}")
        object.__setattr__(self, "allowed_peers", tuple(self.allowed_peers))
        IdentityMatcher(self.allowed_peers, where="allowed_peers", peers=True)  # checked now
        if self.trust_domain is not None and not isinstance(self.trust_domain, _ReadFromCA):
            validate_trust_domain(self.trust_domain)
        else:  # left out, or read from the CA before a replace(): read from this one
            cas = load_certificates(self.ca_file)
            object.__setattr__(self, "trust_domain",
                               _ReadFromCA(_bundle_trust_domain(
                                   cas, self.ca_file, self.cert_file)))
        _check_peers_domain(self.allowed_peers, self.domain)
        object.__setattr__(self, "_initial", self.read())
        object.__setattr__(self, "_verifier", PeerVerifier.from_file(
            self.ca_file, reload_interval_s=self.reload_interval_s))

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as the fields given (``multiprocessing`` with spawn, a process pool):
        unpickled, the options are built again, their files read and checked there as
        a process building its own would (raising as construction does); what was read
        here (``cryptography`` objects) does not pickle."""
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        return (_tls_options, (type(self), given))

    def __copy__(self) -> TLSOptions:
        """A copy sharing what was read (immutable) and the peer verifier."""
        new = object.__new__(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(new, f.name, getattr(self, f.name))
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> TLSOptions:
        """A copy sharing what was read (immutable: ``cryptography``'s objects do not
        copy), with a peer verifier of its own (:meth:`PeerVerifier.__deepcopy__`)."""
        new = self.__copy__()
        object.__setattr__(new, "_verifier", copy.deepcopy(self._verifier, memo))
        return new

    @property
    def domain(self) -> str:
        """The trust domain (given or read from the CA)."""
        assert self.trust_domain is not None
        return self.trust_domain

    def read(self) -> TLSMaterial:
        """Read and check the files now.

        Raises:
            CertificateError: as for construction.
        """
        return _read_material(self.ca_file, self.cert_file, self.key_file, self.domain)

    def _read_own(self) -> TLSMaterial:
        """:meth:`read`, refusing files that now hold another workload's certificate than
        the one these options were built with (:attr:`spiffe_id`): credentials are never
        made for another identity (a wrong Secret mounted since; the reloaders keep the
        pair in force over such files the same way).

        Raises:
            CertificateError: as :meth:`read`, or another SPIFFE ID (both quoted).
        """
        m = self.read()
        if m.spiffe_id != self.spiffe_id:
            raise CertificateError(
                f"{self.cert_file} is now the certificate of {m.spiffe_id}, not of "
                f"{self.spiffe_id} (read when these TLSOptions were built): credentials "
                "are never made for another workload's identity")
        return m

    @property
    def spiffe_id(self) -> str:
        """This workload's SPIFFE ID (from the certificate read at construction)."""
        assert self._initial is not None
        return self._initial.spiffe_id

    def certificate_fingerprint(self) -> str:
        """Hex SHA-256 of the current certificate chain (DER: the leaf and the
        intermediates after it) and CA bundle, read from disk now; it changes when any
        of them is renewed.

        Raises:
            CertificateError: the files are unreadable or inconsistent right now.
        """
        return self.read().fingerprint

    def server_credentials(
        self, *, on_reload: Callable[[TLSMaterial], None] | None = None,
        on_handshake: Callable[[], None] | None = None,
        on_start: Callable[[TLSMaterial], None] | None = None,
    ) -> grpc.ServerCredentials:
        """Server credentials that require and verify client certificates (mTLS) and pick up
        renewed files without a restart (``grpc.dynamic_ssl_server_credentials``).

        A plaintext client, or one whose certificate is from another CA, expired, not yet
        valid or outside the CA's name constraints, fails the handshake; the caller sees
        ``UNAVAILABLE``. A renewal on disk is taken only when its files read, match and
        hold a certificate valid now (wall clock) for the same workload (SPIFFE ID, and
        identity DNS name if the current one has it) that lists serverAuth if it has an
        extended key usage; else the current pair is kept and
        ``certificate reload skipped`` logged (module docstring).

        Args:
            on_reload: called with the new :class:`TLSMaterial` after each reload (on one of
                grpc's core threads, before the handshake that triggered it; exceptions are
                logged and ignored). ``serve()`` uses it to keep the certificate-expiry
                gauge current.
            on_handshake: called before every TLS handshake (grpc asks the reloader for a
                new configuration at the start of each connection; on a core thread; must
                be quick and not raise). ``serve()`` counts handshakes with it.
            on_start: called once, before this returns and on the calling thread, with
                the :class:`TLSMaterial` the credentials start serving (the files as read
                for them, not read again). ``serve()`` starts its certificate gauges on it.

        Raises:
            CertificateError: the files are unreadable or inconsistent now, hold the
                certificate of another SPIFFE ID than :attr:`spiffe_id` (both quoted), or
                one with an extended key usage without serverAuth (its own or an
                intermediate CA's it presents: every client's handshake would refuse it).
        """
        reloader = _ServerReloader(self, on_reload, on_handshake)
        if on_start is not None:
            on_start(reloader.current)
        return grpc.dynamic_ssl_server_credentials(
            reloader.initial,
            reloader,  # type: ignore[arg-type]  # the stub omits "None = no change"
            require_client_authentication=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Client credentials from the files as they are now: the mesh CA as the only root,
        this workload's key and certificate as the client certificate.

        Raises:
            CertificateError: the files are unreadable or inconsistent, or now hold the
                certificate of another SPIFFE ID than :attr:`spiffe_id` (both quoted).
        """
        m = self._read_own()
        return grpc.ssl_channel_credentials(m.ca_pem, m.key_pem, m.cert_pem)

    def expected_server_id(self, service: str) -> str:
        """The SPIFFE ID a server of ``service`` must present:
        ``spiffe://<td>/svc/<service>``."""
        return workload_id(self.domain, service)

    def channel_options(self, service: str) -> tuple[tuple[str, Any], ...]:
        """Channel arguments making the TLS handshake verify the server's identity.

        Args:
            service: the workload name the server must prove, usually the dialed service,
                e.g. ``"orderd"``.

        Returns:
            ``(("grpc.ssl_target_name_override", "<service>.svc.<td>"),)``.

        Raises:
            ConfigError: ``service`` is not a lowercase DNS label, or its identity name
                in this trust domain would be over 253 characters, the most a DNS name
                may have (RFC 1035 §2.3.4: 255 octets on the wire, 253 characters
                written): no certificate can carry it (the issuer refuses the workload),
                so every handshake would fail ``UNAVAILABLE``.
        """
        name = identity_dns_name(self.domain, service)
        if len(name) > _MAX_DNS_NAME:  # a 63-character label under a 200-character domain
            raise ConfigError(
                f"the identity DNS name of {service!r} in trust domain {self.domain!r} "
                f"would be {len(name)} characters, over the {_MAX_DNS_NAME} a DNS name may "
                "have (RFC 1035 §2.3.4): no server certificate can carry it, so no TLS "
                "handshake could verify it; shorten the service name or the trust domain")
        return (("grpc.ssl_target_name_override", name),)

    def peer_verifier(self) -> PeerVerifier:
        """The :class:`~meshkit.auth.PeerVerifier` over ``ca_file`` (one per options
        object, shared by its interceptors): it re-reads the bundle at most every
        ``reload_interval_s``, like the server credentials."""
        assert self._verifier is not None
        return self._verifier

    def peer_interceptor(self, *, exempt_methods: tuple[str, ...] = ()) -> PeerIdentityInterceptor:
        """The server interceptor verifying the peer's certificate chain against
        ``ca_file`` (:meth:`peer_verifier`), enforcing ``allowed_peers`` and publishing
        :func:`~meshkit.auth.current_peer`, for a plain ``grpc.aio`` server (put it first
        among its interceptors); ``serve()`` installs its own from ``ServeOptions(tls=...)``
        and refuses this one in ``ServeOptions.interceptors``.
        Status codes: see :class:`~meshkit.auth.PeerIdentityInterceptor`."""
        return PeerIdentityInterceptor(self.domain, self.allowed_peers,
                                       exempt_methods=exempt_methods,
                                       verifier=self.peer_verifier())

    def channel_reloader(self) -> ChannelCredentialsReloader:
        """A :class:`ChannelCredentialsReloader` over these files.

        Raises:
            CertificateError: as :meth:`channel_credentials`.
        """
        return ChannelCredentialsReloader(self)


def _check_peers_domain(patterns: Sequence[str], trust_domain: str) -> None:
    """Refuse an ``allowed_peers`` pattern whose trust domain (``*`` wildcards) cannot be
    ``trust_domain``: the peer check refuses a peer of any other trust domain before it
    reads the list, so such a pattern (a typo: ``meshkit.locl``) would admit no one, and
    the workload it names would be refused ``PERMISSION_DENIED``.

    Raises:
        ConfigError: such a pattern (quoted, with both trust domains).
    """
    for pattern in patterns:
        if (domain := foreign_pattern_domain(pattern, (trust_domain,))) is not None:
            raise ConfigError(
                f"allowed_peers: {pattern!r} is of trust domain {domain!r}, but these "
                f"TLSOptions are of {trust_domain!r} and the peer check refuses a peer of "
                "any other trust domain before it reads allowed_peers: it would match "
                "no peer")


def _tls_options(cls: type[TLSOptions], given: dict[str, Any]) -> TLSOptions:
    """``cls(**given)``: an unpickled :class:`TLSOptions` (:meth:`TLSOptions.__reduce__`)."""
    return cls(**given)


def check_server_identity(tls: TLSOptions, service: str) -> None:
    """Refuse a server certificate every meshkit client of ``service`` would refuse, before
    the server starts (``serve()`` calls it for ``ServeOptions(tls=...)``).

    meshkit clients verify a server's identity as the TLS host name
    ``<service>.svc.<td>`` (:meth:`TLSOptions.channel_options`: grpcio gives Python
    clients neither the server's certificate nor a verify hook, so no SPIFFE ID check),
    which the certificate must carry as a DNS SAN (RFC 6125 §6.4; grpc never looks at the
    common name of a certificate with SANs). So the certificate ``tls`` reads now must be the
    workload's own: SPIFFE ID ``spiffe://<td>/svc/<service>`` and DNS SAN
    ``<service>.svc.<td>``. A SPIRE X.509-SVID carries only its SPIFFE URI SAN unless its
    registration entry lists DNS names (X.509-SVID §2 asks no more), and a Secret
    mounted for the wrong workload names another identity: both would start, register
    and then fail every call ``UNAVAILABLE``.

    Args:
        tls: the server's :class:`TLSOptions`.
        service: the mesh service it serves, e.g. ``"orderd"`` (one lowercase DNS label).

    Raises:
        CertificateError: the certificate is for another workload (its SPIFFE ID and the
            expected one quoted), lacks the DNS SAN ``<service>.svc.<td>`` (named), has
            an extended key usage without serverAuth, or presents an intermediate CA
            with one (which every client's handshake refuses, RFC 5280 §4.2.1.12), or
            the files are unreadable or inconsistent right now.
        ConfigError: ``service`` is not a lowercase DNS label (no identity name, so no
            meshkit client could verify it), or ``tls`` is no :class:`TLSOptions` (named
            by its type: a key's PEM may have been given).
    """
    check_secret_holder("tls", tls, TLSOptions, optional=False)
    expected = tls.expected_server_id(service)
    ident = identity_dns_name(tls.domain, service)
    m = tls.read()
    if m.spiffe_id != expected:
        raise CertificateError(
            f"{tls.cert_file} is the certificate of {m.spiffe_id}, not of {expected}: "
            f"clients dialing {service!r} verify the server as {ident} and would refuse "
            f"it; mount the certificate of {service!r} (meshkit certs issue {service})")
    if ident not in (d.lower().rstrip(".") for d in m.dns_names):
        raise CertificateError(
            f"{tls.cert_file} ({m.spiffe_id}) lacks the DNS SAN {ident}: meshkit clients "
            "verify a server's identity as that TLS host name (grpcio has no SPIFFE ID "
            f"check for Python clients), so every call to {service!r} would fail "
            "UNAVAILABLE; issue the certificate with that DNS name too (SPIRE: the "
            "registration entry's dns_names; cert-manager: spec.dnsNames)")
    if not m.server_auth:
        raise CertificateError(
            f"{_no_server_auth(tls.cert_file)}, so every call to {service!r} would fail "
            "UNAVAILABLE; issue it with serverAuth too (or no extended key usage)")


def stat_files(paths: Sequence[Path]) -> tuple[tuple[int, int, int], ...]:
    """``(mtime_ns, size, inode)`` of each of ``paths``, ``(0, 0, 0)`` for one that cannot
    be stat'ed: what changes when certificate files are renewed (the TLS reloader and
    the server's certificate gauges compare it, :mod:`meshkit.server`)."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append((0, 0, 0))
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class _InForce:
    """What both certificate reloaders (:class:`_ServerReloader`,
    :class:`ChannelCredentialsReloader`) keep of the files in force and judge a renewal
    by: their ``stat`` (taken before they are read: a renewal written meanwhile then
    reads as a change at the next check; stat'ed after, it passed for the files in force),
    the material read from them, and the two outages logged (files unreadable or a
    renewal refused; the certificate in force out of its validity period). ``side`` is
    ``"server"`` or ``"client"``; ``skipped`` the warning's event for a refused
    renewal. Not thread-safe: the server's reloader holds its lock around it.

    Raises:
        CertificateError: the files are unreadable or inconsistent now (quoted).
    """

    __slots__ = ("current", "fault", "paths", "side", "skipped", "stat", "tls", "validity")

    def __init__(self, tls: TLSOptions, side: Literal["server", "client"], skipped: str) -> None:
        self.tls = tls
        self.side = side
        self.skipped = skipped
        self.paths = (tls.ca_file, tls.cert_file, tls.key_file)
        self.stat = stat_files(self.paths)
        self.current = tls._read_own()  # the material in force
        self.fault = OutageLog(_log, "certificate files readable again", clock=tls.clock)
        self.validity = OutageLog(_log, f"{side} certificate valid again", clock=tls.clock)

    def check_validity(self, now: float) -> None:
        """Warn while the certificate in force is expired or not valid yet at ``now``
        (wall clock, epoch seconds) with no usable renewal taken: every peer refuses the
        handshake (calls fail ``UNAVAILABLE``, "all endpoints are failing", naming
        neither side's certificate). Logged as an outage (``<side> certificate expired``
        / ``... not valid yet``, warning, reminders at most every 60 s; ``<side>
        certificate valid again``, info)."""
        m = self.current
        peers = "clients" if self.side == "server" else "servers"
        problem = _out_of_validity(m, self.tls.cert_file, now, peers)
        if problem is not None:
            self.validity.failed(f"{self.side} certificate {problem[0]}", problem[1],
                                 cert_file=str(self.tls.cert_file))
        elif self.validity.failing:
            self.validity.ok(spiffe_id=m.spiffe_id)

    def renewal(self) -> TLSMaterial | None:
        """The renewal to take from now on, if the files changed and may be taken
        (:func:`check_renewal`), else ``None``: unchanged (``stat``, and the roots' order
        still holding), the same material read again, or refused (the material in force
        kept; logged as :attr:`skipped`, warning: when it starts, when the error changes,
        and as a reminder a minute later; read again at the next check, changed or not,
        until it may be taken; the next good read logs ``certificate files readable
        again``)."""
        st = stat_files(self.paths)
        now = time.time()
        if st == self.stat and now < self.current.roots_until:
            # the files in force (back, after a skipped read), their roots' order too
            if self.fault.failing:
                self.fault.ok()
            return None
        try:
            m = self.tls.read()
            check_renewal(self.current, m, self.tls.cert_file, server=self.side == "server",
                          now=now)
        except CertificateError as exc:
            # mid-renewal (key replaced, certificate not yet) or broken: keep the pair
            self.fault.failed(self.skipped, str(exc))
            return None
        self.stat = st
        if self.fault.failing:
            self.fault.ok()
        renewed = m.fingerprint != self.current.fingerprint
        self.current = m  # (the same files read again: the roots' order holds on)
        return m if renewed else None


class _ServerReloader:
    """The certificate-configuration fetcher: grpc calls it before every handshake, on a
    core thread; it returns a new configuration or ``None`` (keep the current one)."""

    def __init__(self, tls: TLSOptions,
                 on_reload: Callable[[TLSMaterial], None] | None = None,
                 on_handshake: Callable[[], None] | None = None) -> None:
        self._tls = tls
        self._on_reload = on_reload
        self._on_handshake = on_handshake
        self._lock = threading.Lock()
        self._files = _InForce(tls, "server", "certificate reload skipped")
        m = self._files.current
        if not m.server_auth:  # every client's handshake would refuse it
            raise CertificateError(f"{_no_server_auth(tls.cert_file)}; issue it with "
                                   "serverAuth too (or no extended key usage)")
        self._checked = tls.clock()
        self._files.check_validity(time.time())
        self.initial = self._config(m)
        self.reloads = 0

    @property
    def current(self) -> TLSMaterial:
        """The material in force (the last one handed to grpc)."""
        with self._lock:
            return self._files.current

    @staticmethod
    def _config(m: TLSMaterial) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(m.key_pem, m.cert_pem)],
                                                         root_certificates=m.ca_pem)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        if self._on_handshake is not None:
            self._on_handshake()
        try:
            now = self._tls.clock()
            with self._lock:
                if now - self._checked < self._tls.reload_interval_s:
                    return None
                self._checked = now
                taken = self._files.renewal()  # logged when skipped
                if taken is not None:
                    self.reloads += 1
                self._files.check_validity(time.time())
            if taken is None:
                return None
            m = taken
            _log.info("server certificate reloaded", spiffe_id=m.spiffe_id,
                      fingerprint=m.fingerprint[:16], not_after=m.not_after)
            if self._on_reload is not None:
                try:
                    self._on_reload(m)
                except Exception as exc:
                    _log.warning("certificate reload hook failed", error=type(exc).__name__)
            return self._config(m)
        except Exception as exc:  # never let an exception escape into grpc's core thread
            _log.warning("certificate reload failed", error=type(exc).__name__)
            return None


class ChannelCredentialsReloader:
    """Client credentials that follow renewed files; a channel rebuilds when
    :attr:`generation` changes.

    :meth:`check` re-reads the files at most every ``reload_interval_s`` and, when the
    certificate or CA changed and the new pair is consistent, builds new credentials and
    bumps :attr:`generation`. Example (in a channel's maintenance loop)::

        if reloader.check():
            rebuild_subchannels(reloader.credentials)

    Args:
        tls: the :class:`TLSOptions` naming the files.

    Raises:
        CertificateError: the files are unreadable or inconsistent now, or hold the
            certificate of another SPIFFE ID than ``tls.spiffe_id`` (both quoted).
        ConfigError: ``tls`` is no :class:`TLSOptions` (named by its type: a key's PEM
            may have been given).
    """

    def __init__(self, tls: TLSOptions) -> None:
        check_secret_holder("tls", tls, TLSOptions, optional=False)
        self.tls = tls
        self._files = _InForce(tls, "client", "client certificate reload skipped")
        m = self._files.current
        self.fingerprint = m.fingerprint
        self.credentials: grpc.ChannelCredentials = grpc.ssl_channel_credentials(
            m.ca_pem, m.key_pem, m.cert_pem)
        self.generation = 1
        self._checked = tls.clock()
        self._files.check_validity(time.time())

    def check(self, *, force: bool = False) -> bool:
        """Reload if due (or ``force``) and changed; returns whether :attr:`generation`
        changed. The files are read only when one's size, mtime or inode changed (this
        runs on a channel's event loop: unchanged files cost a ``stat`` each).
        Unreadable or inconsistent files, and a new certificate that is expired or not
        valid yet (on the wall clock) or names another SPIFFE ID than the one in force,
        are skipped (the current credentials stay; read again at each check) and
        logged as ``client certificate reload skipped``, warning: when it starts, when
        the error changes, and as a reminder at most every 60 s while it
        lasts; the next good read logs ``certificate files readable again`` (info).
        While the certificate in force is expired or not valid yet (no usable renewal
        taken), ``client certificate expired`` / ``client certificate not valid yet`` is
        logged alike (warning; ``client certificate valid again`` once it is): servers
        refuse the handshake, and calls fail ``UNAVAILABLE`` without naming it."""
        now = self.tls.clock()
        if not force and now - self._checked < self.tls.reload_interval_s:
            return False
        self._checked = now
        m = self._files.renewal()
        if m is not None:
            self.credentials = grpc.ssl_channel_credentials(m.ca_pem, m.key_pem, m.cert_pem)
            self.fingerprint = m.fingerprint
            self.generation += 1
            _log.info("client certificate reloaded", spiffe_id=m.spiffe_id,
                      generation=self.generation)
        self._files.check_validity(time.time())
        return m is not None


def tls_from_dir(
    cert_dir: str | os.PathLike[str] | None,
    service: str,
    *,
    insecure: bool = False,
    allowed_peers: tuple[str, ...] = (),
    reload_interval_s: float = 5.0,
) -> TLSOptions | None:
    """The :class:`TLSOptions` of ``service`` from a ``meshkit certs`` directory, or ``None``
    only when ``insecure=True`` (plaintext must be asked for explicitly).

    Args:
        cert_dir: the directory holding ``ca.pem``, ``<service>.pem``, ``<service>.key``;
            ``None`` means ``$MESHKIT_CERT_DIR``.
        service: the workload name.
        insecure: return ``None`` (plaintext) instead of loading certificates.
        allowed_peers, reload_interval_s: as :class:`TLSOptions`.

    Raises:
        ConfigError: no directory given and ``$MESHKIT_CERT_DIR`` unset, ``cert_dir`` no
            path (``bytes``, a number), ``insecure`` not
            ``True`` or ``False`` (a string read from the environment, ``"false"``, is
            truthy: it would give plaintext; quoted), or (as :class:`CertificateError`) a
            file is missing — the message says to run ``meshkit certs issue <service>``,
            or, for a ``service`` that command refuses (no lowercase DNS label), why.
    """
    check_bool("insecure", insecure)
    if insecure:
        return None
    d = cert_dir if cert_dir is not None else env_value(CERT_DIR)
    if not d:
        raise ConfigError("no certificate directory: pass cert_dir or set MESHKIT_CERT_DIR "
                          "(or ask for plaintext explicitly with insecure=True)")
    base = Path(check_path("cert_dir", d))
    files = (base / CA_CERT, base / f"{service}.pem", base / f"{service}.key")
    for f in files:
        if not f.exists():
            try:  # `meshkit certs issue` refuses a name that is no label: its advice fails
                validate_service_label(service)
            except ConfigError as exc:
                raise CertificateError(f"{f} is missing, and no workload of that name can be "
                                       f"issued: {exc}") from None
            raise CertificateError(f"{f} is missing; run `meshkit certs init` and "
                                   f"`meshkit certs issue {service}` (--dir {base})")
    return TLSOptions(ca_file=files[0], cert_file=files[1], key_file=files[2],
                      allowed_peers=allowed_peers, reload_interval_s=reload_interval_s)
