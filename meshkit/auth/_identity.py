"""Workload identities: SPIFFE IDs, their DNS identity names, and ``*`` patterns.

A meshkit workload ``<service>`` in trust domain ``<td>`` is named twice in its
certificate (SPIFFE X.509-SVID, https://github.com/spiffe/spiffe/blob/main/standards/):

* URI SAN ``spiffe://<td>/svc/<service>`` — the SPIFFE ID, the identity servers authorize;
* DNS SAN ``<service>.svc.<td>`` — the *identity name*, which clients verify as the TLS
  host name (``grpc.ssl_target_name_override``), because grpcio's Python API has no
  custom peer-verification hook. The CA's name constraints and meshkit's issuer keep the
  two names in step: one exists only together with the other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from meshkit.errors import ConfigError

__all__ = [
    "DEFAULT_TRUST_DOMAIN",
    "IdentityMatcher",
    "PeerIdentity",
    "SpiffeId",
    "identity_dns_name",
    "peer_from_identities",
    "validate_service_label",
    "validate_trust_domain",
    "workload_id",
]

DEFAULT_TRUST_DOMAIN = "meshkit.local"
"""Trust domain used when none is given (``certs init`` and :class:`TLSOptions`)."""

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_LABEL_RE = re.compile(rf"^{_LABEL}$")
_TD_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_MAX_ID_BYTES = 2048


def validate_trust_domain(trust_domain: str) -> str:
    """Return ``trust_domain`` if it is a lowercase DNS name usable as a SPIFFE trust domain.

    meshkit is stricter than SPIFFE (which also allows ``_``) because the trust domain is
    part of every workload's DNS identity name.

    Raises:
        ConfigError: not a lowercase DNS name of at most 200 characters (value quoted).
    """
    if not isinstance(trust_domain, str) or len(trust_domain) > 200 or not _TD_RE.match(
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
    if not isinstance(service, str) or not _LABEL_RE.match(service):
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
                user info, or longer than 2048 bytes.
        """
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if len(text.encode()) > _MAX_ID_BYTES or not text.startswith("spiffe://"):
            raise ConfigError(f"not a SPIFFE ID: {text[:100]!r}")
        rest = text[len("spiffe://"):]
        td, slash, path = rest.partition("/")
        if not td or not re.fullmatch(r"[a-z0-9._-]+", td):
            raise ConfigError(f"bad SPIFFE trust domain in {text[:100]!r}")
        if slash:
            for seg in path.split("/"):
                if seg in ("", ".", "..") or not _SEGMENT_RE.match(seg):
                    raise ConfigError(f"bad SPIFFE ID path in {text[:100]!r}")
        return cls(td, "/" + path if slash else "")

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"

    @property
    def service(self) -> str | None:
        """The workload service name for ``/svc/<service>`` IDs, else ``None``."""
        parts = self.path.split("/")
        if len(parts) == 3 and parts[1] == "svc":
            return parts[2]
        return None


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """The verified identity of the peer of a server call (from its client certificate).

    Attributes:
        spiffe_id: the peer's SPIFFE ID, e.g. ``spiffe://meshkit.local/svc/orderd``.
        trust_domain: its trust domain.
        service: the workload service name for ``/svc/<service>`` IDs, else ``None``.
    """

    spiffe_id: str
    trust_domain: str
    service: str | None


def peer_from_identities(identities: Iterable[bytes] | None) -> PeerIdentity | None:
    """The peer identity from gRPC's verified peer identities, or ``None``.

    Args:
        identities: ``context.peer_identities()`` of a ``grpc.aio`` server call (the
            verified certificate's subject alternative names as bytes), or ``None`` for a
            plaintext or certificate-less peer.

    Returns:
        The identity when there is exactly one valid ``spiffe://`` URI SAN (X.509-SVID §2
        requires exactly one), else ``None``.
    """
    if not identities:
        return None
    found = [i for i in identities if i.startswith(b"spiffe://")]
    if len(found) != 1:
        return None
    try:
        sid = SpiffeId.parse(found[0])
    except ConfigError:
        return None
    return PeerIdentity(str(sid), sid.trust_domain, sid.service)


class IdentityMatcher:
    """Matches identities (SPIFFE IDs or JWT subjects) against ``*`` patterns, compiled once.

    A pattern is an exact string in which ``*`` stands for any run of characters,
    including ``/`` (Istio principals style): ``"*"`` matches every identity,
    ``"spiffe://meshkit.local/svc/*"`` every workload of the trust domain.

    Args:
        patterns: the patterns; an empty sequence matches nothing.

    Raises:
        ConfigError: a pattern is not a non-empty string.
    """

    __slots__ = ("_exact", "_patterns", "_regex")

    def __init__(self, patterns: Sequence[str]) -> None:
        self._patterns = tuple(patterns)
        exact: set[str] = set()
        wild: list[str] = []
        for p in self._patterns:
            if not isinstance(p, str) or not p:
                raise ConfigError(f"identity patterns must be non-empty strings, got {p!r}")
            if "*" in p:
                wild.append(".*".join(re.escape(part) for part in p.split("*")))
            else:
                exact.add(p)
        self._exact = frozenset(exact)
        self._regex = re.compile("|".join(f"(?:{w})" for w in wild)) if wild else None

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
        if identity in self._exact:
            return True
        return self._regex is not None and self._regex.fullmatch(identity) is not None

    def __repr__(self) -> str:
        return f"IdentityMatcher({list(self._patterns)!r})"
