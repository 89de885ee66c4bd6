"""Mesh CA and workload certificates (SPIFFE X.509-SVID) with ``cryptography``.

The CA is an ECDSA P-256 self-signed root whose name constraints (RFC 5280 §4.2.1.10)
permit only its trust domain's SPIFFE IDs (URI host ``<td>``), the identity names
``*.svc.<td>`` and the extra DNS subtrees given (default ``localhost``); BoringSSL
enforces them in every handshake, so even a leaked CA-signed leaf outside them is
refused. BoringSSL does not apply the root's ``pathlen:0``, though: servers re-check a
peer's chain with every CA's path length, the root's included
(:class:`~meshkit.auth.PeerVerifier`), so a leaf under a sub-CA of a meshkit CA is
refused, and :func:`issue_workload` only ever writes ``CA:FALSE`` leaves, with a CA as
issuer.
Workload certificates are short-lived ECDSA P-256 leaves with exactly one URI SAN (the
SPIFFE ID), the DNS identity name, and the listen address's DNS/IP names. The identity
namespace ``svc.<td>`` holds only the workload's own identity name: the issuer refuses an
extra name such as another workload's ``userd.svc.<td>`` or ``*.svc.<td>`` (clients verify
a server's identity as that host name), and so do ``TLSOptions`` and ``PeerVerifier`` in a
certificate they read.

Certificates from another issuer (cert-manager, SPIRE) may carry other keys:
:class:`~meshkit.auth.TLSOptions` takes a workload key that grpc's TLS can use, ECDSA P-256
or P-384 or RSA of 2048 bits or more (:func:`load_workload_key`); the mesh CA's key and
the key messages are signed with stay ECDSA (:func:`load_private_key`).

Private keys are written with mode 0600 and never overwritten unless asked to
(``overwrite=True``; the CLI's ``--force``), atomically (write then rename). A file
replaced keeps its owner and group (as far as the writing user may give them) and its
permission bits, a private key never readable by others: a workload reading its key
through its group or as its owner still can after a renewal run as another user.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

try:
    import fcntl
except ImportError:  # Windows: renewals into one directory are not serialised
    fcntl = None  # type: ignore[assignment]

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshkit._config import check_bool, check_instance, check_number, check_path, shown_path
from meshkit.auth._errors import CertificateError, KeyExistsError
from meshkit.auth._identity import (
    MALFORMED_EXTENSION_ERRORS,
    SpiffeId,
    _Anchor,
    _name_problem,
    foreign_identity_name,
    identity_dns_name,
    load_pem_certificates,
    validate_trust_domain,
    workload_id,
)
from meshkit.errors import ConfigError

__all__ = [
    "CertificateInfo",
    "WorkloadFiles",
    "create_ca",
    "describe_certificate",
    "init_ca_dir",
    "issue_into_dir",
    "issue_workload",
    "load_certificate",
    "load_certificates",
    "load_private_key",
    "load_workload_key",
    "trust_domain_of",
    "write_certificate",
    "write_private_key",
]

WorkloadKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
"""A workload's TLS private key (:func:`load_workload_key`)."""

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
_BACKDATE = dt.timedelta(minutes=5)


def _now(now: dt.datetime | None) -> dt.datetime:
    """The issue time: ``now`` as an aware UTC ``datetime`` (a naive one is read as UTC,
    as ``cryptography``'s ``CertificateBuilder`` reads it; an aware one in another zone
    stays the same instant), or the current time when ``None``.

    Raises:
        ConfigError: ``now`` is no ``datetime`` (quoted).
    """
    if now is None:
        return dt.datetime.now(dt.UTC)
    check_instance("now", now, dt.datetime)
    return now.replace(tzinfo=dt.UTC) if now.tzinfo is None else now.astimezone(dt.UTC)


def _end(start: dt.datetime, name: str, value: float, unit: str) -> dt.datetime:
    """``start`` plus ``value`` ``unit``\\ s (``"days"``/``"hours"``): a certificate's
    notAfter. RFC 5280 §4.1.2.5 encodes it as a GeneralizedTime up to the year 9999,
    which is also the last year a ``datetime`` holds.

    Raises:
        ConfigError: ``value`` is not a finite number > 0, or the end falls past the year
            9999 (``name`` and the value quoted).
    """
    check_number(name, value, low=0.0, low_open=True)
    try:
        return start + dt.timedelta(**{unit: value})
    except OverflowError:  # past datetime.max: 9999-12-31
        raise ConfigError(f"{name} {value!r} ends past the year 9999, beyond what a "
                          "certificate can carry (RFC 5280 §4.1.2.5)") from None


def _key_usage(*, sign_certs: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not sign_certs, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=sign_certs,
        crl_sign=sign_certs, encipher_only=False, decipher_only=False,
    )


