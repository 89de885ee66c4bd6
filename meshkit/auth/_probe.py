"""Why an mTLS endpoint cannot be connected: a TLS probe of the endpoint, off the call path.

grpcio tells Python nothing of a sub-channel's failed connection: a channel dialed with
``DialOptions(tls=...)`` to a server holding another workload's certificate, one from
another CA, an expired one, a plaintext server or one that refuses the client's
certificate sees its endpoint go ``TRANSIENT_FAILURE`` and its calls fail ``UNAVAILABLE``
"all 1 endpoints are failing", the handshake's error only on grpc's own stderr (at its
log verbosity). So when an endpoint of such a channel goes ``TRANSIENT_FAILURE``,
:class:`HandshakeDiagnosis` connects to it once with Python's :mod:`ssl` — the same CA
bundle, client certificate and expected identity name, ALPN ``h2`` — and keeps a short
reason (:func:`handshake_problem`): ``EndpointStats.connect_error`` (``stats()``,
``/debug/mesh``), the status message of a call no endpoint can take, and one warning
``endpoint cannot be connected`` per endpoint per change of reason. The probe is a
diagnosis, not a verification (it checks no connection gRPC uses, and its OpenSSL may
judge a chain otherwise than grpc's BoringSSL); a probe that finds nothing wrong records
no reason (and forgets one found before). No key material is ever in a reason: names,
validity dates and OpenSSL's verify message.

Cost: nothing per call. A probe runs only on a sub-channel's change to
``TRANSIENT_FAILURE`` and again while it stays there (after ``interval_s``, 30 s, then
twice as long each time, up to 4 min: ``EndpointPool._state_change``; grpc
reports no change while such a sub-channel retries: a reason found while a server was
down is replaced by the certificate fault it came back with), at most once per endpoint
every ``interval_s``, at most :data:`PROBES_AT_ONCE` at a time per channel (more wanting
one wait, at most :data:`PROBES_WAITING`, renewals' and failures' together; the rest are
probed at a later observation, a renewal's not at all), each bounded by
``timeout_s`` (5 s), as a task of the channel's pool (cancelled by its ``close()``). A
call no endpoint can take while a probe is under way and no reason is known (the first
to fail: the change to ``TRANSIENT_FAILURE`` that fails it starts the probe) waits for
the probes (:attr:`HandshakeDiagnosis.busy`, :meth:`~HandshakeDiagnosis.settle`) at most
1 s and half the time left before its deadline, so that its error says why
(``EndpointPool._all_failing_explained``); a call that succeeds never waits.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog
from cryptography import x509

from meshkit._hosts import bare_host

__all__ = ["PROBES_AT_ONCE", "PROBES_WAITING", "HandshakeDiagnosis", "handshake_problem"]

_log = structlog.get_logger("meshkit.channel")
PROBES_AT_ONCE = 2
"""Probes of one channel's endpoints that run at once."""
PROBES_WAITING = 32
"""Probes of one channel's endpoints that may wait for their turn; beyond it an endpoint
is probed at its next change to ``TRANSIENT_FAILURE``."""
# OpenSSL's verify codes of a chain whose issuer is not in the bundle (or whose
# signature it does not verify): X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT,
# CERT_SIGNATURE_FAILURE, DEPTH_ZERO_SELF_SIGNED_CERT, SELF_SIGNED_CERT_IN_CHAIN,
# UNABLE_TO_GET_ISSUER_CERT_LOCALLY, UNABLE_TO_VERIFY_LEAF_SIGNATURE
_ISSUER_NOT_FOUND = frozenset({2, 7, 18, 19, 20, 21})
_REASONS_MAX = 1024  # endpoints whose reason (and last probe) a channel keeps
# the HTTP/2 client connection preface and an empty SETTINGS frame (RFC 9113 §3.4): a
# server that took the client's certificate answers with its SETTINGS
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _utc(t: dt.datetime) -> str:
    return f"{t.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%S}Z"


