"""Workload identities: SPIFFE IDs, their DNS identity names, and ``*`` patterns.

A meshkit workload ``<service>`` in trust domain ``<td>`` is named twice in its
certificate (SPIFFE X.509-SVID, https://github.com/spiffe/spiffe/blob/main/standards/):

* URI SAN ``spiffe://<td>/svc/<service>`` — the SPIFFE ID, the identity servers authorize;
* DNS SAN ``<service>.svc.<td>`` — the *identity name*, which clients verify as the TLS
  host name (``grpc.ssl_target_name_override``), because grpcio's Python API has no
  custom peer-verification hook. The CA's name constraints and meshkit's issuer keep the
  two names in step: one exists only together with the other. The issuer writes into
  ``svc.<td>`` only the workload's own identity name (another workload's, or a wildcard
  such as ``*.svc.<td>``, is refused: :func:`foreign_identity_name`), and
  ``TLSOptions``/:class:`PeerVerifier` refuse a certificate carrying one. A client cannot
  re-check a *server's* certificate (no hook), so a certificate made with the CA key by
  other means than meshkit's issuer is trusted for the names it carries.

Only ``spiffe://<td>/svc/<label>`` (exactly two path segments, the second one lowercase
DNS label) is a workload; any other SPIFFE ID (``/svc/orderd/extra``, ``/svc/Orderd``,
``/ns/x``) names no workload, and :class:`PeerVerifier` refuses it as a peer.

:class:`PeerVerifier` re-checks, per distinct peer certificate (cached), what grpcio's
BoringSSL does not: it accepts a leaf issued by a CA of the trust bundle, directly or
through intermediate CAs the peer presented, only along a path that keeps every CA's
``pathlen`` (the trust anchor's too: the mesh CA is ``pathlen:0``, and BoringSSL ignores a
trust anchor's path length), basicConstraints, keyUsage and name constraints.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import ipaddress
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast
from urllib.parse import urlsplit

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from meshkit._config import check_int, check_number, check_path, refuse_str
from meshkit._outage import OutageLog
from meshkit.auth._errors import CertificateError
from meshkit.errors import ConfigError

__all__ = [
    "DEFAULT_TRUST_DOMAIN",
    "IdentityMatcher",
    "PeerIdentity",
    "PeerVerifier",
    "SpiffeId",
    "default_peer_verifier",
    "foreign_identity_name",
    "foreign_pattern_domain",
    "identity_dns_name",
    "load_pem_certificates",
    "peer_from_identities",
    "validate_service_label",
    "validate_trust_domain",
    "workload_id",
]

# path validation's extension policies: none beyond what RFC 5280 §6 itself checks (a CA's
# basicConstraints, whose cA flag and path length the path builder enforces, either
# criticality; meshkit's own checks of every CA and of the leaf follow the path)
_RFC5280_CA = ExtensionPolicy.permit_all().require_present(
    x509.BasicConstraints, Criticality.AGNOSTIC, None)
_RFC5280_EE = ExtensionPolicy.permit_all()

DEFAULT_TRUST_DOMAIN = "meshkit.local"
"""Trust domain used when none is given (``certs init`` and :class:`TLSOptions`)."""

# Validating patterns are applied with fullmatch() only: ``$`` also matches before a
# final newline, so ``re.match("^x$", "x\n")`` succeeds (``orderd\n`` would be a workload).
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_LABEL_RE = re.compile(_LABEL)
_TD_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")
_TD_CHARS_RE = re.compile(r"[a-z0-9._-]+")
_URI_SCHEME_RE = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*:")
_MAX_ID_BYTES = 2048
_MIN_RSA_BITS = 2048  # a peer's RSA leaf key (NIST SP 800-131A; _certs.MIN_RSA_BITS, own keys)
_MAX_TD_BYTES = 255  # SPIFFE ID §2.3: the URI host's bound (RFC 3986)
_PEM_BEGIN = b"-----BEGIN "
_PEM_END_RE = re.compile(rb"-----END [^-\r\n]+-----")
_PEM_CERT_BEGIN = b"-----BEGIN CERTIFICATE-----"


class _CutShort(ValueError):
    """A PEM file's last block is cut short (:func:`load_pem_certificates`)."""


def load_pem_certificates(data: bytes) -> list[x509.Certificate]:
    """The PEM certificates in ``data``, in order, refusing a file cut short.

    ``cryptography`` skips a last PEM block without a complete ``-----END ...-----``
    line (RFC 7468 §2): a bundle rewritten in place and read half-way, or one whose last
    line was lost, would read as the certificates before it, trusting fewer CAs (or
    presenting fewer intermediates) in silence.

    Raises:
        ValueError: no PEM certificate, a damaged one, or a last PEM block cut short
            (never quoting the data).
    """
    certs = x509.load_pem_x509_certificates(data)
    begin = data.rfind(_PEM_BEGIN)
    if begin >= 0 and _PEM_END_RE.search(data, begin) is None:
        raise _CutShort("the last PEM block has no END line (damaged or truncated)")
    last = data.rstrip().rpartition(b"\n")[2].strip()
    # five dashes at least: a shorter line of dashes is a separator (openssl s_client's
    # ---), and a file cut that early reads as the certificates before it anyway, as
    # one cut between two blocks does
    if 5 <= len(last) < len(_PEM_CERT_BEGIN) and _PEM_CERT_BEGIN.startswith(last):
        raise _CutShort("the file ends inside a BEGIN line (damaged or truncated)")
    return certs


def validate_trust_domain(trust_domain: str) -> str:
    """Return ``trust_domain`` if it is a lowercase DNS name usable as a SPIFFE trust domain.

    meshkit is stricter than SPIFFE (which also allows ``_``) because the trust domain is
    part of every workload's DNS identity name.

    Raises:
        ConfigError: not a lowercase DNS name of at most 200 characters (value quoted).
    """
    if not isinstance(trust_domain, str) or len(trust_domain) > 200 or not _TD_RE.fullmatch(
        trust_domain
    ):
        raise ConfigError(
            f"trust domain must be a lowercase DNS name like 'meshkit.local', got {trust_domain!r}"
        )
    return trust_domain


def validate_service_label(service: str) -> str:
    """Return ``service`` if it can name a workload: one lowercase DNS label (RFC 1123).

    Raises:
        ConfigError: not ``[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`` (value quoted).
    """
    if not isinstance(service, str) or not _LABEL_RE.fullmatch(service):
        raise ConfigError(
            "workload service names must be one lowercase DNS label "
            f"([a-z0-9-], at most 63 characters), got {service!r}"
        )
    return service


def workload_id(trust_domain: str, service: str) -> str:
    """The SPIFFE ID of ``service``: ``spiffe://<trust_domain>/svc/<service>``.

    Raises:
        ConfigError: bad trust domain or service name.
    """
    return f"spiffe://{validate_trust_domain(trust_domain)}/svc/{validate_service_label(service)}"


def identity_dns_name(trust_domain: str, service: str) -> str:
    """The DNS identity name of ``service``: ``<service>.svc.<trust_domain>``.

    Clients verify it as the server's host name; see the module docstring.

    Raises:
        ConfigError: bad trust domain or service name.
    """
    return f"{validate_service_label(service)}.svc.{validate_trust_domain(trust_domain)}"