def create_ca(
    *,
    trust_domain: str,
    ttl_days: float = 365.0,
    permitted_dns: Sequence[str] = ("localhost",),
    permitted_ips: Sequence[str] = (),
    now: dt.datetime | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Create a mesh root CA: ECDSA P-256, ``CA:TRUE, pathlen:0``, name-constrained.

    Args:
        trust_domain: the SPIFFE trust domain, e.g. ``"meshkit.local"``; also put in the
            CA's URI SAN as ``spiffe://<td>`` so issuers can read it back.
        ttl_days: validity in days from ``now`` (default 365).
        permitted_dns: DNS subtrees permitted besides ``svc.<td>`` (default
            ``("localhost",)``; listen addresses must fall under them).
        permitted_ips: IP networks (``"127.0.0.0/8"``) to permit; empty (default) leaves
            IP SANs unconstrained (meshkit clients verify identity names, not IPs).
        now: issue time (default the current time); tests backdate with it. A naive
            ``datetime`` is read as UTC (``datetime(2030, 1, 1, 12)``), as by
            :func:`issue_workload`.

    Returns:
        ``(private_key, certificate)``.

    Raises:
        ConfigError: bad trust domain, ``ttl_days`` not a finite number > 0 or ending past
            the year 9999 (RFC 5280 §4.1.2.5), a bad DNS/IP subtree (a DNS one named as
            ``permitted_dns``'s, quoted), ``permitted_dns`` or
            ``permitted_ips`` given as one string instead of a sequence of them (quoted),
            or ``now`` not a ``datetime``.
    """
    td = validate_trust_domain(trust_domain)
    permitted_dns = _name_list("permitted_dns", permitted_dns)
    permitted_ips = _name_list("permitted_ips", permitted_ips)
    start = _now(now)
    end = _end(start, "ttl_days", ttl_days, "days")
    try:
        nets = [x509.IPAddress(ipaddress.ip_network(n)) for n in permitted_ips]
    except ValueError as exc:
        raise ConfigError(f"bad permitted IP network in {list(permitted_ips)!r}") from exc
    for d in permitted_dns:  # the trust domain's lowercase DNS-name rule, named as theirs
        try:
            validate_trust_domain(d)
        except ConfigError:
            raise ConfigError(f"permitted_dns: a DNS subtree must be a lowercase DNS name "
                              f"like 'example.com', got {d!r}") from None
    permitted: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(td),
        x509.DNSName(f"svc.{td}"),
        *(x509.DNSName(d) for d in permitted_dns),
        *nets,
    ]
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshkit"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"meshkit CA {td}"[:64]),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _BACKDATE)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(sign_certs=True), critical=True)
        .add_extension(x509.NameConstraints(permitted_subtrees=permitted,
                                            excluded_subtrees=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(f"spiffe://{td}")]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def trust_domain_of(ca_cert: x509.Certificate) -> str:
    """The trust domain a meshkit CA certificate was made for (its ``spiffe://<td>`` SAN).

    Raises:
        CertificateError: the certificate carries no SPIFFE trust-domain URI, or its
            extensions are malformed.
    """
    td = _named_trust_domain(ca_cert)
    if td is None:
        raise CertificateError("CA certificate names no SPIFFE trust domain "
                               "(spiffe://<td> URI SAN)")
    return td


def _named_trust_domain(ca_cert: x509.Certificate) -> str | None:
    """The trust domain ``ca_cert`` names (its first URI SAN that is a SPIFFE ID), or
    ``None`` (a CA of another kind: a corporate or cert-manager root).

    Raises:
        CertificateError: its extensions are malformed.
    """
    for uri in _uris(ca_cert, "the CA certificate"):
        try:
            sid = SpiffeId.parse(uri)
        except ConfigError:
            continue
        return sid.trust_domain
    return None


_E = TypeVar("_E", bound=x509.ExtensionType)


def _extension(cert: x509.Certificate, kind: type[_E], what: str = "the certificate"
               ) -> _E | None:
    """``cert``'s extension of type ``kind``, or ``None`` when absent.

    Raises:
        CertificateError: the certificate's extensions are malformed (cryptography's
            ValueError, DuplicateExtension...: :data:`MALFORMED_EXTENSION_ERRORS`);
            ``what`` names the certificate in the message, with the error's text.
    """
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except MALFORMED_EXTENSION_ERRORS as exc:
        detail = " ".join(str(exc).split())[:200]
        raise CertificateError(f"{what} has malformed extensions (RFC 5280 §4.2): "
                               f"{type(exc).__name__}: {detail}") from None


def _uris(cert: x509.Certificate, what: str = "the certificate") -> list[str]:
    san = _extension(cert, x509.SubjectAlternativeName, what)
    return [] if san is None else san.get_values_for_type(x509.UniformResourceIdentifier)


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _permitted(ca_cert: x509.Certificate) -> tuple[list[str], list[_Network]]:
    nc = _extension(ca_cert, x509.NameConstraints, "the CA certificate")
    if nc is None:
        return [], []
    dns: list[str] = []
    nets: list[_Network] = []
    for sub in nc.permitted_subtrees or ():
        if isinstance(sub, x509.DNSName):
            dns.append(sub.value.lstrip("."))
        elif isinstance(sub, x509.IPAddress) and isinstance(
            sub.value, ipaddress.IPv4Network | ipaddress.IPv6Network
        ):
            nets.append(sub.value)
    return dns, nets


def _check_issuer(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate) -> None:
    """Refuse to issue with something that is not a CA and its key."""
    bc = _extension(ca_cert, x509.BasicConstraints, "the CA certificate")
    ku = _extension(ca_cert, x509.KeyUsage, "the CA certificate")
    if not (bc is not None and bc.ca and ku is not None and ku.key_cert_sign):
        raise ConfigError(f"{ca_cert.subject.rfc4514_string()!r} is not a CA certificate "
                          "(CA:TRUE with keyCertSign); issue with the mesh CA")
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if ca_key.public_key().public_bytes(der, pub) != ca_cert.public_key().public_bytes(der, pub):
        raise ConfigError("the CA private key does not match the CA certificate")


def issue_workload(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    service: str,
    *,
    ttl_h: float = 24.0,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    now: dt.datetime | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Issue a workload certificate (X.509-SVID) for ``service``.

    The leaf has URI SAN ``spiffe://<td>/svc/<service>``, DNS SAN ``<service>.svc.<td>``
    (the identity name clients verify), the extra ``dns`` and ``ips`` SANs,
    ``CA:FALSE``, key usage ``digitalSignature`` (critical) and extended key usages
    serverAuth + clientAuth, as SPIFFE X.509-SVID §4 asks.

    Args:
        ca_key, ca_cert: the CA (from :func:`create_ca` or :func:`init_ca_dir`).
        service: workload name, one lowercase DNS label, e.g. ``"orderd"``.
        ttl_h: validity in hours from ``now`` (default 24; short-lived on purpose).
        dns: extra DNS names, e.g. the listen host ``("localhost",)``; none equal to or
            under ``svc.<td>`` except the workload's own identity name.
        ips: IP addresses, e.g. ``("127.0.0.1",)``.
        now: issue time (default now; a naive ``datetime`` is read as UTC); notBefore
            is 5 minutes earlier for clock skew.

    Returns:
        ``(private_key, certificate)``.

    The leaf is never a CA: ``basicConstraints`` is fixed to ``CA:FALSE`` (critical) and
    key usage to ``digitalSignature`` alone, whatever the arguments.

    Raises:
        ConfigError: bad service name, an identity DNS name over 253 characters (a long
            service name under a long trust domain), ``ttl_h`` not a finite number > 0
            (or ending past the year 9999, RFC 5280 §4.1.2.5), ``dns`` or ``ips`` given
            as one string instead of a sequence of names (quoted), a bad IP or an IPv6
            one with a zone (``fe80::1%eth0``; quoted), a DNS name no certificate may
            carry (RFC 5280 §4.2.1.6: not ASCII host-name syntax, or a wildcard that is
            not the whole leftmost label; quoted), a name the CA's name constraints
            forbid (RFC 5280 §4.2.1.10: outside its permitted or in its excluded
            subtrees; the extra DNS/IP names, the SPIFFE ID and the identity DNS name
            alike, named), an extra DNS name equal to or under ``svc.<td>`` other
            than the workload's own identity name (``userd.svc.<td>`` or ``*.svc.<td>``
            for ``orderd``: clients verify identity as that host name, so it would let
            the workload pass as another; quoted), a validity outliving the CA,
            ``ca_cert`` not a CA (``CA:TRUE`` with ``keyCertSign``) or ``ca_key`` not its
            key, or ``now`` not a ``datetime``.
        CertificateError: ``ca_cert`` names no SPIFFE trust domain, or its extensions
            are malformed.
    """
    dns = _name_list("dns", dns)
    ips = _name_list("ips", ips)
    _check_issuer(ca_key, ca_cert)
    td = trust_domain_of(ca_cert)
    sid = workload_id(td, service)
    ident = identity_dns_name(td, service)
    if len(ident) > _MAX_DNS_NAME:  # a 63-character label under a 200-character domain
        raise ConfigError(
            f"the identity DNS name of {service!r} in trust domain {td!r} would be "
            f"{len(ident)} characters, over the {_MAX_DNS_NAME} a DNS name may have "
            "(RFC 1034 §3.1): shorten the service name or the trust domain")
    start = _now(now)
    end = _end(start, "ttl_h", ttl_h, "hours")
    if end > ca_cert.not_valid_after_utc:
        raise ConfigError(
            f"a {ttl_h!r} h certificate would outlive the CA (valid until "
            f"{ca_cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z); renew the CA or shorten ttl_h"
        )
    permitted_dns, permitted_nets = _permitted(ca_cert)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(sid), x509.DNSName(ident)]
    for given in dns:
        d = _dns_san(given)
        if permitted_dns and not any(d == p or d.endswith("." + p) for p in permitted_dns):
            raise ConfigError(
                f"DNS name {d!r} is outside the CA's name constraints {permitted_dns!r}"
            )
        if d == ident:
            continue
        if foreign_identity_name(d, td, service):
            raise ConfigError(
                f"DNS name {d!r} is in the identity namespace svc.{td}, where only "
                f"{ident!r} may name {service!r}: it would let {service!r} pass as "
                "another workload"
            )
        names.append(x509.DNSName(d))
    for ip in ips:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError as exc:
            raise ConfigError(f"not an IP address: {ip!r}") from exc
        if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
            # an iPAddress SAN holds the 16 octets only (RFC 5280 §4.2.1.6): the zone
            # would be dropped, certifying another address than the one given
            raise ConfigError(f"IP {ip!r} has a zone (RFC 4007 §11), which a certificate's "
                              "iPAddress SAN cannot carry; give the address alone")
        if permitted_nets and not any(
            addr.version == n.version and addr in n for n in permitted_nets
        ):
            raise ConfigError(f"IP {ip!r} is outside the CA's name constraints")
        names.append(x509.IPAddress(addr))
    # every name against every subtree, permitted and excluded (the SPIFFE ID and the
    # identity name too), as peers check them (PeerVerifier): a certificate they would
    # all refuse is not written
    problem = _name_problem(_Anchor.of(ca_cert), names)
    if problem is not None:
        raise ConfigError(f"the CA's name constraints forbid this certificate: {problem} "
                          "(every peer would refuse it)")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshkit"),
            x509.NameAttribute(NameOID.COMMON_NAME, service),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _BACKDATE)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(sign_certs=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _name_list(what: str, names: Sequence[str]) -> Sequence[str]:
    """``names`` (a sequence of DNS names, IPs or networks), refusing one string: iterated,
    ``"localhost"`` would be the names ``l``, ``o``, ``c``..., each a valid one.

    Raises:
        ConfigError: ``names`` is a ``str`` or ``bytes``, or no sequence at all (``None``
            for "none": give ``()``; quoted).
    """
    if isinstance(names, (str, bytes)):
        raise ConfigError(f"{what} must be a sequence of names, e.g. ({names!r},), not one "
                          f"string: got {names!r}")
    if not isinstance(names, Iterable):
        raise ConfigError(f"{what} must be a sequence of names (() for none), got {names!r}")
    return tuple(names)


_DNS_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


_MAX_DNS_NAME = 253
"""Characters of a DNS name's text form, a trailing dot aside (RFC 1034 §3.1: 255 octets
on the wire)."""


def _dns_san(name: object) -> str:
    """``name`` as a certificate's dNSName: lower-case, without its trailing dot.

    RFC 5280 §4.2.1.6 wants the preferred name syntax (RFC 1034 §3.5 as modified by
    RFC 1123 §2.1): ASCII letters, digits and hyphens in labels of 1 to 63 characters,
    none starting or ending with a hyphen, at most 253 characters; an internationalized
    name goes in as its A-label (``xn--...``). A wildcard may only be the whole leftmost
    label (RFC 6125 §6.4.3: ``*.example``).

    Raises:
        ConfigError: ``name`` is no such name (quoted as given).
    """
    if not isinstance(name, str):
        raise ConfigError(f"DNS names must be strings, got {name!r}")
    d = name.lower()
    d = d[:-1] if d.endswith(".") else d
    labels = d.split(".")
    first = 1 if labels[0] == "*" and len(labels) > 1 else 0
    if len(d) > _MAX_DNS_NAME or not all(_DNS_LABEL_RE.fullmatch(label)
                                          for label in labels[first:]):
        raise ConfigError(
            f"DNS name {name!r} is not a host name a certificate may carry (RFC 5280 "
            "§4.2.1.6: ASCII letters, digits and '-' in non-empty labels of at most 63 "
            "characters, an internationalized name as its xn-- A-label, a wildcard only "
            "as the whole leftmost label)")
    return d


# -- files ----------------------------------------------------------------------------------
def _write(path: Path, data: bytes, *, mode: int, overwrite: bool) -> None:
    _write_all([(path, data, mode)], overwrite=overwrite)


def _write_all(files: Sequence[tuple[Path, bytes, int]], *, overwrite: bool) -> None:
    """Write each ``(path, data, mode)`` of ``files`` atomically, all of them written
    whole (and synced) before the first is put in place, in the order given: a write
    that fails (a full disk, a file size limit) leaves every path as it was, so a
    renewal never leaves a new key beside the old certificate. Writers into the same
    directory are serialised (an exclusive ``flock`` on it), so two renewals at once
    never leave one's key beside the other's certificate.

    A file that cannot be put in place after an earlier one was (the certificate after
    the key: EBUSY, EACCES) has the earlier ones put back as they were (copies staged
    with the new files, their owner and mode kept; a new one removed), so the pair in
    force still matches. With ``overwrite``, a path that is a symbolic link has the file
    it names written, the link kept (``os.replace`` would put a regular file in the
    link's place, the file it names left with the old content for everything else
    reading it).

    Raises:
        KeyExistsError: a path exists and ``overwrite`` is false (nothing written).
        OSError: a file could not be written or placed.
    """
    if overwrite:
        files = [(_link_target(path), data, mode) for path, data, mode in files]
    directories = list(dict.fromkeys(path.parent for path, _data, _mode in files))
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.ExitStack() as locks:
        # another writer into the directory (two renewals at once) waits: its key and
        # certificate never land between ours, leaving a pair that matches nothing
        for directory in sorted(directories):
            locks.enter_context(_directory_lock(directory))
        _write_locked(files, overwrite=overwrite)
    for directory in directories:
        _sync_directory(directory)


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``directory`` while the block runs (released when its
    descriptor is closed, also by the process ending); none where the system has no
    ``flock`` (Windows) or the file system refuses one (some network file systems)."""
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):  # refused: written unserialised, as before
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_locked(files: Sequence[tuple[Path, bytes, int]], *, overwrite: bool) -> None:
    """:func:`_write_all`'s writes, its directories locked."""
    for path, _data, _mode in files:
        if not overwrite and path.exists():
            raise KeyExistsError(f"{path} exists; refusing to overwrite it")
    # written whole to temporary files, then moved into place: a failed write leaves
    # nothing at any path, and without ``overwrite`` os.link refuses a file that appeared
    # meanwhile (as O_EXCL would)
    staged: list[Path] = []
    try:
        new = [_stage(staged, path, data, mode, keep=overwrite) for path, data, mode in files]
        # overwriting, the files in force but the last are staged too (copies, their
        # owner and mode kept): put back if a later one cannot be placed, so the pair in
        # force still matches (the last one, never replaced then, needs none)
        old: list[tuple[Path | None, bool]] = [
            _stage_old(staged, path, mode) if overwrite and i < len(files) - 1
            else (None, path.exists())
            for i, (path, _data, mode) in enumerate(files)]
        placed: list[tuple[Path, Path | None, bool]] = []  # (path, its old copy, existed)
        try:
            for (path, _data, _mode), tmp, (copy, existed) in zip(files, new, old,
                                                                  strict=True):
                if overwrite:
                    os.replace(tmp, path)
                    placed.append((path, copy, existed))
                else:
                    try:
                        os.link(tmp, path)
                    except FileExistsError:
                        raise KeyExistsError(f"{path} exists; refusing to overwrite it"
                                             ) from None
        except BaseException:
            _put_back(placed)
            raise
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)