def _identity(cert: x509.Certificate) -> str:
    """The certificate's SPIFFE ID, else its subject (a certificate of no workload)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)
                if u.startswith("spiffe://")]
    except Exception:  # no SAN, or malformed extensions: named by its subject
        uris = []
    return uris[0] if uris else f"subject {cert.subject.rfc4514_string()!r}"


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [d.lower().rstrip(".") for d in san.get_values_for_type(x509.DNSName)]
    except Exception:  # no SAN, or malformed extensions: no name
        return []


def _name_matches(pattern: str, name: str) -> bool:
    """RFC 6125 §6.4: ``name`` equals ``pattern``, or ``pattern`` is ``*.<rest>`` and
    ``name`` one label more than ``<rest>``."""
    if pattern == name:
        return True
    if pattern.startswith("*.") and "." in name:
        return name.split(".", 1)[1] == pattern[2:]
    return False


def _context(ca_file: str, cert_file: str, key_file: str, *, verify: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the identity name is compared below, to name the peer
    if verify:
        ctx.load_verify_locations(cafile=ca_file)
    else:
        ctx.verify_mode = ssl.CERT_NONE
    # an empty password: a key file replaced by an encrypted one (TLSOptions refuses
    # them; the probe reads the files as they are now) fails to load, where OpenSSL's
    # default asked for a pass phrase on the process's terminal, holding the loop
    ctx.load_cert_chain(cert_file, key_file, password=b"")
    ctx.set_alpn_protocols(["h2"])
    return ctx


def _refusal(exc: BaseException) -> str:
    """A failed handshake or read, in a few words (no exception text beyond OpenSSL's
    reason and the OS error's name)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or type(exc).__name__
        if reason == "WRONG_VERSION_NUMBER":
            return "the server answered without TLS (a plaintext server?)"
        if "ALERT" in reason:
            return f"the server refused the handshake ({reason.lower().replace('_', ' ')})"
        if isinstance(exc, ssl.SSLEOFError):
            return "the server closed the connection during the TLS handshake"
        return f"TLS handshake failed: {reason}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError | asyncio.IncompleteReadError | EOFError):
        return "the server closed the connection during the TLS handshake"
    if isinstance(exc, OSError):
        return f"connect failed: {exc.strerror or type(exc).__name__}"
    return f"connect failed: {type(exc).__name__}"


async def _open(host: str, port: int, ctx: ssl.SSLContext, server_name: str
                ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port, ssl=ctx, server_hostname=server_name)


async def _peer_certificate(host: str, port: int, ctx: ssl.SSLContext,
                            server_name: str) -> x509.Certificate | None:
    """The server's certificate, read in a handshake that does not verify it (to name
    what the verifying one refused), or ``None``."""
    try:
        _reader, writer = await _open(host, port, ctx, server_name)
    except Exception:  # (it refused this handshake too: nothing more to say)
        return None
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der) if der else None
    except Exception:  # a certificate cryptography cannot read: not named
        return None
    finally:
        writer.transport.abort()  # (no close_notify: an SSL shutdown may wait 30 s)


async def handshake_problem(host: str, port: int, *, ca_file: str, cert_file: str,
                            key_file: str, server_name: str, expected_id: str,
                            client_id: str, timeout_s: float = 5.0) -> str | None:
    """Why a gRPC mTLS connection to ``host:port`` fails, as a TLS handshake of Python's
    :mod:`ssl` sees it with the same files, or ``None`` when it finds nothing wrong (the
    handshake, the identity name and the server's first HTTP/2 frame all fine).

    Args:
        host, port: the endpoint.
        ca_file, cert_file, key_file: the channel's CA bundle, client certificate (chain)
            and key files (``TLSOptions``' paths).
        server_name: the identity name the server must carry as a DNS SAN
            (``<service>.svc.<td>``, what grpc's handshake checks).
        expected_id: the SPIFFE ID the server should have (named in a reason).
        client_id: the client's own SPIFFE ID (named when the server refuses it).
        timeout_s: bound of the whole probe, seconds (default 5).

    Returns:
        ``None``, or a short reason: ``"connection refused"``, ``"certificate verify
        failed: certificate has expired; the server's certificate spiffe://td/svc/x
        expired at 2026-01-01T00:00:00Z"``, ``"certificate verify failed: unable to get
        local issuer certificate; the server's certificate spiffe://td/svc/x (valid
        until ...) is issued by 'CN=...', which no CA of <ca_file> verifies"``,
        ``"peer identity spiffe://td/svc/y is not the expected spiffe://td/svc/x
        (...)"``, ``"the server answered without TLS (a
        plaintext server?)"``, ``"the server closed the connection after the handshake:
        it refused this client's certificate spiffe://td/svc/c"`` (``", which expired at
        ..."`` when it has), ``"no TLS handshake within 5s"``... Never raises (a client
        file that cannot be loaded is a reason too).
    """
    try:
        async with asyncio.timeout(timeout_s):
            return await _probe(host, port, ca_file, cert_file, key_file, server_name,
                                expected_id, client_id)
    except TimeoutError:
        return f"no TLS handshake within {timeout_s:g}s"
    except Exception as exc:  # a probe's own fault: named by its type, never raised
        return f"the probe failed ({type(exc).__name__})"