def foreign_identity_name(dns_name: str, trust_domain: str, service: str) -> bool:
    """Whether ``dns_name`` in a certificate of workload ``service`` lies in the identity
    namespace ``svc.<trust_domain>`` (the zone itself or any name below it, wildcards
    included: ``userd.svc.<td>``, ``*.svc.<td>``) without being the workload's own
    identity name ``<service>.svc.<trust_domain>``. Such a name would let the workload
    pass a client's host-name check as another workload (see the module docstring), so
    the issuer refuses to write it and :class:`PeerVerifier` / ``TLSOptions`` refuse a
    certificate carrying it. Compared case-insensitively, a trailing dot ignored."""
    zone = f"svc.{trust_domain}"
    name = dns_name.lower().rstrip(".")
    return (name == zone or name.endswith("." + zone)) and name != f"{service}.{zone}"


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A parsed SPIFFE ID (SPIFFE ID standard §2): ``spiffe://<trust_domain><path>``.

    Attributes:
        trust_domain: e.g. ``"meshkit.local"``.
        path: ``""`` for a trust domain's own ID, else ``"/svc/orderd"``-like.
    """

    trust_domain: str
    path: str

    @classmethod
    def parse(cls, value: str | bytes) -> SpiffeId:
        """Parse and validate ``value`` (str or UTF-8 bytes).

        Raises:
            ConfigError: not a valid SPIFFE ID: wrong scheme, upper-case or bad trust
                domain, empty / ``.`` / ``..`` path segments, query, fragment, port,
                user info, any character outside ``[a-z0-9._-]`` in the trust domain or
                ``[A-Za-z0-9._-]`` in a path segment (SPIFFE ID §2.1, §2.2; so also a
                trailing newline, or a lone surrogate), longer than 2048 bytes, or with
                a trust domain longer than 255 bytes (§2.3); ``value`` neither ``str``
                nor ``bytes`` (named by its type).
        """
        if isinstance(value, bytes):
            text = value.decode("utf-8", "replace")
        elif isinstance(value, str):
            text = value
        else:
            raise ConfigError(f"a SPIFFE ID is a str or bytes, got a {type(value).__name__}")
        # surrogatepass: a lone surrogate (a non-UTF-8 byte's escape, os.environ) counts
        # its three bytes here and is refused below as a character outside the grammar
        if len(text.encode("utf-8", "surrogatepass")) > _MAX_ID_BYTES or not text.startswith(
                "spiffe://"):
            raise ConfigError(f"not a SPIFFE ID: {text[:100]!r}")
        rest = text[len("spiffe://"):]
        td, slash, path = rest.partition("/")
        if not td or len(td) > _MAX_TD_BYTES or not _TD_CHARS_RE.fullmatch(td):
            raise ConfigError(f"bad SPIFFE trust domain in {text[:100]!r}")
        if slash:
            for seg in path.split("/"):
                if seg in ("", ".", "..") or not _SEGMENT_RE.fullmatch(seg):
                    raise ConfigError(f"bad SPIFFE ID path in {text[:100]!r}")
        return cls(td, "/" + path if slash else "")

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"

    @property
    def service(self) -> str | None:
        """The workload service name when the path is exactly ``/svc/<service>`` with
        ``<service>`` one lowercase DNS label, else ``None`` (``/svc/orderd/extra``,
        ``/svc/Orderd`` and ``/ns/x`` name no workload)."""
        parts = self.path.split("/")
        if len(parts) == 3 and parts[1] == "svc" and _LABEL_RE.fullmatch(parts[2]):
            return parts[2]
        return None


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """The verified identity of the peer of a server call (from its client certificate).

    Attributes:
        spiffe_id: the peer's SPIFFE ID, e.g. ``spiffe://meshkit.local/svc/orderd``.
        trust_domain: its trust domain.
        service: the workload service name (``/svc/<service>`` IDs); ``None`` only for
            identities built by hand — :class:`PeerVerifier` and
            :func:`peer_from_identities` yield workloads only.
    """

    spiffe_id: str
    trust_domain: str
    service: str | None


#: ``peer_identity_key()`` of a call whose names are the certificate's subject
#: alternative names; grpc says ``x509_common_name`` when it fell back to the subject CN
#: (a certificate with no SAN).
_SAN_IDENTITY_KEY = "x509_subject_alternative_name"

#: ``identity_key`` not given.
_NOT_GIVEN = cast(str, object())


class _PeerNames(Protocol):
    """What :func:`peer_from_identities` reads of a ``grpc.aio`` server call's context."""

    def peer_identities(self) -> Iterable[bytes] | None: ...
    def peer_identity_key(self) -> str | None: ...


def peer_from_identities(identities: Iterable[bytes] | _PeerNames | None, *,
                         identity_key: str | bytes | None = _NOT_GIVEN
                         ) -> PeerIdentity | None:
    """The workload identity among a certificate's subject alternative names, or ``None``.

    This reads names only; it does not look at the certificate chain. Server interceptors
    use :class:`PeerVerifier`, which also refuses chains the mesh CA forbids.

    grpc's ``context.peer_identities()`` is the certificate's subject alternative names,
    but for a certificate with none it falls back to the subject CN (and
    ``context.peer_identity_key()`` says ``x509_common_name``): a certificate whose CN
    reads ``spiffe://<td>/svc/admin`` would be taken for ``admin``, while a SPIFFE ID is
    only ever a URI SAN (X.509-SVID §2). So pass the call's context itself
    (``peer_from_identities(context)``), or the key along with the names
    (``identity_key=context.peer_identity_key()``): names of any key but
    ``x509_subject_alternative_name`` then yield ``None``. Given the names alone, a CN
    cannot be told from a URI SAN.

    Args:
        identities: a ``grpc.aio`` server call's context (anything with
            ``peer_identities()`` and ``peer_identity_key()``), or its
            ``context.peer_identities()`` (the certificate's subject alternative names
            as bytes), or ``None`` for a plaintext or certificate-less peer.
        identity_key: ``context.peer_identity_key()`` of the call the names are of
            (``str`` or ``bytes``; ``None`` for a call without them: no identity); not
            given, the names are taken as subject alternative names.

    Returns:
        The identity when the names are subject alternative names, there is exactly one
        URI SAN (X.509-SVID §2 requires exactly one, whatever its scheme) and it is a
        valid workload ID ``spiffe://<td>/svc/<service>``, else ``None``. grpc gives the
        names without their types, so a URI is told by its scheme
        (``[A-Za-z][A-Za-z0-9+.-]*:``, RFC 3986 §3.1); IP addresses (``fe80::1`` too)
        and DNS names are not URIs.
    """
    if hasattr(identities, "peer_identity_key") and hasattr(identities, "peer_identities"):
        context = cast(_PeerNames, identities)
        identity_key = context.peer_identity_key()
        identities = context.peer_identities()
    if identity_key is not _NOT_GIVEN:
        if isinstance(identity_key, bytes):
            identity_key = identity_key.decode("ascii", "replace")
        if identity_key != _SAN_IDENTITY_KEY:  # the CN fallback, or no key at all
            return None
    if not identities:
        return None
    found = [i for i in identities if _is_uri(i)]
    if len(found) != 1 or not found[0].startswith(b"spiffe://"):
        return None
    try:
        sid = SpiffeId.parse(found[0])
    except ConfigError:
        return None
    if sid.service is None:
        return None
    return PeerIdentity(str(sid), sid.trust_domain, sid.service)