def _stage(staged: list[Path], path: Path, data: bytes, mode: int, *, keep: bool) -> Path:
    """``data`` written whole and synced to a new temporary file beside ``path`` (mode
    ``mode``; ``keep``: the owner, group and mode of the file at ``path``), listed in
    ``staged`` (removed by the caller); returns its path."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    staged.append(tmp)
    with os.fdopen(fd, "wb") as f:
        if keep:
            _keep_access(fd, path, private=not mode & 0o077)
        f.write(data)
        f.flush()
        # the data on disk before its name: a power loss after the link/rename
        # otherwise can leave a key of zero bytes (ext4's delayed allocation
        # commits the new name first)
        os.fsync(f.fileno())
    return tmp


def _stage_old(staged: list[Path], path: Path, mode: int) -> tuple[Path | None, bool]:
    """A staged copy of the file now at ``path`` (see :func:`_stage`) to put back, and
    whether there is one: ``(None, False)`` when there is none; ``(None, True)`` when it
    cannot be read (it then cannot be put back)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, False
    except OSError:
        return None, True
    return _stage(staged, path, data, mode, keep=True), True


def _put_back(placed: Sequence[tuple[Path, Path | None, bool]]) -> None:
    """Undo the replacements ``placed`` (latest first): each path's old file back, a
    path that had none removed; best effort (the error that made it undo is raised)."""
    for path, copy, existed in reversed(placed):
        with contextlib.suppress(OSError):
            if copy is not None:
                os.replace(copy, path)
            elif not existed:
                path.unlink()