async def _probe(host: str, port: int, ca_file: str, cert_file: str, key_file: str,
                 server_name: str, expected_id: str, client_id: str) -> str | None:
    try:
        ctx = _context(ca_file, cert_file, key_file, verify=True)
    except (OSError, ssl.SSLError) as exc:  # mid-renewal, or unreadable: not the server
        why = (exc.reason if isinstance(exc, ssl.SSLError) else exc.strerror) or \
            type(exc).__name__
        return f"the client's certificate files could not be loaded ({why})"
    try:
        reader, writer = await _open(host, port, ctx, server_name)
    except Exception as exc:
        why = _refusal(exc)
        if isinstance(exc, ssl.SSLCertVerificationError):
            cert = await _peer_certificate(
                host, port, _context(ca_file, cert_file, key_file, verify=False), server_name)
            if cert is not None:
                why += "; " + _describe(cert, exc.verify_code, ca_file)
        return why
    try:
        sslobj: ssl.SSLObject = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True)
        cert = x509.load_der_x509_certificate(der) if der else None
        if cert is not None:
            names = _dns_names(cert)
            if not any(_name_matches(n, server_name) for n in names):
                return (f"peer identity {_identity(cert)} is not the expected {expected_id} "
                        f"(its certificate lacks the DNS name {server_name}; it has "
                        f"{', '.join(names) or 'none'})")
        if sslobj.selected_alpn_protocol() != "h2":
            return "the server negotiated no ALPN protocol h2 (not a gRPC server?)"
        writer.write(_H2_PREFACE)
        try:
            first = await reader.read(9)
        except Exception as exc:
            return (f"the server refused this client's certificate {client_id} after the "
                    f"handshake ({_refusal(exc)}){_own_validity(cert_file)}")
        if not first:
            return (f"the server closed the connection after the handshake: it refused "
                    f"this client's certificate {client_id}"
                    + (_own_validity(cert_file) or " (is it of a CA the server trusts?)"))
        return None
    finally:
        writer.transport.abort()  # (no close_notify: an SSL shutdown may wait 30 s)