def _is_uri(name: bytes) -> bool:
    """Whether a SAN value from ``peer_identities()`` is a URI: it starts with a scheme
    and is no IP address (an IPv6 address such as ``fe80::1`` looks like one)."""
    if _URI_SCHEME_RE.match(name) is None:
        return False
    try:
        ipaddress.ip_address(name.decode("ascii", "replace"))
    except ValueError:
        return True
    return False


def _glob(pattern: str) -> re.Pattern[str]:
    """``pattern`` (``*``: any run of characters but ``/``) as a regex, for fullmatch."""
    return re.compile("[^/]*".join(re.escape(part) for part in pattern.split("*")))


def _glob_matches(parts: tuple[str, ...], text: str) -> bool:
    """Whether ``text`` matches the pattern ``"*".join(parts)`` (``len(parts) >= 2``),
    ``*`` being any run of characters (``/`` included: callers split on ``/`` first when
    it must not cross one): the first piece a prefix, the last a suffix, the others found
    in order between them (the leftmost find never loses a match). Time linear in
    ``text`` per piece, where a regex backtracks polynomially (``"a*a*a*b"``)."""
    first, last = parts[0], parts[-1]
    end = len(text) - len(last)
    if end < len(first) or not text.startswith(first) or not text.endswith(last):
        return False
    pos = len(first)
    for piece in parts[1:-1]:
        found = text.find(piece, pos, end)
        if found < 0:
            return False
        pos = found + len(piece)
    return True


def _segments_match(pattern: tuple[tuple[str, ...], ...], segments: list[str]) -> bool:
    """Whether each of ``segments`` (an identity split on ``/``) matches the same-index
    segment of ``pattern`` (a pattern split on ``/``, then each segment on ``*``: one
    piece is a literal segment); the caller checked the counts are equal."""
    for parts, text in zip(pattern, segments, strict=True):
        if len(parts) == 1:
            if parts[0] != text:
                return False
        elif not _glob_matches(parts, text):
            return False
    return True


def foreign_pattern_domain(pattern: str, trust_domains: Iterable[str]) -> str | None:
    """The trust domain of the peer pattern ``pattern`` (``spiffe://<td>/svc/<service>``,
    ``*`` wildcards, the shape :class:`IdentityMatcher` with ``peers=True`` checked) when
    it can match none of ``trust_domains``, else ``None`` (``"*"`` matches every one).
    Peer checks refuse a peer of another trust domain before they read their patterns,
    so such a pattern (a typo: ``meshkit.locl``) matches no one: the callers of
    :class:`TLSOptions`' ``allowed_peers``, :class:`AuthzPolicy`'s peer patterns and
    ``MessageVerifier``'s ``allowed_publishers`` refuse it (``ConfigError``)."""
    if pattern == "*":
        return None
    domain = pattern[len("spiffe://"):].split("/", 1)[0]
    glob = _glob(domain)
    return None if any(glob.fullmatch(td) for td in trust_domains) else domain


_PEER_SHAPE = "spiffe://<trust domain>/svc/<service>, or '*'"


def peer_pattern_problem(pattern: str) -> str | None:
    """Why the SPIFFE ID pattern ``pattern`` (``*`` wildcards that never cross ``/``)
    can match no workload identity, or ``None`` when it can. A peer's identity, as
    :class:`PeerVerifier` yields it, is always ``spiffe://<trust domain>/svc/<service>``
    with a lower-case trust domain (SPIFFE ID §2.1) and a lower-case DNS label for the
    service; a pattern of another shape (an upper-case trust domain, a trailing ``/``,
    no ``/svc/``, a Kubernetes-style ``/ns/x/sa/y`` path, no ``spiffe://``) matches
    nothing, so in a deny list it would refuse no one."""
    if pattern == "*":
        return None
    if not pattern.startswith("spiffe://"):
        return f"not a SPIFFE ID pattern ({_PEER_SHAPE})"
    parts = pattern[len("spiffe://"):].split("/")
    if len(parts) != 3:
        return (f"a workload's SPIFFE ID is {_PEER_SHAPE}, and '*' never crosses a '/'")
    td, svc, service = parts
    if not td or not re.fullmatch(r"[a-z0-9._*-]+", td):
        return "the trust domain must be lower-case letters, digits, '.', '-', '_' or '*'"
    if _glob(svc).fullmatch("svc") is None:
        return f"the path must be /svc/<service> ({_PEER_SHAPE})"
    if not re.fullmatch(r"[a-z0-9*-]+", service) or (
            "*" not in service and not _LABEL_RE.fullmatch(service)):
        return "the service must be a lower-case DNS label ('*' wildcards allowed)"
    return None


class IdentityMatcher:
    """Matches identities (SPIFFE IDs or JWT subjects) against ``*`` patterns, split once.

    A pattern is an exact string in which ``*`` stands for any run of characters other
    than ``/`` — it never crosses a path segment — except that the pattern ``"*"`` alone
    matches every identity. So ``"spiffe://meshkit.local/svc/*"`` matches every workload
    of the trust domain and not ``spiffe://meshkit.local/svc/orderd/extra`` (no
    workload); with ``peers=True`` a pattern that can match no workload
    (``"spiffe://meshkit.local/*"``, see :func:`peer_pattern_problem`) is refused.
    A match takes time linear in the identity's length per pattern (no regex: a ``sub``
    the issuer signed for a user-chosen name cannot make it backtrack).

    Args:
        patterns: the patterns; an empty sequence matches nothing.
        where: the field the patterns come from, named in errors (default
            ``"patterns"``).
        peers: the patterns are matched against peers' SPIFFE IDs (default ``False``:
            JWT subjects, any string): each must be able to match a workload's ID, so
            that a typo in a deny list cannot refuse no one in silence.

    Raises:
        ConfigError: ``patterns`` is one string (split into its characters it would hold
            ``"*"`` and match every identity), a pattern is not a non-empty string, or
            (``peers=True``) a pattern can match no workload (quoted, with why).
    """

    __slots__ = ("_any", "_exact", "_patterns", "_wild")

    def __init__(self, patterns: Sequence[str], *, where: str = "patterns",
                 peers: bool = False) -> None:
        refuse_str(where, patterns)
        self._patterns = tuple(patterns)
        exact: set[str] = set()
        # each wildcard pattern as (its literal head before the first '*', its literal
        # tail after the last, whether it has one '*', its '/'-segments each split on
        # '*'): '*' never crosses a '/', so a match pairs the segments one to one
        wild: list[tuple[str, str, bool, tuple[tuple[str, ...], ...]]] = []
        for p in self._patterns:
            if not isinstance(p, str) or not p:
                raise ConfigError(f"identity patterns must be non-empty strings, got {p!r}")
            problem = peer_pattern_problem(p) if peers else None
            if problem is not None:
                raise ConfigError(f"{where}: {p!r} can match no peer: {problem}")
            if "*" in p:
                pieces = p.split("*")
                segments = tuple(tuple(seg.split("*")) for seg in p.split("/"))
                wild.append((pieces[0], pieces[-1], len(pieces) == 2, segments))
            else:
                exact.add(p)
        self._any = "*" in self._patterns
        self._exact = frozenset(exact)
        self._wild = tuple(wild)

    @property
    def patterns(self) -> tuple[str, ...]:
        """The patterns as given."""
        return self._patterns

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def matches(self, identity: str | None) -> bool:
        """Whether ``identity`` matches one of the patterns (``None`` never matches)."""
        if identity is None:
            return False
        if self._any or identity in self._exact:
            return True
        # segment by segment, each in linear time: a regex ('[^/]*' per '*') backtracks
        # polynomially ("a*a*a*b" against a 2,000-character sub: over a second per call)
        split: list[str] | None = None
        for head, tail, single, segments in self._wild:
            end = len(identity) - len(tail)
            if end < len(head) or not identity.startswith(head) or not identity.endswith(tail):
                continue
            if single:  # one '*': what lies between head and tail holds no '/'
                if identity.find("/", len(head), end) < 0:
                    return True
                continue
            if split is None:
                split = identity.split("/")
            if len(split) == len(segments) and _segments_match(segments, split):
                return True
        return False

    def __repr__(self) -> str:
        return f"IdentityMatcher({list(self._patterns)!r})"