def _link_target(path: Path) -> Path:
    """The file ``path`` names: itself, or, a symbolic link to a file that exists, that
    file (every link followed, as ``open()`` does); a dangling link is replaced itself
    (nothing written, no directory made, where it points)."""
    return Path(os.path.realpath(path)) if path.is_symlink() and path.exists() else path


def _keep_access(fd: int, path: Path, *, private: bool) -> None:
    """Give the file open as ``fd`` (a renewal of ``path``, not yet written) the owner,
    group and permission bits of the ``path`` it replaces, so that a workload reading
    its files as another user than the renewing one (a key 0640 ``root:orderd``, or
    ``orderd``'s own) still can; a ``private`` key is never left readable by others.
    An owner the renewing user may not give (not root) is left as it is, the group
    tried alone; nothing is changed when ``path`` does not exist (a new file)."""
    try:
        st = os.stat(path)
    except OSError:
        return
    for uid, gid in ((st.st_uid, st.st_gid), (-1, st.st_gid)):
        try:
            os.fchown(fd, uid, gid)
        except (OSError, AttributeError):  # EPERM, or no fchown (Windows)
            continue
        break
    with contextlib.suppress(OSError, AttributeError):
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & (0o660 if private else 0o666))


def _sync_directory(directory: Path) -> None:
    """``fsync`` ``directory``, so the name just written there survives a power loss;
    a system or file system that cannot (a directory not openable, ``EINVAL``) is
    passed over: the file's data was synced already."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_private_key(
    path: str | os.PathLike[str], key: ec.EllipticCurvePrivateKey, *, overwrite: bool = False
) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM with mode 0600, atomically.

    Raises:
        KeyExistsError: ``path`` exists and ``overwrite`` is false.
        ConfigError: ``overwrite`` is not ``True`` or ``False`` (a string read from the
            environment, ``"false"``, is truthy; quoted), or ``path`` is no path
            (``None`` from an unset variable, ``bytes``, a number, or ``""``, which
            would be the current directory); nothing is written.
    """
    check_bool("overwrite", overwrite)
    _write(Path(check_path("path", path)), _key_pem(key), mode=0o600, overwrite=overwrite)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_certificate(
    path: str | os.PathLike[str],
    certs: x509.Certificate | Sequence[x509.Certificate],
    *,
    overwrite: bool = False,
) -> None:
    """Write a certificate (or a chain, leaf first) as PEM with mode 0644, atomically.

    Raises:
        KeyExistsError, ConfigError: as :func:`write_private_key` (``path`` exists and
            ``overwrite`` is false; ``overwrite`` no bool, or ``path`` no path: nothing is
            written).
    """
    check_bool("overwrite", overwrite)
    path = check_path("path", path)
    chain = [certs] if isinstance(certs, x509.Certificate) else list(certs)
    data = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    _write(Path(path), data, mode=0o644, overwrite=overwrite)