def _own_validity(cert_file: str) -> str:
    """``", which expired at <date>"`` (``", which is not valid until <date>"``) when the
    client's own certificate (the first of ``cert_file``) is outside its validity period
    now, which is why a server refuses it; else (or unreadable) ``""``."""
    try:
        with open(cert_file, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except Exception:  # mid-renewal, unreadable: nothing to add
        return ""
    now = dt.datetime.now(dt.UTC)
    if now > cert.not_valid_after_utc:
        return f", which expired at {_utc(cert.not_valid_after_utc)}"
    if now < cert.not_valid_before_utc:
        return f", which is not valid until {_utc(cert.not_valid_before_utc)}"
    return ""


def _describe(cert: x509.Certificate, verify_code: int, ca_file: str) -> str:
    """The server's certificate a verification refused (OpenSSL's ``verify_code``),
    named by what it refused: its expiry, its start (or, the certificate itself valid,
    the CA's: OpenSSL reports an expired CA of the chain alike), its purpose (no
    serverAuth), an issuer no CA of ``ca_file`` verifies; else its issuer and expiry
    alone."""
    ident = _identity(cert)
    if verify_code in (9, 10):
        # OpenSSL says so of any certificate of the chain: the server's own, or a CA's
        now = dt.datetime.now(dt.UTC)
        if verify_code == 10 and now > cert.not_valid_after_utc:  # CERT_HAS_EXPIRED
            return (f"the server's certificate {ident} expired at "
                    f"{_utc(cert.not_valid_after_utc)}")
        if verify_code == 9 and now < cert.not_valid_before_utc:  # CERT_NOT_YET_VALID
            return (f"the server's certificate {ident} is not valid until "
                    f"{_utc(cert.not_valid_before_utc)}")
        return _issuer_out_of_period(cert, ident, ca_file, now, expired=verify_code == 10)
    if verify_code == 26:  # X509_V_ERR_INVALID_PURPOSE
        return (f"the server's certificate {ident} has an extended key usage without "
                "serverAuth")
    issuer = cert.issuer.rfc4514_string()
    valid = f"valid until {_utc(cert.not_valid_after_utc)}"
    if verify_code in _ISSUER_NOT_FOUND:
        return (f"the server's certificate {ident} ({valid}) is issued by {issuer!r}, "
                f"which no CA of {ca_file} verifies")
    return f"the server's certificate {ident} (issuer {issuer!r}, {valid})"


def _issuer_out_of_period(cert: x509.Certificate, ident: str, ca_file: str,
                          now: dt.datetime, *, expired: bool) -> str:
    """The reason when OpenSSL found a certificate of the server's chain expired (or, not
    ``expired``, not valid yet) and it is not the server's own ``cert`` (valid at
    ``now``): the CA certificate of ``ca_file`` with ``cert``'s issuer name that is out
    of its period, named with its date, else a CA of the chain (an intermediate the
    server presents, which Python's ssl does not hand over)."""
    valid = (f"the server's certificate {ident} is valid until "
             f"{_utc(cert.not_valid_after_utc)}")
    try:
        with open(ca_file, "rb") as f:
            cas = x509.load_pem_x509_certificates(f.read())
    except Exception:  # unreadable now (mid-renewal): the CA is not named
        cas = []
    for ca in cas:
        if ca.subject != cert.issuer:
            continue
        name = ca.subject.rfc4514_string()
        if expired and now > ca.not_valid_after_utc:
            return (f"the CA certificate {name!r} of {ca_file} that issued it expired at "
                    f"{_utc(ca.not_valid_after_utc)}; {valid}")
        if not expired and now < ca.not_valid_before_utc:
            return (f"the CA certificate {name!r} of {ca_file} that issued it is not "
                    f"valid until {_utc(ca.not_valid_before_utc)}; {valid}")
    period = "has expired" if expired else "is not valid yet"
    return (f"a CA certificate of its chain {period} (an intermediate CA the server "
            f"presents, or one of {ca_file}); {valid}")


class HandshakeDiagnosis:
    """The reasons an mTLS channel's endpoints cannot be connected (module docstring).

    Args:
        service: the dialed service (logged).
        probe: ``probe(host, port) -> reason or None`` (:func:`handshake_problem` bound to
            the channel's files and expected identity).
        interval_s: least time between two probes of one endpoint, seconds (default 30).
        clock: monotonic seconds (default ``time.monotonic``).
    """

    def __init__(self, service: str, probe: Callable[[str, int], Awaitable[str | None]], *,
                 interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self._probe = probe
        self._interval_s = interval_s
        self._clock = clock
        self._reasons: dict[str, str] = {}  # instance id -> its reason
        self._probed: dict[str, float] = {}  # instance id -> when last probed
        self._running: set[str] = set()  # probes running or waiting for their turn
        self._explaining = 0  # explain()'s probes running or waiting for their turn
        # endpoints whose last change was to TRANSIENT_FAILURE: a probe's answer for one
        # that has connected meanwhile is dropped
        self._failing: dict[str, None] = {}
        self._slots = asyncio.Semaphore(PROBES_AT_ONCE)
        self._idle = asyncio.Event()  # set while no probe runs or waits (settle)
        self._idle.set()

    @property
    def interval_s(self) -> float:
        """Least time between two probes of one endpoint, seconds: an endpoint still
        failing is observed again after it, then after twice as long each time, up to 8
        times it (``EndpointPool``: grpc reports no change while a sub-channel that cannot
        connect retries)."""
        return self._interval_s

    @property
    def busy(self) -> bool:
        """Whether a probe runs or waits for its turn (:meth:`settle` would wait)."""
        return not self._idle.is_set()

    async def settle(self, timeout_s: float) -> None:
        """Wait until no probe runs or waits for its turn, ``timeout_s`` seconds at most
        (a caller about to report a failure, such as ``meshkit call``, whose probes may
        still be under way); never raises on the timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            pass

    async def explain(self, address: str) -> str | None:
        """Probe ``address`` (``host:port``, gRPC target text: ``[fe80::1%25eth0]:443``
        probes ``fe80::1%eth0``) now, in its turn among the channel's probes, and return
        the reason found, recording nothing: for a sub-channel of an endpoint that is
        READY otherwise (a renewal's, ``EndpointPool._connect_then_use``), whose warning
        says why it cannot connect. ``None``: nothing found wrong, no port in the
        address, or the channel's probes already at their bound (:data:`PROBES_AT_ONCE`
        running and :data:`PROBES_WAITING` waiting, these and :meth:`observe`'s counted
        together: a renewal of 1,000 endpoints that cannot connect queues no 1,000
        probes, nor a failure probe behind them all)."""
        host, _, port = address.rpartition(":")
        if not port.isdigit() or self._queued() >= PROBES_AT_ONCE + PROBES_WAITING:
            return None
        self._explaining += 1
        self._idle.clear()
        try:
            async with self._slots:
                return await self._probe(bare_host(host), int(port))
        finally:
            self._explaining -= 1
            if not self._queued():
                self._idle.set()

    def _queued(self) -> int:
        """Probes running or waiting for their turn (failure probes and explain's)."""
        return len(self._running) + self._explaining

    def reason(self, key: str) -> str | None:
        """The last reason found for endpoint ``key`` (``None``: none, or READY since)."""
        return self._reasons.get(key)

    def observe(self, key: str, address: str,
                connectivity: grpc.ChannelConnectivity) -> Awaitable[None] | None:
        """Endpoint ``key`` at ``address`` (``host:port``, gRPC target text, as
        :meth:`explain`'s) went to ``connectivity``: READY
        forgets its reason (and the answer of a probe still running); ``TRANSIENT_FAILURE``
        (a change to it, or still in it :attr:`interval_s` later) returns the probe to run
        as a task when one is due (``None`` otherwise). A probe
        that finds nothing wrong forgets the endpoint's reason too; one that finds one
        logs it when it differs from the last."""
        if connectivity is grpc.ChannelConnectivity.READY:
            self._failing.pop(key, None)
            if self._reasons.pop(key, None) is not None:
                _log.info("endpoint connected", service=self.service, instance_id=key,
                          address=address)
            return None
        if connectivity is not grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            return None
        self._remember(self._failing, key, None)
        now = self._clock()
        last = self._probed.get(key)
        if (key in self._running or (last is not None and now - last < self._interval_s)
                or self._queued() >= PROBES_AT_ONCE + PROBES_WAITING):
            return None
        host, _, port = address.rpartition(":")
        if not port.isdigit():
            return None
        self._remember(self._probed, key, now)
        self._running.add(key)
        self._idle.clear()
        return self._run(key, address, bare_host(host), int(port))

    async def _run(self, key: str, address: str, host: str, port: int) -> None:
        try:
            async with self._slots:
                reason = await self._probe(host, port)
        finally:  # (also cancelled: the pool closed)
            self._running.discard(key)
            if not self._queued():
                self._idle.set()
        if key not in self._failing:  # connected meanwhile: nothing to say
            return
        if reason is None:  # nothing found wrong: a reason found before is stale
            self._reasons.pop(key, None)
            return
        if self._reasons.get(key) != reason:
            _log.warning("endpoint cannot be connected", service=self.service,
                         instance_id=key, address=address, reason=reason)
        self._remember(self._reasons, key, reason)

    @staticmethod
    def _remember(table: dict[str, Any], key: str, value: Any) -> None:
        table.pop(key, None)  # last in the order of forgetting
        table[key] = value
        if len(table) > _REASONS_MAX:
            del table[next(iter(table))]