# -- peer certificate verification ---------------------------------------------------------
_log = structlog.get_logger("meshkit.auth")

MALFORMED_EXTENSION_ERRORS: tuple[type[Exception], ...] = (
    ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType)
"""What ``cryptography`` raises when a certificate's extensions are read (lazily, on the
first ``cert.extensions``) and they are malformed: ``ValueError`` (a bad value, e.g. a
one-byte iPAddress SAN, RFC 5280 §4.2.1.6), ``x509.DuplicateExtension`` (one extension
twice, which RFC 5280 §4.2 forbids; no ValueError) and ``x509.UnsupportedGeneralNameType``.
Every place meshkit reads extensions of a certificate it did not make catches these."""

_CERT_KEY = "x509_pem_cert"
_CHAIN_KEY = "x509_pem_cert_chain"
_CLIENT_AUTH = (ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE)
_NOT_DIRECT = "not issued directly by a CA of the trust bundle"
_NO_PATH = (f"{_NOT_DIRECT}, and it presented no intermediate CA to reach one through "
            "(a meshkit CA is pathlen:0: no intermediate CA may sit between it and a workload)")
_BUNDLELESS = ("the peer presented an intermediate CA certificate, which cannot be checked "
               "without a trust bundle (a meshkit CA is pathlen:0, and BoringSSL does not "
               f"apply a trust anchor's path length): {_NOT_DIRECT}")