def _write_pair(key_file: Path, key: ec.EllipticCurvePrivateKey, cert_file: Path,
                cert: x509.Certificate, *, overwrite: bool) -> None:
    """Write a key (0600) and its certificate (0644), both whole before either is put
    in place (the key first): a failed write leaves the pair in force as it was.

    Raises:
        KeyExistsError: either exists and ``overwrite`` is false.
        OSError: a file could not be written.
    """
    _write_all([(key_file, _key_pem(key), 0o600),
                (cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)],
               overwrite=overwrite)


_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,40})-----")


def _why_unreadable(exc: OSError) -> str:
    """The OS's reason for ``exc`` (``No such file or directory``), else its type."""
    return exc.strerror or type(exc).__name__


def _why_not_pem(data: bytes, what: str, label: re.Pattern[bytes], der_hint: str) -> str:
    """Why ``data`` (a file's bytes) gave no PEM ``what`` (``"certificate"``,
    ``"private key"``; ``label`` matches its PEM header): empty, a PEM block of that kind
    that cannot be parsed, DER (binary: a SEQUENCE, ``0x30``, then bytes no text holds;
    ``der_hint`` the openssl command converting it), or the PEM labels it holds instead.
    Never quotes the data."""
    if not data.strip():
        return "the file is empty"
    if label.search(data):
        return f"the PEM {what} in it cannot be parsed (damaged or truncated)"
    if data[:1] == b"\x30" and any(b < 0x09 or b > 0x7E for b in data[:64]):
        # a SEQUENCE in binary (not the text "0...", which is 0x30 too)
        return f"it looks DER-encoded (binary), not PEM: convert it with {der_hint}"
    held = sorted({m.decode() for m in _PEM_LABEL.findall(data)})
    return f"no PEM {what} in it" + (f" (it holds {', '.join(held)})" if held else "")


def load_certificates(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    """All PEM certificates in ``path``, in file order.

    Raises:
        CertificateError: unreadable (the OS's reason: ``No such file or directory``),
            or holding no certificate: empty, DER (the openssl command converting it to
            PEM given), another PEM kind (its labels named), or a PEM certificate that
            cannot be parsed, the last one cut short included (a file read while it is
            rewritten in place: "damaged or truncated"; file named, content not).
        ConfigError: ``path`` is no path (``None`` from an unset variable, ``bytes``, a
            number: :func:`~meshkit._config.check_path`).
    """
    check_path("path", path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read certificates from {shown_path(path, quote=False)}: "
                               f"{_why_unreadable(exc)}") from None
    try:
        certs = load_pem_certificates(data)  # a last certificate cut short refused too
    except ValueError:
        why = _why_not_pem(data, "certificate", re.compile(rb"-----BEGIN CERTIFICATE-----"),
                           "openssl x509 -inform der -in FILE -out FILE.pem")
        raise CertificateError(f"cannot read certificates from "
                               f"{shown_path(path, quote=False)}: {why}") from None
    return certs


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """The first PEM certificate in ``path`` (the leaf of a chain).

    Raises:
        CertificateError: unreadable or no certificate.
        ConfigError: ``path`` is no path (``None`` from an unset variable, ``bytes``, a
            number).
    """
    return load_certificates(path)[0]


def _read_key(path: str | os.PathLike[str]) -> PrivateKeyTypes:
    """The unencrypted PEM private key in ``path``.

    Raises:
        CertificateError: unreadable (the OS's reason), encrypted, of a type cryptography
            does not support, or no PEM private key: empty, DER (the openssl command
            converting it given), another PEM kind (its labels named) or a PEM key that
            cannot be parsed. Never quotes the file's content.
        ConfigError: ``path`` is no path (``None`` from an unset variable, ``bytes``, a
            number).
    """
    check_path("path", path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read private key {shown_path(path, quote=False)}: "
                               f"{_why_unreadable(exc)}"
                               ) from None
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        why = ("it is encrypted: meshkit reads unencrypted keys (decrypt it with openssl "
               "pkey -in FILE -out FILE.new, kept mode 0600)")
    except UnsupportedAlgorithm:
        why = "its key type or curve is not supported"
    except ValueError:
        why = _why_not_pem(data, "private key",
                           re.compile(rb"-----BEGIN [A-Z ]{0,20}PRIVATE KEY-----"),
                           "openssl pkey -inform der -in FILE -out FILE.pem")
    raise CertificateError(f"cannot read private key {shown_path(path, quote=False)}: {why}")


def _key_kind(key: PrivateKeyTypes) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"EC {_CURVE_NAMES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA {key.key_size}-bit"
    return type(key).__name__.removeprefix("_").replace("PrivateKey", "")


_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_TLS_CURVES = frozenset({"secp256r1", "secp384r1"})
MIN_RSA_BITS = 2048
"""The smallest RSA workload key :func:`load_workload_key` takes (NIST SP 800-131A
disallows RSA under 2048 bits for signatures; the CA/Browser Forum baseline requires 2048)."""


def load_private_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePrivateKey:
    """An unencrypted PEM ECDSA private key from ``path`` (PKCS#8 or SEC 1): the mesh CA's
    key, and the key meshkit signs messages with (ECDSA). A workload's TLS key may also
    be RSA: :func:`load_workload_key`.

    Raises:
        CertificateError: unreadable, encrypted, or not an EC key (its type named; never
            quotes the key).
        ConfigError: ``path`` is no path (``None`` from an unset variable, ``bytes``, a
            number).
    """
    key = _read_key(path)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"private key {path} is not an ECDSA key "
                               f"({_key_kind(key)})")
    return key