class _Refused(Exception):
    """A peer certificate failed a check: ``reason`` for logs, ``[since, until)`` (epoch
    seconds) the times the verdict holds for whatever the clock does (it may change on
    its own outside them: ``-inf``/``inf`` when only a new trust bundle changes it; a
    clock stepped back past ``since`` gets a fresh check), ``by_path``: whether the
    verdict depends on the other certificates the peer presented (else it holds for the
    leaf whatever it presents with it)."""

    def __init__(self, reason: str, until: float = math.inf, *, since: float = -math.inf,
                 unknown_issuer: bool = False, by_path: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.since = since
        self.until = until
        self.unknown_issuer = unknown_issuer
        self.by_path = by_path


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


@dataclass(frozen=True, slots=True)
class _Anchor:
    """A CA certificate of the trust bundle with what the checks need, computed once."""

    cert: x509.Certificate
    problem: str | None  # why it may not issue workload certificates, else None
    trust_domain: str | None
    permitted: tuple[x509.GeneralName, ...] | None  # None: no permitted subtrees at all
    excluded: tuple[x509.GeneralName, ...]
    not_before: float
    not_after: float

    @classmethod
    def of(cls, cert: x509.Certificate) -> _Anchor:
        problem = None
        try:
            bc = _ext(cert, x509.BasicConstraints)
            ku = _ext(cert, x509.KeyUsage)
            nc = _ext(cert, x509.NameConstraints)
            san = _ext(cert, x509.SubjectAlternativeName)
        except MALFORMED_EXTENSION_ERRORS as exc:  # duplicate or malformed extensions
            bc = ku = nc = san = None
            problem = f"the CA certificate has malformed extensions ({type(exc).__name__})"
        if problem is None and not (isinstance(bc, x509.BasicConstraints) and bc.ca):
            problem = "the trusted certificate is not a CA (basicConstraints CA:FALSE or absent)"
        elif problem is None and isinstance(ku, x509.KeyUsage) and not ku.key_cert_sign:
            problem = "the CA's key usage does not allow signing certificates (keyCertSign)"
        if problem is None:  # as the path validation refuses one above an intermediate
            problem = _weak_rsa(cert, "the CA's")
        td = None
        if isinstance(san, x509.SubjectAlternativeName):
            for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
                try:
                    td = SpiffeId.parse(uri).trust_domain
                except ConfigError:
                    continue
                break
        permitted: tuple[x509.GeneralName, ...] | None = None
        excluded: tuple[x509.GeneralName, ...] = ()
        if isinstance(nc, x509.NameConstraints):
            if nc.permitted_subtrees is not None:
                permitted = tuple(nc.permitted_subtrees)
            excluded = tuple(nc.excluded_subtrees or ())
        return cls(cert, problem, td, permitted, excluded,
                   cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp())


def _dns_within(name: object, base: object) -> bool:
    """RFC 5280 §4.2.1.10 dNSName: ``base`` and any name below it (``.base``: below only)."""
    if not isinstance(name, str) or not isinstance(base, str):
        return False
    n, b = name.lower().rstrip("."), base.lower().rstrip(".")
    if not b:
        return True
    if b.startswith("."):
        return n.endswith(b)
    return n == b or n.endswith("." + b)


def _uri_within(uri: object, base: object) -> bool:
    """RFC 5280 §4.2.1.10 URI: the URI's host is ``base`` (``.base``: a host below it)."""
    if not isinstance(uri, str) or not isinstance(base, str):
        return False
    try:
        host = urlsplit(uri).hostname
    except ValueError:
        return False
    if not host:
        return False
    b = base.lower()
    return host.endswith(b) if b.startswith(".") else host == b


def _ip_within(addr: object, net: object) -> bool:
    """RFC 5280 §4.2.1.10 iPAddress: the address lies in the network."""
    if not isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return False
    if not isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return False
    return addr.version == net.version and addr in net


_WITHIN: dict[type[x509.GeneralName], Callable[[object, object], bool]] = {
    x509.DNSName: _dns_within,
    x509.UniformResourceIdentifier: _uri_within,
    x509.IPAddress: _ip_within,
}


def _name_problem(anchor: _Anchor, names: Sequence[x509.GeneralName]) -> str | None:
    """Why ``names`` (a leaf's SANs) break ``anchor``'s name constraints, else ``None``."""
    if anchor.permitted is None and not anchor.excluded:
        return None
    for gn in names:
        kind = type(gn)
        permitted = [p for p in anchor.permitted or () if type(p) is kind]
        excluded = [e for e in anchor.excluded if type(e) is kind]
        if not permitted and not excluded:
            continue
        within = _WITHIN.get(kind)
        if within is None:
            return f"a {kind.__name__} name under a CA constraining that name type"
        if any(within(gn.value, e.value) for e in excluded):
            return f"{gn.value} is in a subtree the CA excludes"
        if permitted and not any(within(gn.value, p.value) for p in permitted):
            return f"{gn.value} is outside the CA's name constraints"
    return None


def _workload_of(leaf: x509.Certificate) -> tuple[PeerIdentity, list[x509.GeneralName]]:
    """The leaf's workload identity and SANs; refuses a leaf no workload may hold."""
    try:
        bc = _ext(leaf, x509.BasicConstraints)
        ku = _ext(leaf, x509.KeyUsage)
        eku = _ext(leaf, x509.ExtendedKeyUsage)
        san = _ext(leaf, x509.SubjectAlternativeName)
    except MALFORMED_EXTENSION_ERRORS as exc:
        raise _Refused(f"the certificate has malformed extensions ({type(exc).__name__})"
                       ) from None
    if isinstance(bc, x509.BasicConstraints) and bc.ca:
        raise _Refused("the certificate is a CA certificate (CA:TRUE), not a workload's")
    if not isinstance(ku, x509.KeyUsage):  # X.509-SVID §4.3: MUST be set on every SVID
        raise _Refused("no keyUsage extension: a leaf X.509-SVID must have one with "
                       "digitalSignature (X.509-SVID §4.3)")
    if not ku.digital_signature or ku.key_cert_sign or ku.crl_sign:
        raise _Refused("key usage is not a workload's (digitalSignature, no keyCertSign/cRLSign)")
    weak = _weak_rsa(leaf, "a workload's")
    if weak is not None:
        raise _Refused(weak)
    if isinstance(eku, x509.ExtendedKeyUsage) and not any(o in eku for o in _CLIENT_AUTH):
        raise _Refused("extended key usage does not allow client authentication")
    names = list(san) if isinstance(san, x509.SubjectAlternativeName) else []
    uris = [n.value for n in names if isinstance(n, x509.UniformResourceIdentifier)]
    if len(uris) != 1:  # X.509-SVID §2, whatever the URIs' schemes
        raise _Refused(f"exactly one URI SAN, a SPIFFE ID, is required (X.509-SVID §2), "
                       f"found {len(uris)}")
    if uris[0][:9].lower() != "spiffe://":
        raise _Refused("the URI SAN is not a SPIFFE ID")
    try:
        sid = SpiffeId.parse(uris[0])
    except ConfigError:
        raise _Refused("malformed SPIFFE ID") from None
    if sid.service is None:
        raise _Refused(f"{sid} is not a workload identity (spiffe://<td>/svc/<service>)")
    for n in names:
        if isinstance(n, x509.DNSName) and foreign_identity_name(n.value, sid.trust_domain,
                                                                 sid.service):
            raise _Refused(f"DNS name {n.value!r} is another workload's identity name or "
                           f"covers one (only {sid.service}.svc.{sid.trust_domain} may be "
                           f"under svc.{sid.trust_domain})")
    return PeerIdentity(str(sid), sid.trust_domain, sid.service), names


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and _signed_by(cert, cert)


def _weak_rsa(cert: x509.Certificate, whose: str) -> str | None:
    """Why ``cert``'s key is refused (``whose`` names the holder in the reason): an RSA
    key under 2048 bits (NIST SP 800-131A; what cryptography's path validation refuses
    of a CA, and :func:`load_workload_key` of a workload's own key), or a key that
    cannot be read; ``None`` for any other key."""
    try:
        public_key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return "the certificate's public key cannot be read"
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < _MIN_RSA_BITS:
        return (f"RSA {public_key.key_size}-bit key: {whose} RSA key must have at least "
                f"{_MIN_RSA_BITS} bits (NIST SP 800-131A)")
    return None


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s key signed ``cert`` (and its name is ``cert``'s issuer)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _after(t: float) -> float:
    """The first time past ``t``: a certificate is valid through its notAfter
    (inclusive, RFC 5280 §4.1.2.5), expired from ``_after(notAfter)`` on."""
    return math.nextafter(t, math.inf)


def _anchor_refusal(anchor: _Anchor, identity: PeerIdentity,
                    names: Sequence[x509.GeneralName], at: float | None
                    ) -> tuple[int, _Refused] | None:
    """Why the bundle CA ``anchor``, which signed the leaf, does not vouch for it at
    ``at`` (``None``: validity not checked), ranked by how close it came (3: it would
    but for its validity period), or ``None`` when it does."""
    if anchor.problem is not None:
        return 0, _Refused(anchor.problem)
    if anchor.trust_domain is not None and identity.trust_domain != anchor.trust_domain:
        return 1, _Refused(f"{identity.spiffe_id} is outside the CA's trust domain")
    problem = _name_problem(anchor, names)
    if problem is not None:
        return 2, _Refused(problem)
    if at is not None:
        name = anchor.cert.subject.rfc4514_string()
        if at < anchor.not_before:
            return 3, _Refused(f"the CA certificate is not valid yet ({name!r}: not before "
                               f"{_utc(anchor.not_before)})", until=anchor.not_before)
        if at > anchor.not_after:
            return 3, _Refused(f"the CA certificate has expired ({name!r}: not after "
                               f"{_utc(anchor.not_after)})", since=_after(anchor.not_after))
    return None


def _utc(t: float) -> str:
    """Epoch seconds ``t`` as an ISO 8601 UTC time to the second (``...Z``)."""
    return f"{dt.datetime.fromtimestamp(t, dt.UTC):%Y-%m-%dT%H:%M:%S}Z"


_CacheKey = bytes | tuple[bytes, bytes | None]
"""A verdict's cache key: the leaf's PEM when it holds whatever chain comes with the leaf,
else ``(leaf PEM, the other certificates' PEM or None)``."""


class PeerVerifier:
    """Verifies a TLS peer's certificate against the trust bundle and returns its workload
    identity; what grpcio's BoringSSL checks in the handshake, plus what it skips.

    A peer is identified only if its certificate (``x509_pem_cert`` of the call's
    ``context.auth_context()``):

    * is issued by a CA of the trust bundle, with a valid signature: **directly**, or
      through intermediate CAs the peer presented (``x509_pem_cert_chain``; X.509-SVID
      §3 lets signing CAs be intermediates, e.g. SPIRE under an upstream root). A path
      through intermediates is validated as RFC 5280 §6 says, by ``cryptography``'s
      verifier (``cryptography.x509.verification``, a client verifier over the bundle's
      usable CAs, at the time of the call): signatures, validity periods, every CA's
      basicConstraints and ``pathlen`` — the trust anchor's included, which BoringSSL
      does not apply: meshkit CAs are ``pathlen:0``, so a sub-CA signed with the mesh CA
      key is refused — keyUsage, and DNS and IP name constraints; a CA on the path
      constraining another name type (a meshkit CA's URI constraint) makes the path
      fail, closed. Without the intermediates the leaf's issuer is unknown: refused;
    * under CAs (every one on the path) that are ``CA:TRUE`` whose key usage (if
      present) has ``keyCertSign``, within their name constraints (DNS, URI and IP SANs,
      RFC 5280 §4.2.1.10; another name type under a CA constraining that type is
      refused), and in each CA's trust domain when it names one (``spiffe://<td>`` URI
      SAN); a CA of the bundle with malformed extensions, or with an RSA key under
      2048 bits (NIST SP 800-131A, as path validation refuses such a CA above an
      intermediate), issues nothing;
    * is itself no CA (``CA:FALSE`` or no basicConstraints), has a keyUsage extension
      with ``digitalSignature`` and without ``keyCertSign``/``cRLSign`` (X.509-SVID §4.3:
      every SVID carries keyUsage; go-spiffe refuses a leaf without it too), an RSA key,
      if RSA, of at least 2048 bits (NIST SP 800-131A, as :func:`load_workload_key`
      asks of a workload's own key), extended key usage (if
      present) allowing client authentication, and exactly one URI SAN of any scheme
      (X.509-SVID §2), which must be a workload ID ``spiffe://<td>/svc/<service>``; no
      DNS name in ``svc.<td>`` but its own identity name ``<service>.svc.<td>`` (another
      workload's, or a wildcard such as ``*.svc.<td>``: see
      :func:`foreign_identity_name`);
    * and it and its CAs are within their validity period at the time of the call: from
      notBefore through notAfter, both inclusive (RFC 5280 §4.1.2.5; expired once the
      clock is past notAfter, as Go's ``crypto/x509``). grpcio's BoringSSL handshake
      counts the notAfter second itself as expired (its ``X509_cmp_time`` takes an equal
      time as past); this check follows RFC 5280 and the handshake decides on its own,
      so a connection attempted at exactly notAfter is refused by the handshake, not
      here.

    Without a trust bundle (``ca_pem=None``, :func:`default_peer_verifier`) the verifier
    relies on the handshake having verified the chain against the server's roots and
    refuses a peer that presented any certificate besides its leaf that is not a
    self-signed root (an intermediate, the only way to reach the roots through a sub-CA);
    it cannot check the CA's own extensions then.

    When the bundle holds several CA certificates with the leaf's issuer name and key (a
    CA renewed with its key, old and new side by side in ``ca.pem`` during a rotation),
    any one of them that passes every check above vouches for the leaf, whatever their
    order (RFC 5280 §6; Go's ``crypto/x509`` likewise tries every candidate): the old
    one's expiry refuses no leaf the new one vouches for. When none does, the refusal
    gives the reason of the one closest to vouching (one failing only on its validity
    period; among those, the latest to expire).

    Verdicts (identity or refusal) are cached per distinct certificate bytes, bounded by
    ``max_entries`` (oldest dropped first), for as long as the clock stays within the
    times they were read for: an identity from the latest notBefore to the earliest
    notAfter of its path, an "expired" refusal from past that notAfter on, a "not valid
    yet" one until that notBefore; a clock stepped back out of them (NTP correcting a
    clock that ran ahead, a VM restored from a snapshot) gets a fresh check, never a
    verdict read at the wrong time. A verdict that holds whatever the peer presents with
    its leaf (issued directly by the bundle, or a defect of the leaf) is cached under the
    leaf's PEM, one that depends on the presented chain under the leaf and chain. A hit
    on the first costs a clock read and one dict lookup keyed by the PEM bytes (~0.4 µs;
    building ``context.auth_context()`` costs grpc another ~3.5 µs); on the second,
    another lookup and the chain's join. A miss (one per distinct certificate) costs
    about 0.2 ms for a leaf issued directly, 0.5 ms through an intermediate (2-core VM).
    A refusal is logged once per distinct certificate (``peer certificate refused``,
    warning, with the reason, subject, issuer and SHA-256 prefix); the interceptors log
    refused calls once per kind and minute, the rest counted (``call refused`` /
    ``calls refused``).

    Args:
        ca_pem: the trust bundle, PEM (one or more CA certificates; each one a trust
            anchor), or ``None`` for the bundle-less mode above.
        max_entries: verdict cache bound (default 1024; >= 1).
        clock: wall clock, epoch seconds (default ``time.time``); validity periods and the
            reload interval are read on it.

    Raises:
        CertificateError: ``ca_pem`` holds no PEM certificate.
        ConfigError: ``max_entries`` no integer >= 1 (``True`` included), a ``clock``
            that cannot be called (``time.time()``'s value) or a ``ca_pem`` that is no
            ``bytes`` (value or type quoted).

    Example::

        verifier = PeerVerifier.from_file("certs/ca.pem")
        peer = verifier.identify(context.auth_context())  # None: refuse, UNAUTHENTICATED
    """

    __slots__ = ("_anchors", "_ca_file", "_cache", "_checked_at", "_clock", "_fault",
                 "_interval_s", "_max", "_next_check", "_roots", "_stat")

    def __init__(self, ca_pem: bytes | None = None, *, max_entries: int = 1024,
                 clock: Callable[[], float] = time.time) -> None:
        check_int("max_entries", max_entries, low=1)  # True too: no cache of one
        if not callable(clock):  # clock=time.time(): its value, not the clock
            raise ConfigError(f"clock must be a callable returning epoch seconds, such as "
                              f"time.time, got {clock!r}")
        if ca_pem is not None and not isinstance(ca_pem, bytes):
            raise ConfigError(f"ca_pem must be bytes (PEM), got {type(ca_pem).__name__} "
                              "(Path.read_bytes() reads a file so)")
        self._max = max_entries
        self._clock = clock
        self._cache: dict[_CacheKey, tuple[PeerIdentity | None, float, float]] = {}
        self._anchors: dict[x509.Name, tuple[_Anchor, ...]] | None = None
        self._roots: Store | None = None  # the usable CAs, for paths through intermediates
        self._ca_file: Path | None = None
        self._interval_s = math.inf
        self._stat: tuple[int, int, int] | None = None
        self._checked_at = -math.inf
        self._next_check = math.inf
        self._fault = OutageLog(_log, "CA bundle readable again", clock=clock)
        if ca_pem is not None:
            self._anchors = self._parse(ca_pem)
            self._roots = _roots_of(self._anchors)

    @classmethod
    def from_file(cls, ca_file: str | os.PathLike[str], *, reload_interval_s: float = 5.0,
                  max_entries: int = 1024,
                  clock: Callable[[], float] = time.time) -> PeerVerifier:
        """A verifier trusting the CA certificates in ``ca_file`` (PEM) and following it:
        the file is re-checked at most every ``reload_interval_s`` (default 5.0 s; > 0) on
        a call, and at once when a peer's issuer is unknown; a changed, readable bundle
        replaces the old one and empties the cache (an unreadable one, or any exception
        reading it, keeps the old bundle and is logged as ``CA bundle reload skipped``,
        warning: when it starts, when the error changes, and as a reminder at most every
        60 s while it lasts; the next good read logs ``CA bundle readable again``). A
        CA certificate with malformed extensions in it (:data:`MALFORMED_EXTENSION_ERRORS`)
        is kept but may issue nothing; the bundle's other CAs work.

        Raises:
            CertificateError: the file is unreadable or holds no certificate.
            ConfigError: ``reload_interval_s`` no number > 0 (``math.inf``: never
                re-read), or ``max_entries`` or ``clock`` as for the class (quoted);
                ``ca_file`` no path (``None`` from an unset variable, ``bytes``, a
                number, ``""``).
        """
        # before the file is read: a wrong clock or number is the caller's error
        check_number("reload_interval_s", reload_interval_s, low=0.0, low_open=True,
                     finite=False)
        check_int("max_entries", max_entries, low=1)
        if not callable(clock):
            raise ConfigError(f"clock must be a callable returning epoch seconds, such as "
                              f"time.time, got {clock!r}")
        path = Path(check_path("ca_file", ca_file))
        stat = _file_stat(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CertificateError(f"cannot read CA bundle {path}: {type(exc).__name__}"
                                   ) from None
        verifier = cls(data, max_entries=max_entries, clock=clock)
        verifier._ca_file = path
        verifier._interval_s = reload_interval_s
        verifier._stat = stat
        now = clock()
        verifier._checked_at = now
        verifier._next_check = now + reload_interval_s
        return verifier

    def __deepcopy__(self, memo: dict[int, object]) -> PeerVerifier:
        """A verifier of the same trust bundle (and file, followed alike) with a verdict
        cache and outage log of its own; the parsed bundle is immutable and shared
        (``cryptography``'s objects do not copy), so options holding a verifier
        deep-copy (``copy.deepcopy``, ``dataclasses.asdict``)."""
        new = copy.copy(self)
        new._cache = {}
        new._fault = OutageLog(_log, "CA bundle readable again", clock=self._clock)
        return new

    @staticmethod
    def _parse(ca_pem: bytes) -> dict[x509.Name, tuple[_Anchor, ...]]:
        try:
            certs = load_pem_certificates(ca_pem)
        except ValueError as exc:
            if not ca_pem.strip():
                why = "the CA bundle is empty"
            elif isinstance(exc, _CutShort):
                why = "the CA bundle's last PEM block is cut short (damaged or truncated)"
            else:
                why = "the CA bundle holds no readable PEM certificate (or a damaged one)"
            raise CertificateError(why) from None
        by_subject: dict[x509.Name, list[_Anchor]] = {}
        for cert in certs:
            by_subject.setdefault(cert.subject, []).append(_Anchor.of(cert))
        return {name: tuple(anchors) for name, anchors in by_subject.items()}

    @property
    def anchored(self) -> bool:
        """Whether a trust bundle is configured (else the bundle-less mode)."""
        return self._anchors is not None

    @property
    def cached(self) -> int:
        """How many verdicts are cached now."""
        return len(self._cache)

    def reload(self, ca_pem: bytes) -> bool:
        """Trust the CA certificates in ``ca_pem`` from now on; empties the verdict cache.

        Returns:
            Whether the bundle differs from the current one.

        Raises:
            CertificateError: ``ca_pem`` holds no PEM certificate (the old bundle stays).
        """
        anchors = self._parse(ca_pem)
        old = self._anchors
        changed = old is None or {
            a.cert for group in old.values() for a in group
        } != {a.cert for group in anchors.values() for a in group}
        self._roots = _roots_of(anchors)
        self._anchors = anchors
        self._cache.clear()
        return changed

    def identify(self, auth_context: Mapping[str, Iterable[bytes]] | None
                 ) -> PeerIdentity | None:
        """The verified workload identity of a call's peer, or ``None`` (refuse it).

        Args:
            auth_context: ``context.auth_context()`` of a ``grpc.aio`` server call (keys
                ``x509_pem_cert``: the peer's leaf, PEM; ``x509_pem_cert_chain``: the
                other certificates it presented, only when there were any), or ``None``.

        Returns:
            The :class:`PeerIdentity` (a workload: ``service`` is set), or ``None`` for a
            plaintext or certificate-less peer or a certificate failing any check of the
            class docstring. The caller turns ``None`` into ``UNAUTHENTICATED``.
        """
        if not auth_context:
            return None
        certs = auth_context.get(_CERT_KEY)
        if not certs:
            return None
        leaf = certs[0] if isinstance(certs, list) else next(iter(certs), b"")
        now = self._clock()
        if not self._checked_at <= now < self._next_check:
            self._poll(now)
        cache = self._cache
        hit = cache.get(leaf)  # a verdict that holds whatever chain comes with the leaf
        if hit is not None and hit[1] <= now < hit[2]:
            return hit[0]
        presented = auth_context.get(_CHAIN_KEY)  # only when it presented more than a leaf
        chain = b"".join(presented) if presented else None
        hit = cache.get((leaf, chain))  # one that depends on the chain presented
        if hit is not None and hit[1] <= now < hit[2]:
            return hit[0]
        return self._decide(leaf, chain, now)

    def verify(self, leaf: x509.Certificate, chain: Sequence[x509.Certificate] = (), *,
               at: float | None = None) -> PeerIdentity:
        """Check ``leaf`` (with the other certificates the peer presented, ``chain``) now,
        uncached, and return its workload identity.

        Args:
            leaf: the certificate to check.
            chain: the other certificates the peer presented, leaf excluded, in any
                order (default none): the intermediates a path to the bundle may go
                through when ``leaf`` is not issued by it directly; without a trust
                bundle, refused when one is no self-signed root.
            at: check validity periods at this time (epoch seconds); ``None`` (default)
                skips the leaf's — for a workload checking its own files, whose expiry
                the handshake and renewal deal with — and checks a path's CAs at a time
                within the leaf's period (the clock's, bounded by it).

        Raises:
            CertificateError: the certificate fails a check; the message gives the
                reason.
        """
        try:
            return self._check(leaf, chain, at)[0]
        except _Refused as exc:
            raise CertificateError(exc.reason) from None

    def _verify_span(self, leaf: x509.Certificate, at: float
                     ) -> tuple[PeerIdentity, float, float]:
        """:meth:`verify` of ``leaf`` alone at ``at``, with the times ``[since, until)``
        its verdict holds for (``at`` among them): from the latest notBefore to past the
        earliest notAfter of the path (for :class:`meshkit.messaging.MessageVerifier`'s
        cache). Raises :class:`CertificateError` as :meth:`verify`."""
        try:
            identity, since, until, _ = self._check(leaf, (), at)
        except _Refused as exc:
            raise CertificateError(exc.reason) from None
        return identity, since, until

    def _check(self, leaf: x509.Certificate, chain: Sequence[x509.Certificate],
               at: float | None) -> tuple[PeerIdentity, float, float, bool]:
        """The identity, the times ``[since, until)`` the verdict holds for (``at``
        among them; ``(-inf, inf)`` when ``at`` is ``None``) and whether it depends on
        ``chain`` (``by_path``); raises :class:`_Refused`."""
        identity, names = _workload_of(leaf)
        since, until = -math.inf, math.inf
        if at is not None:
            nb, na = leaf.not_valid_before_utc.timestamp(), leaf.not_valid_after_utc.timestamp()
            if at < nb:
                raise _Refused(f"the certificate is not valid yet (not before {_utc(nb)})",
                               until=nb)
            if at > na:  # valid through notAfter, inclusive (RFC 5280 §4.1.2.5)
                raise _Refused(f"the certificate has expired (not after {_utc(na)})",
                               since=_after(na))
            since, until = nb, _after(na)  # cached while notBefore <= now <= notAfter
        if self._anchors is None:
            for cert in chain:
                if not _self_signed(cert):
                    raise _Refused(_BUNDLELESS, by_path=True)
            return identity, since, until, True
        # every CA of the bundle that signed the leaf is a candidate (a CA renewed with
        # its key: old and new side by side); the first that vouches for it decides
        refusals: list[tuple[int, float, _Refused]] = []
        for candidate in self._anchors.get(leaf.issuer, ()):
            if not _signed_by(leaf, candidate.cert):
                continue
            refused = _anchor_refusal(candidate, identity, names, at)
            if refused is None:
                if at is not None:
                    since = max(since, candidate.not_before)
                    until = min(until, _after(candidate.not_after))
                return identity, since, until, False
            refusals.append((refused[0], candidate.not_after, refused[1]))
        if not refusals:
            if not chain:
                raise _Refused(_NO_PATH, unknown_issuer=True, by_path=True)
            identity, since, until = self._check_path(leaf, chain, at, identity, names,
                                                      since, until)
            return identity, since, until, True
        if len(refusals) == 1:
            raise refusals[0][2]
        # none vouches: the verdict holds while none does; the reason is the one of the
        # candidate closest to vouching (a validity period; then the latest to expire)
        best = max(refusals, key=lambda r: (r[0], r[1]))[2]
        raise _Refused(f"{best.reason} (none of the {len(refusals)} CA certificates of the "
                       "bundle that signed it vouches for it)",
                       since=max(r[2].since for r in refusals),
                       until=min(r[2].until for r in refusals))

    def _check_path(self, leaf: x509.Certificate, chain: Sequence[x509.Certificate],
                    at: float | None, identity: PeerIdentity,
                    names: Sequence[x509.GeneralName], since: float, until: float
                    ) -> tuple[PeerIdentity, float, float]:
        """``leaf`` is not issued by a CA of the bundle: validate a path to one through
        the certificates the peer presented (RFC 5280 §6, by ``cryptography``'s
        verifier: signatures, validity, basicConstraints and every CA's pathlen, the
        trust anchor's included, keyUsage, DNS/IP name constraints, failing closed on
        name constraints of other types), then apply meshkit's own CA checks to each CA
        on the path: a CA, within its trust domain and name constraints (URI too).
        Raises :class:`_Refused`."""
        roots = self._roots
        if roots is None:  # no CA of the bundle may issue
            raise _Refused(_NO_PATH, unknown_issuer=True, by_path=True)
        if at is not None:
            when = at
        else:  # own files: the leaf's period aside, the CAs' checked within it
            when = min(max(self._clock(), leaf.not_valid_before_utc.timestamp()),
                       leaf.not_valid_after_utc.timestamp())
        try:
            # RFC 5280's profile, not the CA/Browser Forum's (cryptography's default, which
            # refuses what RFC 5280 allows: a critical EKU, a CA without keyUsage, a leaf
            # without an authority key identifier): extensions are checked by meshkit,
            # below and in _Anchor/_check, as for a leaf a bundle CA issued directly
            verifier = (PolicyBuilder().store(roots)
                        .time(dt.datetime.fromtimestamp(when, dt.UTC))
                        .extension_policies(ca_policy=_RFC5280_CA, ee_policy=_RFC5280_EE)
                        .build_client_verifier())
            path = verifier.verify(leaf, list(chain)).chain
        except VerificationError as exc:
            # the verdict holds while no certificate that may be on a path enters or
            # leaves its validity period: between the nearest such times around ``when``
            periods = [(c.not_valid_before_utc.timestamp(), c.not_valid_after_utc.timestamp())
                       for c in (leaf, *chain)]
            periods += [(a.not_before, a.not_after) for group in (self._anchors or {}).values()
                        for a in group]
            edges = [t for nb, na in periods for t in (nb, _after(na))]
            raise _Refused(
                f"{_NOT_DIRECT}, and the {len(chain)} certificate(s) it presented give no "
                f"valid path to one (RFC 5280 §6 path validation: {exc})",
                since=max((t for t in edges if t <= when), default=-math.inf),
                until=min((t for t in edges if t > when), default=math.inf),
                unknown_issuer=True, by_path=True) from None
        top = len(path) - 1
        for i, ca in enumerate(path[1:], start=1):
            known = next((a for a in self._anchors_of(ca) if a.cert == ca), None)
            info = known if i == top and known is not None else _Anchor.of(ca)
            where = f"CA {ca.subject.rfc4514_string()!r}"
            if info.problem is not None:
                raise _Refused(f"{where}: {info.problem}", by_path=True)
            if info.trust_domain is not None and identity.trust_domain != info.trust_domain:
                raise _Refused(f"{identity.spiffe_id} is outside the trust domain of {where} "
                               f"({info.trust_domain})", by_path=True)
            problem = _name_problem(info, names)
            if problem is not None:
                raise _Refused(f"{where}: {problem}", by_path=True)
            if at is not None:
                since = max(since, info.not_before)
                until = min(until, _after(info.not_after))
        return identity, since, until

    def _anchors_of(self, cert: x509.Certificate) -> tuple[_Anchor, ...]:
        anchors = self._anchors
        return () if anchors is None else anchors.get(cert.subject, ())

    def _decide(self, leaf_pem: bytes, chain: bytes | None,
                now: float) -> PeerIdentity | None:
        try:
            leaf = x509.load_pem_x509_certificate(leaf_pem)
            extra = x509.load_pem_x509_certificates(chain) if chain else []
        except ValueError:
            self._store((leaf_pem, chain), None, -math.inf, math.inf)
            _log.warning("peer certificate refused", reason="unreadable certificate or chain")
            return None
        try:
            identity, since, until, by_path = self._check(leaf, extra, now)
        except _Refused as exc:
            if exc.unknown_issuer and self._ca_file is not None and self._poll(now):
                return self._decide(leaf_pem, chain, now)  # the bundle just changed
            self._store((leaf_pem, chain) if exc.by_path else leaf_pem, None, exc.since,
                        exc.until)
            digest = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
            _log.warning("peer certificate refused", reason=exc.reason,
                         subject=leaf.subject.rfc4514_string(),
                         issuer=leaf.issuer.rfc4514_string(), sha256=digest[:16])
            return None
        self._store((leaf_pem, chain) if by_path else leaf_pem, identity, since, until)
        return identity

    def _store(self, key: _CacheKey, identity: PeerIdentity | None, since: float,
               until: float) -> None:
        cache = self._cache
        try:
            while len(cache) >= self._max:
                del cache[next(iter(cache))]  # the oldest entry
        except (RuntimeError, KeyError, StopIteration):  # another thread got there first
            cache.clear()
        cache[key] = (identity, since, until)

    def _poll(self, now: float) -> bool:
        """Re-read the CA file if it changed on disk; returns whether the bundle changed."""
        self._checked_at = now
        self._next_check = now + self._interval_s
        if self._ca_file is None:
            return False
        stat = _file_stat(self._ca_file)
        if stat == self._stat:
            if self._fault.failing:  # the file in force is back
                self._fault.ok(file=str(self._ca_file))
            return False
        try:
            data = self._ca_file.read_bytes()
            changed = self.reload(data)
        except Exception as exc:  # whatever the new file is, the old bundle stays in force
            # logged when it starts, changes, and as a reminder a minute later
            # why, as meshkit says it (never the file's content) or the OS does
            why = (f"{type(exc).__name__}: {exc}" if isinstance(exc, CertificateError)
                   else f"{type(exc).__name__}: {exc.strerror}"
                   if isinstance(exc, OSError) and exc.strerror else type(exc).__name__)
            self._fault.failed("CA bundle reload skipped", why, file=str(self._ca_file))
            return False
        self._stat = stat
        if self._fault.failing:
            self._fault.ok(file=str(self._ca_file))
        if changed:
            _log.info("CA bundle reloaded for peer verification", file=str(self._ca_file))
        return changed


def _roots_of(anchors: Mapping[x509.Name, Sequence[_Anchor]]) -> Store | None:
    """The bundle's CAs that may issue, as trust anchors for path validation."""
    usable = [a.cert for group in anchors.values() for a in group if a.problem is None]
    return Store(usable) if usable else None


def _file_stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


_DEFAULT_VERIFIER = PeerVerifier(None)


def default_peer_verifier() -> PeerVerifier:
    """The shared bundle-less :class:`PeerVerifier` (see its docstring), used by the
    server interceptors when they were given no verifier."""
    return _DEFAULT_VERIFIER