def load_workload_key(path: str | os.PathLike[str]) -> WorkloadKey:
    """An unencrypted PEM private key for a workload's TLS certificate, from ``path``:
    ECDSA P-256 or P-384, or RSA of at least :data:`MIN_RSA_BITS` (2048) bits
    (cert-manager's default), in PKCS#8 (``BEGIN PRIVATE KEY``) or the traditional
    PKCS#1 / SEC 1 form (``BEGIN RSA PRIVATE KEY``, ``BEGIN EC PRIVATE KEY``).

    These are the keys grpcio's BoringSSL completes an mTLS handshake with: its default
    signature algorithms (RFC 8446 §4.2.3) offer ECDSA over P-256 and P-384 and RSA
    (PKCS#1 v1.5 and PSS), but neither ``ecdsa_secp521r1_sha512`` nor ``ed25519``, so a
    P-521 or Ed25519 certificate fails every handshake (``NO_COMMON_SIGNATURE_ALGORITHMS``,
    calls ``UNAVAILABLE``; measured with grpcio 1.85); they are refused here, when the
    options are built, instead.

    Raises:
        CertificateError: unreadable or encrypted, or another key type, curve or size
            (named, with the reason; never quotes the key).
        ConfigError: ``path`` is no path (``None`` from an unset variable, ``bytes``, a
            number).
    """
    key = _read_key(path)
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _TLS_CURVES:
        return key
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise CertificateError(
                f"private key {path} is {_key_kind(key)}: RSA workload keys must have at "
                f"least {MIN_RSA_BITS} bits (NIST SP 800-131A)")
        return key
    raise CertificateError(
        f"private key {path} is {_key_kind(key)}, which grpc's TLS (BoringSSL) cannot "
        "complete a handshake with: use an ECDSA P-256 or P-384 key, or RSA of at least "
        f"{MIN_RSA_BITS} bits")


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadFiles:
    """Where a workload's (or the CA's) files are.

    Attributes:
        ca_file: the CA certificate (trust bundle), PEM.
        cert_file: the certificate, PEM.
        key_file: the private key, PEM, mode 0600.
    """

    ca_file: Path
    cert_file: Path
    key_file: Path


def init_ca_dir(
    directory: str | os.PathLike[str],
    *,
    trust_domain: str,
    ttl_days: float = 365.0,
    permitted_dns: Sequence[str] = ("localhost",),
    overwrite: bool = False,
    now: dt.datetime | None = None,
) -> WorkloadFiles:
    """Create a CA in ``directory`` (``ca.key`` 0600, ``ca.pem``); see :func:`create_ca`.
    Both files are written whole before either is put in place: a write that fails (a
    full disk) leaves the CA in force as it was.

    Returns:
        :class:`WorkloadFiles` with ``cert_file == ca_file``.

    Raises:
        KeyExistsError: ``ca.key`` or ``ca.pem`` exists there and ``overwrite`` is false
            (a host holding only the trust bundle ``ca.pem`` is the normal deployment).
        ConfigError: bad arguments; ``overwrite`` not ``True`` or ``False`` (a string
            read from the environment, ``"false"``, is truthy: it would replace the CA
            key; quoted, nothing written); ``directory`` no path (``None`` from an
            unset variable, ``bytes``, a number, or ``""``, which would be the current
            directory).
    """
    check_bool("overwrite", overwrite)
    d = Path(check_path("directory", directory))
    key, cert = create_ca(trust_domain=trust_domain, ttl_days=ttl_days,
                          permitted_dns=permitted_dns, now=now)
    if not overwrite:
        for existing in (d / CA_KEY, d / CA_CERT):
            if existing.exists():
                raise KeyExistsError(f"{existing} exists; refusing to overwrite it (--force)")
    _write_pair(d / CA_KEY, key, d / CA_CERT, cert, overwrite=overwrite)
    return WorkloadFiles(ca_file=d / CA_CERT, cert_file=d / CA_CERT, key_file=d / CA_KEY)


def _certificate_of(key: ec.EllipticCurvePrivateKey, certs: Sequence[x509.Certificate]
                    ) -> x509.Certificate:
    """The certificate of ``key`` among ``certs`` (a ``ca.pem`` bundle: a CA renewed with
    its key beside the old certificate, or another CA trusted too), the one valid the
    longest when several are; the first of ``certs`` when none is (which the issuer then
    refuses as not matching the key)."""
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    spki = key.public_key().public_bytes(der, pub)
    own = [c for c in certs if c.public_key().public_bytes(der, pub) == spki]
    return max(own, key=lambda c: c.not_valid_after_utc) if own else certs[0]


def issue_into_dir(
    directory: str | os.PathLike[str],
    service: str,
    *,
    ttl_h: float = 24.0,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    overwrite: bool = False,
    now: dt.datetime | None = None,
) -> WorkloadFiles:
    """Issue ``<service>.pem`` / ``<service>.key`` (0600) with the CA in ``directory``.

    When overwriting (renewal), both files are written whole before either is replaced
    (a write that fails, on a full disk, leaves the pair in force as it was), then the
    key is replaced before the certificate; readers such as
    :meth:`TLSOptions.server_credentials` skip the moment where they disagree.

    ``ca.pem`` may be a bundle (a CA renewed with its key beside the old certificate
    during a rotation, another CA trusted too): the issuer is the certificate of
    ``ca.key`` in it, the one valid the longest.

    Returns:
        The :class:`WorkloadFiles` of the workload.

    Raises:
        KeyExistsError: the workload's key or certificate exists and ``overwrite`` is
            false.
        CertificateError: no CA in ``directory`` (run ``meshkit certs init``).
        ConfigError: bad arguments (see :func:`issue_workload`), a ``service`` whose
            files would be the CA's own (``ca``), or ``overwrite`` not ``True`` or
            ``False`` (a string read from the environment, ``"false"``, is truthy;
            quoted, nothing written); ``directory`` no path (``None`` from an unset
            variable, ``bytes``, a number, or ``""``, which would be the current
            directory).
    """
    check_bool("overwrite", overwrite)
    d = Path(check_path("directory", directory))
    if f"{service}.pem" == CA_CERT or f"{service}.key" == CA_KEY:
        # its files would be the CA's own: --force would replace the CA key with a leaf's
        raise ConfigError(f"service {service!r} would write over the CA's files "
                          f"({CA_CERT}, {CA_KEY}) in {str(d)!r}; name the workload otherwise")
    ca_key = load_private_key(d / CA_KEY)
    ca_cert = _certificate_of(ca_key, load_certificates(d / CA_CERT))
    key, cert = issue_workload(ca_key, ca_cert, service, ttl_h=ttl_h, dns=dns, ips=ips, now=now)
    files = WorkloadFiles(ca_file=d / CA_CERT, cert_file=d / f"{service}.pem",
                          key_file=d / f"{service}.key")
    if not overwrite:
        for existing in (files.key_file, files.cert_file):
            if existing.exists():
                raise KeyExistsError(f"{existing} exists; refusing to overwrite it (--force)")
    _write_pair(files.key_file, key, files.cert_file, cert, overwrite=overwrite)
    return files


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateInfo:
    """What :func:`describe_certificate` reports about a certificate.

    Attributes:
        subject, issuer: RFC 4514 strings.
        spiffe_id: the certificate's SPIFFE ID: its URI SAN when it has exactly one and
            that is a valid SPIFFE ID (X.509-SVID §2, SPIFFE ID §2), else ``None`` (a
            second URI, or a malformed ID such as an empty path segment, makes no SVID;
            ``uris`` still lists them).
        uris, dns_names, ip_addresses: the SANs by type.
        not_before, not_after: validity bounds (UTC).
        serial: the serial number as hex.
        fingerprint_sha256: colon-separated SHA-256 of the DER encoding.
        is_ca: ``basicConstraints CA:TRUE``.
        name_constraints: permitted subtrees as strings (CA certificates).
    """

    subject: str
    issuer: str
    spiffe_id: str | None
    uris: tuple[str, ...]
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    serial: str
    fingerprint_sha256: str
    is_ca: bool
    name_constraints: tuple[str, ...]

    def lines(self) -> list[str]:
        """Human-readable ``key: value`` lines (what ``meshkit certs inspect`` prints)."""
        out = [
            f"subject:       {self.subject}",
            f"issuer:        {self.issuer}",
            f"spiffe id:     {self.spiffe_id or '-'}",
            f"uri sans:      {', '.join(self.uris) or '-'}",
            f"dns sans:      {', '.join(self.dns_names) or '-'}",
            f"ip sans:       {', '.join(self.ip_addresses) or '-'}",
            f"not before:    {self.not_before.isoformat()}",
            f"not after:     {self.not_after.isoformat()}",
            f"serial:        {self.serial}",
            f"sha256:        {self.fingerprint_sha256}",
            f"ca:            {'yes' if self.is_ca else 'no'}",
        ]
        if self.name_constraints:
            out.append(f"permitted:     {', '.join(self.name_constraints)}")
        return out


def describe_certificate(cert: x509.Certificate) -> CertificateInfo:
    """Summarise ``cert``: subject, issuer, SANs incl. SPIFFE ID, validity, fingerprint.

    Raises:
        CertificateError: the certificate's extensions are malformed (e.g. a one-byte
            iPAddress SAN, RFC 5280 §4.2.1.6, or one extension twice, §4.2); the message
            names the error cryptography raised.
        ConfigError: ``cert`` is no ``x509.Certificate`` (its PEM text or bytes, a path:
            :func:`load_certificate` reads one; named by its type).
    """
    if not isinstance(cert, x509.Certificate):
        raise ConfigError("cert must be an x509.Certificate (load_certificate(path) reads "
                          f"one), got a {type(cert).__name__}")
    san = _extension(cert, x509.SubjectAlternativeName)
    uris: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    if san is not None:
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(i) for i in san.get_values_for_type(x509.IPAddress))
    spiffe_id = None
    if len(uris) == 1:  # X.509-SVID §2: exactly one URI SAN, a valid SPIFFE ID
        try:
            spiffe_id = str(SpiffeId.parse(uris[0]))
        except ConfigError:
            spiffe_id = None
    bc = _extension(cert, x509.BasicConstraints)
    is_ca = bc is not None and bc.ca
    nc = _extension(cert, x509.NameConstraints)
    permitted = () if nc is None else tuple(
        f"{type(s).__name__}:{s.value}" for s in (nc.permitted_subtrees or ()))
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        spiffe_id=spiffe_id,
        uris=uris,
        dns_names=dns,
        ip_addresses=ips,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        serial=f"{cert.serial_number:x}",
        fingerprint_sha256=":".join(digest[i:i + 2] for i in range(0, len(digest), 2)),
        is_ca=is_ca,
        name_constraints=permitted,
    )
